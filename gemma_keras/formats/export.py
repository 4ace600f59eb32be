"""Exports a model as a Keras preset, a transformers checkpoint or a GGUF file.

`export(causal_lm, tokenizer, info, dest, ...)` picks the writer and the
dtype, and `staging.staged` makes the destination appear whole or not at
all.

Example:

>>> import gemma_keras as gk
>>> lm = gk.load()  # doctest: +SKIP
>>> lm.export("gemma-3-270m.gguf", dtype="q8_0")  # doctest: +SKIP
PosixPath('gemma-3-270m.gguf')
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from gemma_keras import interrupts
from gemma_keras.errors import ExportError, Interrupted
from gemma_keras.formats.gguf_writer import write_gguf
from gemma_keras.formats.hf_checkpoint import write_hf_checkpoint
from gemma_keras.formats.keras_preset import write_keras_preset
from gemma_keras.formats.model_info import ModelInfo
from gemma_keras.formats.staging import staged

FORMATS = ("keras", "safetensors", "gguf")
# The first dtype of each format is its default.
DTYPES = {"keras": (None,), "safetensors": ("f32", "f16"), "gguf": ("f16", "f32", "q8_0")}
_WRITERS = {"keras": write_keras_preset, "safetensors": write_hf_checkpoint, "gguf": write_gguf}


def export(
    causal_lm,
    tokenizer,
    info: ModelInfo,
    dest: str | os.PathLike,
    format: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes the model to `dest`; see `Gemma.export`. Returns the destination path."""
    dest = Path(dest).expanduser()
    format = resolve_format(dest, format)
    dtype = resolve_dtype(format, dtype, info)
    check_exportable(causal_lm, info)
    # SIGINT and SIGTERM are honoured between tensors (`read_backbone`) and before publishing;
    # `staged` then removes the temporary and leaves the destination as it was.
    with staged(dest, overwrite=overwrite, directory=format != "gguf") as tmp:
        try:
            with interrupts.deferred():
                _WRITERS[format](causal_lm, tokenizer, info, tmp, dtype)
                interrupts.check()
        except Interrupted as exc:
            raise Interrupted(exc.signum, _interrupted_message(exc.signum, dest)) from None
    return dest


def _interrupted_message(signum: int, dest: Path) -> str:
    return f"export to {dest} stopped by {signal.Signals(signum).name}; nothing was written to {dest}."


def resolve_format(dest: Path, format: str | None) -> str:
    if format is None:
        if dest.suffix.lower() == ".gguf":
            return "gguf"
        raise ExportError(
            f"Cannot tell the export format from {dest}; pass format='keras', 'safetensors' "
            "or 'gguf' (--format on the command line). Only a .gguf name implies its format."
        )
    if format not in FORMATS:
        raise ExportError(f"Unknown export format {format!r}; use one of {', '.join(FORMATS)}.")
    return format


def resolve_dtype(format: str, dtype: str | None, info: ModelInfo | None = None) -> str | None:
    allowed = DTYPES[format]
    if dtype is None:
        return allowed[0]
    if dtype not in allowed:
        if format == "keras":
            kept = f" ({info.dtype})" if info is not None else ""
            raise ExportError(
                f"A Keras preset keeps the model's own dtype{kept}; dtype={dtype!r} applies only to "
                "safetensors and gguf. Load with gk.load(..., dtype=...) to change it."
            )
        raise ExportError(f"dtype {dtype!r} is not offered for {format}; use one of {', '.join(allowed)}.")
    return dtype


def check_exportable(causal_lm, info: ModelInfo) -> None:
    """Refuses models whose weights no writer can express."""
    quantized = [
        layer.name
        for layer in causal_lm.backbone._flatten_layers()
        if getattr(layer, "quantization_mode", None)
    ]
    if quantized:
        raise ExportError(
            f"The model was quantized in Keras ({info.quantization}; e.g. layer {quantized[0]!r}); its "
            "quantized weights cannot be exported. Export before calling quantize(), or export a GGUF "
            "with dtype='q8_0' from the unquantized model."
        )
