"""Exports a model as a Keras preset, a transformers checkpoint or a GGUF file.

`export(causal_lm, tokenizer, info, dest, ...)` picks the writer and the
dtype, and `staging.staged` makes the destination appear whole or not at
all. The destination is checked before anything is written
(`check_export_destination`): an existing one is replaced only with
`overwrite=True` and only when it is our own export of the same format
(a preset or checkpoint directory whose `gemma_keras.json` names that
format, a GGUF file with our `gemma_keras.export` key). A user's files, a
GGUF from elsewhere, a directory where a file goes or the reverse, a symlink
or a device raise `ExportError` and are left untouched.

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
from gemma_keras.formats import gguf_writer, hf_checkpoint, keras_preset
from gemma_keras.formats.gguf_writer import write_gguf
from gemma_keras.formats.hf_checkpoint import write_hf_checkpoint
from gemma_keras.formats.keras_preset import write_keras_preset
from gemma_keras.formats.model_info import ModelInfo
from gemma_keras.formats.staging import check_destination, staged

FORMATS = ("keras", "safetensors", "gguf")
# The first dtype of each format is its default.
DTYPES = {"keras": (None,), "safetensors": ("f32", "f16"), "gguf": ("f16", "f32", "q8_0")}
_WRITERS = {"keras": write_keras_preset, "safetensors": write_hf_checkpoint, "gguf": write_gguf}
# What each format writes, and how to recognise an earlier export of it.
KINDS = {"keras": keras_preset.KIND, "safetensors": hf_checkpoint.KIND, "gguf": gguf_writer.KIND}


def export(
    causal_lm,
    tokenizer,
    info: ModelInfo,
    dest: str | os.PathLike,
    format: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes the model to `dest`; see `Gemma.export`. Returns the destination path.

    Every check (format, dtype, destination, model) runs before anything is
    written; see the module docstring for which destinations are replaced.
    """
    dest = Path(dest).expanduser()
    format = resolve_format(dest, format)
    dtype = resolve_dtype(format, dtype, info)
    check_export_destination(dest, format, overwrite)
    check_exportable(causal_lm, info, format)
    # SIGINT and SIGTERM are honoured between tensors (`read_backbone`) and before publishing;
    # `staged` then removes the temporary and leaves the destination as it was.
    with staged(dest, KINDS[format], overwrite=overwrite, others=KINDS.values()) as tmp:
        try:
            with interrupts.deferred():
                _WRITERS[format](causal_lm, tokenizer, info, tmp, dtype)
                interrupts.check()
        except Interrupted as exc:
            raise Interrupted(exc.signum, _interrupted_message(exc.signum, dest)) from None
    return dest


def _interrupted_message(signum: int, dest: Path) -> str:
    return f"export to {dest} stopped by {signal.Signals(signum).name}; nothing was written to {dest}."


def check_export_destination(dest: str | os.PathLike, format: str, overwrite: bool) -> bool:
    """Raises `ExportError` unless a `format` export may be written at `dest`.

    True when `dest` holds our earlier export of that format and will be
    replaced. The command line calls this before loading the model.
    """
    return check_destination(
        Path(dest).expanduser(), KINDS[format], overwrite=overwrite, others=KINDS.values()
    )


def resolve_format(dest: Path, format: str | None) -> str:
    if format is None:
        if dest.suffix.lower() == ".gguf":
            return "gguf"
        raise ExportError(
            f"Cannot tell the export format from {dest}; pass format='keras', 'safetensors' "
            "or 'gguf' (--format on the command line). Only a .gguf name implies its format."
        )
    if not isinstance(format, str) or format not in FORMATS:
        raise ExportError(f"Unknown export format {format!r}; use one of {', '.join(FORMATS)}.")
    return format


def resolve_dtype(format: str, dtype: str | None, info: ModelInfo | None = None) -> str | None:
    allowed = DTYPES[format]
    if dtype is None:
        return allowed[0]
    if not isinstance(dtype, str) or dtype not in allowed:
        if format == "keras":
            kept = f" ({info.dtype})" if info is not None else ""
            raise ExportError(
                f"A Keras preset keeps the model's own dtype{kept}; dtype={dtype!r} applies only to "
                "safetensors and gguf. Load with gk.load(..., dtype=...) to change it."
            )
        raise ExportError(f"dtype {dtype!r} is not offered for {format}; use one of {', '.join(allowed)}.")
    return dtype


def check_exportable(causal_lm, info: ModelInfo, format: str = "keras") -> None:
    """Refuses models whose weights no writer can express."""
    if format not in info.arch.export_formats:
        raise ExportError(
            f"gemma_keras cannot export {info.arch.title} as {format} yet (its weight names for that "
            "format are not written); export format='keras' (a Keras preset, which gk.load and KerasHub read)."
        )
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
