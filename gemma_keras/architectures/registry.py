"""The known architectures and the lookups into them: by name, GGUF arch, HF model type or backbone."""

from __future__ import annotations

from gemma_keras.architectures.gemma import GEMMA, GEMMA2
from gemma_keras.architectures.gemma3 import GEMMA3
from gemma_keras.architectures.gemma3n import GEMMA3N
from gemma_keras.architectures.gemma4 import GEMMA4
from gemma_keras.architectures.record import Architecture
from gemma_keras.errors import UnsupportedModelError

ARCHITECTURES: tuple[Architecture, ...] = (GEMMA, GEMMA2, GEMMA3, GEMMA3N, GEMMA4)


def names() -> tuple[str, ...]:
    return tuple(a.name for a in ARCHITECTURES)


def _find(field: str, value, unknown: str) -> Architecture:
    """The record whose `field` is `value`, or `UnsupportedModelError(unknown)`."""
    for arch in ARCHITECTURES:
        if getattr(arch, field) == value:
            return arch
    raise UnsupportedModelError(unknown)


def by_name(name: str) -> Architecture:
    return _find("name", name, f"Unknown architecture {name!r}; gemma_keras knows {', '.join(names())}.")


def by_gguf_arch(name: str, where: str = "the file") -> Architecture:
    known = ", ".join(a.gguf_arch for a in ARCHITECTURES)
    return _find(
        "gguf_arch",
        name,
        f"{where} holds a {name!r} model; gemma_keras loads only {known}. Use a Gemma GGUF file.",
    )


def by_hf_model_type(model_type: str, where: str = "the checkpoint") -> Architecture:
    """The record of a transformers `model_type` ("gemma", "gemma2", "gemma3_text", "gemma4_text")."""
    known = ", ".join(repr(a.hf_model_type) for a in ARCHITECTURES)
    return _find(
        "hf_model_type",
        model_type,
        f"{where}: model_type {model_type!r} is not a model gemma_keras loads; it loads the text models {known}.",
    )


def of_backbone(backbone) -> Architecture:
    """The record of a KerasHub backbone; refuses embedding models and other families."""
    return of_config(backbone.get_config(), type(backbone).__name__)


def of_config(config: dict, class_name: str | None = None) -> Architecture:
    """The record of a backbone config (with its KerasHub class name, when known)."""
    if config.get("use_bidirectional_attention") or config.get("is_embedding_model"):
        raise UnsupportedModelError(
            "The preset holds an embedding model (bidirectional attention); it cannot generate text."
        )
    for arch in ARCHITECTURES:
        if arch.matches(class_name, config):
            return arch
    titles = ", ".join(a.title for a in ARCHITECTURES)
    raise UnsupportedModelError(
        f"The preset holds a {class_name or 'backbone config'}, not one of these text models: {titles}."
    )


def keras_causal_lm_classes() -> list:
    """Each distinct KerasHub causal LM class, once."""
    seen: dict[str, object] = {}
    for arch in ARCHITECTURES:
        seen.setdefault(arch.keras_causal_lm, arch)
    return [arch.keras_class("causal_lm") for arch in seen.values()]
