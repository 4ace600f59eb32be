"""Builds a KerasHub causal LM from a GGUF file, the one place where GGUF becomes Keras.

The reader (`formats.gguf_reader`) has already checked the metadata and every
tensor's shape; the architecture record names the KerasHub classes. The
tokenizer is built once here and handed on, so a cold load does not parse
the 262k-piece vocabulary twice.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gemma_keras import interrupts
from gemma_keras.architectures.record import Architecture
from gemma_keras.backend.keras_hub_import import import_keras_hub
from gemma_keras.backend.no_init import weights_follow
from gemma_keras.backend.quiet import quiet_native_logs
from gemma_keras.errors import GemmaKerasError, GGUFError
from gemma_keras.formats.gguf_reader import GGUFModel, GGUFTensors
from gemma_keras.formats.keras_preset import write_preset_without_weights
from gemma_keras.formats.layer_tables import TABLES, fill_table
from gemma_keras.formats.sentencepiece import GemmaTokenizer
from gemma_keras.formats.tensor_names import fill_backbone, from_gguf_norm

Progress = Callable[[str, float], None]


def _report(progress: Progress | None, stage: str, fraction: float) -> None:
    if progress is not None:
        progress(stage, fraction)


def convert_gguf(model: GGUFModel, out_dir: Path, progress: Progress | None = None):
    """Builds the float32 causal LM and saves its preset, but the weights, in `out_dir`; returns `(causal_lm, tokenizer)`.

    The weights stay in the GGUF file, which later loads read again
    (`fill_from_gguf`): the cache holds the config and the tokenizer, not
    a float32 copy four times the size of a 4-bit file.

    SIGINT and SIGTERM are honoured between layers and after the save, with
    `Interrupted`; the cache then removes `out_dir` (nothing is cached).
    """
    with interrupts.deferred():
        return _convert(model, out_dir, progress)


def _stop_if_asked(model: GGUFModel) -> None:
    interrupts.check(
        lambda signum: (
            f"converting {model.path} stopped by {signal.Signals(signum).name}; "
            "nothing was added to the cache."
        )
    )


def _convert(model: GGUFModel, out_dir: Path, progress: Progress | None):
    import_keras_hub()
    arch = model.arch
    _report(progress, "reading the vocabulary", 0.02)
    tokenizer, preprocessor = build_tokenizers(
        arch,
        model.tokenizer_proto,
        set(model.tokens),
        lambda exc: GGUFError(
            f"{model.path}: the vocabulary does not form a valid SentencePiece model "
            f"({type(exc).__name__}: {str(exc)[:300]})."
        ),
    )

    def layer_progress(i: int, n: int) -> None:
        _stop_if_asked(model)  # between layers
        _report(progress, "dequantizing weights", 0.05 + 0.85 * i / max(n, 1))

    backbone = build_backbone(model, dtype="float32", progress=layer_progress)
    causal_lm = arch.keras_class("causal_lm")(backbone=backbone, preprocessor=preprocessor)
    _report(progress, "saving the Keras preset's config", 0.92)
    write_preset_without_weights(causal_lm, out_dir)
    _stop_if_asked(model)  # the cache renames the entry into place after this
    _report(progress, "done", 1.0)
    return causal_lm, tokenizer


def build_tokenizers(
    arch: Architecture,
    make_proto: Callable[[], bytes],
    pieces: set[str] | None,
    invalid: Callable[[Exception], GemmaKerasError],
):
    """Our tokenizer and KerasHub's preprocessor for a SentencePiece model; returns `(tokenizer, preprocessor)`.

    `pieces` (the vocabulary, for the record's tokenizer options) is read from
    the model when None. A model that sentencepiece or KerasHub refuses raises
    `invalid(exc)`; a `GemmaKerasError` from `make_proto` passes through.
    """
    try:
        proto = make_proto()
        tokenizer = GemmaTokenizer(proto)  # sentencepiece checks the model (duplicates, byte pieces)
        if pieces is None:
            pieces = {tokenizer.id_to_token(i) for i in range(tokenizer.vocabulary_size)}
        with quiet_native_logs():
            keras_tokenizer = arch.keras_class("tokenizer")(
                proto=proto, **arch.keras_tokenizer_options(pieces)
            )
            preprocessor = arch.keras_class("preprocessor")(tokenizer=keras_tokenizer)
    except GemmaKerasError:
        raise
    except Exception as exc:  # sentencepiece and TensorFlow raise their own types
        raise invalid(exc) from exc
    return tokenizer, preprocessor


def build_backbone(model: GGUFModel, dtype: str | None = None, progress=None):
    """Builds the KerasHub backbone and fills it with the file's weights."""
    with weights_follow():
        backbone = model.arch.keras_class("backbone")(**model.backbone_config, dtype=dtype)
    fill_from_gguf(backbone, model.arch, model.tensors, progress)
    return backbone


def fill_from_gguf(backbone, arch: Architecture, tensors: GGUFTensors, progress=None) -> None:
    """Assigns every weight of `backbone`, built from the file's metadata, from the file's tensors.

    Gemma 1-3 matrices are dequantized when they are assigned, into the
    variable's own memory where the backend allows (`backend.no_init`).
    """

    def mismatch(name: str, got: tuple, wanted: tuple) -> GGUFError:
        return GGUFError(
            f"{tensors.path}: tensor {name!r} has shape {got}, but the "
            f"model built from the metadata needs {wanted}."
        )

    def weight(name: str):
        deferred = tensors.weight(name)
        return deferred if len(deferred.shape) > 1 else from_gguf_norm(np.asarray(deferred))

    with weights_follow():
        if arch.layers_differ:  # Gemma 4: its own table; llama.cpp stores its norms as they are
            fill_table(backbone, TABLES[arch.name], tensors.tensor, mismatch, progress, names="gguf")
        else:
            fill_backbone(backbone, weight, mismatch, progress)
