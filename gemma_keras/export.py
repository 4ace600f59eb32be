"""Exports a loaded `Gemma` as a Keras preset, a transformers checkpoint or a GGUF file.

`export` picks the writer and the dtype; `staged` makes every destination
appear whole or not at all: the writer fills a temporary sibling
(`.NAME.PID.RANDOM.tmp`, same filesystem), which is flushed to disk and then
renamed onto the destination. On Linux an existing destination is swapped
with `renameat2(RENAME_EXCHANGE)`, so with `overwrite=True` the path always
holds either the old export or the new one; elsewhere the old one is moved
aside first and there is a moment with no destination (see docs/export.md).

Example:

>>> import gemma_keras as gk
>>> lm = gk.load()  # doctest: +SKIP
>>> lm.export("gemma-3-270m.gguf", dtype="q8_0")  # doctest: +SKIP
PosixPath('gemma-3-270m.gguf')
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from gemma_keras.errors import ExportError
from gemma_keras.lora import lora_layers

if TYPE_CHECKING:
    from gemma_keras.model import Gemma

FORMATS = ("keras", "safetensors", "gguf")
# The first dtype of each format is its default.
DTYPES = {"keras": (None,), "safetensors": ("f32", "f16"), "gguf": ("f16", "f32", "q8_0")}


def export(
    lm: Gemma,
    dest: str | os.PathLike,
    format: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes `lm` to `dest`; see `Gemma.export`. Returns the destination path."""
    dest = Path(dest).expanduser()
    format = resolve_format(dest, format)
    dtype = resolve_dtype(format, dtype, lm)
    check_exportable(lm)
    if format == "keras":
        writer = write_keras_preset
    elif format == "safetensors":
        from gemma_keras.hf_export import write_hf_checkpoint as writer
    else:
        from gemma_keras.gguf_export import write_gguf as writer
    with staged(dest, overwrite=overwrite, directory=format != "gguf") as tmp:
        writer(lm, tmp, dtype)
    return dest


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


def resolve_dtype(format: str, dtype: str | None, lm: Gemma | None = None) -> str | None:
    allowed = DTYPES[format]
    if dtype is None:
        return allowed[0]
    if dtype not in allowed:
        if format == "keras":
            kept = f" ({lm.info.dtype})" if lm is not None else ""
            raise ExportError(
                f"A Keras preset keeps the model's own dtype{kept}; dtype={dtype!r} applies only to "
                "safetensors and gguf. Load with gk.load(..., dtype=...) to change it."
            )
        raise ExportError(f"dtype {dtype!r} is not offered for {format}; use one of {', '.join(allowed)}.")
    return dtype


def check_exportable(lm: Gemma) -> None:
    """Refuses models whose weights no writer can express."""
    quantized = [
        layer.name for layer in lm.backbone._flatten_layers() if getattr(layer, "quantization_mode", None)
    ]
    if quantized:
        raise ExportError(
            f"The model was quantized in Keras ({lm.info.dtype}; e.g. layer {quantized[0]!r}); its int8 "
            "weights cannot be exported. Export before calling quantize(), or export a GGUF with "
            "dtype='q8_0' from the unquantized model."
        )


def write_keras_preset(lm: Gemma, out_dir: Path, dtype: str | None = None) -> None:
    """A KerasHub preset directory, with LoRA merged into plain weights."""
    from gemma_keras import cache

    causal_lm = lm.causal_lm
    if lora_layers(lm.backbone):
        causal_lm = rebuild(causal_lm)
    causal_lm.save_to_preset(os.fspath(out_dir))
    # gk.load reads the context length back from this; KerasHub ignores the file.
    cache.write_manifest(
        out_dir,
        {"architecture": lm.info.architecture, "context_length": lm.info.context_length},
    )


def rebuild(causal_lm, **config_changes):
    """A copy of the causal LM built from its backbone's config, holding its weights.

    The config never mentions LoRA, so the copy has none, and its weights are
    the merged ones. `config_changes` override config entries.
    """
    from gemma_keras.tensor_map import fill_backbone, read_backbone

    backbone = causal_lm.backbone
    clean = type(backbone).from_config(dict(backbone.get_config(), **config_changes))
    merged = dict(read_backbone(backbone))

    def mismatch(name, got, wanted):
        return ExportError(f"Weight {name!r} has shape {got}; the rebuilt model needs {wanted}.")

    fill_backbone(clean, merged.pop, mismatch)
    return type(causal_lm)(backbone=clean, preprocessor=causal_lm.preprocessor)


# --- atomic destinations ----------------------------------------------------------
@contextlib.contextmanager
def staged(dest: Path, *, overwrite: bool, directory: bool) -> Iterator[Path]:
    """Yields a temporary sibling of `dest` to write; publishes it on success.

    On any error the temporary is removed and the destination is untouched;
    an `OSError` (disk full, permissions) becomes an `ExportError`.
    """
    dest = Path(dest)
    existed = os.path.lexists(dest)
    if existed and not overwrite:
        raise ExportError(
            f"{dest} already exists; pass overwrite=True (--overwrite on the command line) to replace it."
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(dest)
        prefix = f".{dest.name}.{os.getpid()}."
        if directory:
            tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=prefix, suffix=".tmp"))
        else:
            fd, name = tempfile.mkstemp(dir=dest.parent, prefix=prefix, suffix=".tmp")
            os.close(fd)
            tmp = Path(name)
    except OSError as exc:
        raise ExportError(f"Cannot write beside {dest}: {exc}.") from exc
    try:
        yield tmp
        _fsync_tree(tmp)
        _default_permissions(tmp)
        _publish(tmp, dest, overwrite)
    except OSError as exc:
        _remove(tmp)
        kept = " and the previous export there is unchanged" if existed else ""
        raise ExportError(
            f"Could not write {dest}: {exc}. Nothing was written to {dest}{kept}; free some "
            "space or choose another destination."
        ) from exc
    except BaseException:
        _remove(tmp)
        raise
    # Make the rename itself durable; the export is already in place either way.
    with contextlib.suppress(OSError):
        _fsync_path(dest.parent)


def remove_stale_temporaries(dest: Path) -> list[Path]:
    """Deletes temporaries of `dest` left by killed exports (their process is gone)."""
    removed = []
    for path in dest.parent.glob(f".{dest.name}.*.tmp"):
        pid = path.name[len(dest.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and not path.name.endswith(".old.tmp"):
            _remove(path)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fsync_tree(path: Path) -> None:
    """Flushes every file and directory under `path`, so a rename publishes data, not holes."""
    if path.is_file():
        _fsync_path(path)
        return
    inside = sorted(path.rglob("*"), key=lambda p: (p.is_dir(), -len(p.parts)))  # files, then deepest dirs
    for p in [*inside, path]:
        _fsync_path(p)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _default_permissions(path: Path) -> None:
    """mkstemp/mkdtemp make private (0600/0700) entries; give the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


@functools.lru_cache(maxsize=1)
def _libc_renameat2():
    libc_name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None) if libc_name else None


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux's renameat2; False where the C library or filesystem lacks it."""
    func = _libc_renameat2()
    if func is None:
        return False
    at_fdcwd = -100
    if func(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(dst))


def _publish(tmp: Path, dest: Path, overwrite: bool) -> None:
    if not os.path.lexists(dest):
        try:
            if not _renameat2(tmp, dest, _RENAME_NOREPLACE):
                os.rename(tmp, dest)  # a race with another writer is possible here
        except FileExistsError:
            raise ExportError(
                f"{dest} appeared while exporting; pass overwrite=True to replace it."
            ) from None
        return
    if not overwrite:
        raise ExportError(f"{dest} appeared while exporting; pass overwrite=True to replace it.")
    if _renameat2(tmp, dest, _RENAME_EXCHANGE):
        _remove(tmp)  # now holds the previous export
        return
    # No atomic swap: move the old one aside, move the new one in, and put the
    # old one back if that fails. Between the two renames `dest` is missing.
    backup = dest.parent / f".{dest.name}.{os.getpid()}.old.tmp"
    os.rename(dest, backup)
    try:
        os.rename(tmp, dest)
    except BaseException:
        os.rename(backup, dest)
        raise
    _remove(backup)
