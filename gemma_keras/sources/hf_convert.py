"""Builds a KerasHub causal LM from a transformers checkpoint directory, for architectures we convert ourselves.

KerasHub's own converter handles Gemma 1-3 checkpoints. Its Gemma 4 converter
fails on what transformers 5 writes (`per_layer_config` instead of
`global_head_dim`, no `processor_config.json`) and wants `tokenizer.model`,
which transformers 5 no longer saves; so for records with an
`hf_backbone_config` the config, the weights and the tokenizer are read here.
The directory has passed `check_model_dir` (sizes bounded, headers checked).
"""

from __future__ import annotations

import json
from pathlib import Path

from gemma_keras.architectures.record import Architecture
from gemma_keras.backend.keras_hub_import import import_keras_hub
from gemma_keras.backend.no_init import weights_follow
from gemma_keras.errors import SourceError
from gemma_keras.formats.hf_tokenizer import checkpoint_tokenizer
from gemma_keras.formats.layer_tables import TABLES, fill_table
from gemma_keras.formats.safetensors_reader import SafetensorsTensors
from gemma_keras.sources.convert import build_tokenizers

# Where the text model's weights live: a text-only checkpoint, then a multimodal one.
_PREFIXES = ("model.language_model.", "model.")


def convert_hf_dir(path: Path, arch: Architecture, dtype: str):
    """Returns `(causal_lm, tokenizer, context length or None)` built from the checkpoint in `path`.

    The context is the config's `max_position_embeddings`, which
    `check_model_dir` has bounded.
    """
    import_keras_hub()
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    backbone_config = arch.hf_backbone_config(config, str(path / "config.json"))
    tokenizer, preprocessor = build_tokenizers(
        arch,
        lambda: checkpoint_tokenizer(path),
        None,
        lambda exc: SourceError(
            f"{path}: the tokenizer does not form a valid SentencePiece model "
            f"({type(exc).__name__}: {str(exc)[:300]})."
        ),
    )
    embeddings = backbone_config.get("vocabulary_size") or backbone_config["text_vocab_size"]
    if tokenizer.vocabulary_size > embeddings:
        raise SourceError(
            f"{path}: the tokenizer has {tokenizer.vocabulary_size:,} tokens but the model only "
            f"{embeddings:,} embeddings."
        )
    tensors = SafetensorsTensors(path)
    names = tensors.names()
    prefix = next((p for p in _PREFIXES if f"{p}embed_tokens.weight" in names), None)
    if prefix is None:
        raise SourceError(
            f"{path}: no text model weights (model.embed_tokens.weight) in the safetensors files."
        )
    with weights_follow():
        backbone = arch.keras_class("backbone")(**backbone_config, dtype=dtype)

    def mismatch(name: str, got: tuple, wanted: tuple) -> SourceError:
        return SourceError(
            f"{path}: tensor {prefix}{name} has shape {got}, but the model config.json describes needs {wanted}."
        )

    fill_table(backbone, TABLES[arch.name], lambda name: tensors.get(prefix + name), mismatch)
    causal_lm = arch.keras_class("causal_lm")(backbone=backbone, preprocessor=preprocessor)
    context = (config.get("text_config") or config).get("max_position_embeddings")
    return causal_lm, tokenizer, context
