"""Writing files and directories so that they appear whole or not at all.

- `atomic_write(path, write)`: one file, through a temporary sibling, fsync
  and a rename (adapters, checkpoints, manifests).
- `staged(dest, overwrite=..., directory=...)`: a whole export. The writer
  fills a temporary sibling (`.NAME.PID.RANDOM.tmp`, same filesystem), which
  is flushed to disk and then renamed onto the destination. On Linux an
  existing destination is swapped with `renameat2(RENAME_EXCHANGE)`, so with
  `overwrite=True` the path always holds either the old export or the new
  one; elsewhere the old one is moved aside first and there is a moment with
  no destination (see docs/export.md).
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from gemma_keras.errors import ExportError


def atomic_write(path: Path, write: Callable[[IO], object], binary: bool = False) -> None:
    """Calls `write(file)` on a temporary sibling of `path`, fsyncs it, then renames it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename."""
    atomic_write(path, lambda f: f.write(text))


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
