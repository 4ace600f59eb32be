"""The one writer policy for paths users name, and writes that appear whole or not at all.

- `check_destination(dest, kind, overwrite=...)`: before anything is
  written, may `dest` receive a `kind` (a Keras preset, a GGUF file, an
  adapter file, a fine-tuning run directory)? Its parent must be a writable
  directory (or be creatable in one). An existing `dest` is replaced only
  when it is recognisably our own output of the same kind (and `overwrite`
  is set); anything else there (the user's files, a GGUF from elsewhere, a
  directory where a file goes or the reverse, a symlink, a device) is
  refused with an error that names the path and says what it is, and is
  left untouched. `Gemma.export`/`save`, `save_adapters` and fine-tuning's
  `out_dir` all go through it.
- `atomic_write(path, write)`: one file, through a temporary sibling, fsync
  and a rename (adapters, checkpoints, manifests).
- `staged(dest, kind, overwrite=...)`: a whole export. The destination is
  checked first; the writer then fills a temporary sibling
  (`.NAME.PID.RANDOM.tmp`, same filesystem), which is flushed to disk,
  checked against the destination again and renamed onto it. On Linux an
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
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from gemma_keras.errors import ExportError, GemmaKerasError


@dataclass(frozen=True)
class Kind:
    """What a writer puts at a path, and how to recognise what it wrote there before.

    Attributes:
        name: what messages call it ("Keras preset", "GGUF file").
        directory: True when it is a directory, False when a single file.
        ours: `ours(path)` is True when `path` (a real directory or a regular
            file, never a link) is our own output of this kind. Only such a
            path is ever replaced.
        looks_like: optional; True when `path` is of this format but
            `ours` said no (for messages: "a GGUF file not written by gemma_keras").
        into: a directory that files are written into, never replaced (a
            fine-tuning run's `out_dir`): an existing writable directory
            (or link to one) is accepted as it is.
    """

    name: str
    directory: bool
    ours: Callable[[Path], bool]
    looks_like: Callable[[Path], bool] | None = None
    into: bool = False


def check_destination(
    dest: str | os.PathLike,
    kind: Kind,
    *,
    overwrite: bool,
    error: type[GemmaKerasError] = ExportError,
    others: Iterable[Kind] = (),
) -> bool:
    """The writer policy: raises `error` unless `kind` may be written at `dest`.

    Returns True when `dest` exists and will be replaced (or, for an `into`
    kind, written into), False when it does not exist yet. Nothing is created
    or changed. `others` are the kinds our other writers make, named in the
    message when one of them is found at `dest`.
    """
    dest = Path(dest)
    if kind.into and os.path.isdir(dest):  # written into, so only the directory itself must be writable
        if not os.access(dest, os.W_OK | os.X_OK):
            raise error(
                f"{dest} is a directory that cannot be written to (read-only, or not yours), so the "
                f"{kind.name} cannot be written there. Choose another path, or change its permissions."
            )
        return True
    if dest.name in ("", ".", ".."):
        raise error(f"{os.fspath(dest)!r} does not name a {kind.name} of its own; give it a name of its own.")
    _check_parent(dest, kind, error)
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise error(f"Cannot inspect {dest}: {exc}. Choose another path.") from exc
    if kind.into:
        pass  # something other than a directory: refused below
    elif _is_ours(dest, st, kind):
        if not overwrite:
            raise error(
                f"{dest} already exists (a {kind.name} written by gemma_keras); pass overwrite=True "
                "(--overwrite on the command line) to replace it."
            )
        return True
    what = describe(dest, [kind, *others])
    if kind.into:
        raise error(
            f"{dest} is {what}, not a directory, so the {kind.name} cannot be written there; it was left "
            f"untouched. Choose another path, or remove {dest} yourself if you no longer need it."
        )
    raise error(
        f"{dest} already exists and is {what}; gemma_keras replaces only a {kind.name} it wrote itself, so "
        f"it was left untouched. Choose another path, or remove {dest} yourself if you no longer need it."
    )


def describe(path: Path, kinds: Iterable[Kind] = ()) -> str:
    """What is at `path`, in words, for a message ("a directory holding 2 entries ('a', 'b')")."""
    try:
        st = os.lstat(path)
    except OSError:
        return "missing"
    if stat.S_ISLNK(st.st_mode):
        try:
            return f"a symbolic link (to {os.readlink(path)!r})"
        except OSError:
            return "a symbolic link"
    kinds = list(kinds)
    for kind in kinds:
        if not kind.into and _is_ours(path, st, kind):
            return f"a {kind.name} written by gemma_keras"
    if stat.S_ISDIR(st.st_mode):
        try:
            entries = sorted(os.listdir(path))
        except OSError:
            return "a directory (which cannot be listed)"
        if not entries:
            return "an empty directory"
        shown = ", ".join(repr(e) for e in entries[:3]) + (", ..." if len(entries) > 3 else "")
        return f"a directory holding {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} ({shown})"
    if stat.S_ISREG(st.st_mode):
        for kind in kinds:
            if not kind.directory and kind.looks_like is not None and _quietly(kind.looks_like, path):
                return f"a {kind.name} not written by gemma_keras"
        return f"a file of {st.st_size} byte{'' if st.st_size == 1 else 's'}"
    return "a device, pipe or socket, not a regular file or directory"


def _is_ours(path: Path, st: os.stat_result, kind: Kind) -> bool:
    """`kind.ours(path)`, asked only of a real directory or a regular file of the kind's type."""
    if kind.directory:
        if not stat.S_ISDIR(st.st_mode):
            return False
    elif not stat.S_ISREG(st.st_mode):
        return False
    return _quietly(kind.ours, path)


def _quietly(test: Callable[[Path], bool], path: Path) -> bool:
    try:
        return bool(test(path))
    except Exception:  # a recogniser that cannot read the path has not recognised it
        return False


def _check_parent(dest: Path, kind: Kind, error: type[GemmaKerasError]) -> None:
    """The parent must be a writable directory, or be creatable inside one."""
    ancestor = dest.parent
    while not os.path.lexists(ancestor) and ancestor.parent != ancestor:
        ancestor = ancestor.parent
    if not os.path.isdir(ancestor):
        raise error(
            f"Cannot write the {kind.name} {dest}: {ancestor} is {describe(ancestor)}, not a directory. "
            "Choose another path."
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise error(
            f"Cannot write the {kind.name} {dest}: the directory {ancestor} cannot be written to "
            "(read-only, or not yours). Choose another path, or change its permissions."
        )


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
def staged(dest: Path, kind: Kind, *, overwrite: bool, others: Iterable[Kind] = ()) -> Iterator[Path]:
    """Yields a temporary sibling of `dest` to write as `kind`; publishes it on success.

    `dest` is checked (`check_destination`) before anything is written, and
    again before it is replaced, since the writer may run for minutes. On any
    error the temporary is removed and the destination is untouched; an
    `OSError` (disk full, permissions) becomes an `ExportError`.
    """
    dest = Path(dest)
    others = tuple(others)
    existed = check_destination(dest, kind, overwrite=overwrite, others=others)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(dest)
        prefix = f".{dest.name}.{os.getpid()}."
        if kind.directory:
            tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=prefix, suffix=".tmp"))
        else:
            fd, name = tempfile.mkstemp(dir=dest.parent, prefix=prefix, suffix=".tmp")
            os.close(fd)
            tmp = Path(name)
    except OSError as exc:
        raise ExportError(f"Cannot write beside {dest}: {exc}. Nothing was written.") from exc
    try:
        yield tmp
        _fsync_tree(tmp)
        _default_permissions(tmp)
        check_destination(dest, kind, overwrite=overwrite, others=others)
        _publish(tmp, dest, kind, overwrite)
    except OSError as exc:
        _remove(tmp)
        kept = " and the previous export there is unchanged" if existed else ""
        raise ExportError(
            f"Could not write {dest}: {exc}. Nothing was written to {dest}{kept}; free some "
            "space or choose another destination."
        ) from exc
    except BaseException as exc:
        if not getattr(exc, "keep_staging", False):
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


def _publish(tmp: Path, dest: Path, kind: Kind, overwrite: bool) -> None:
    if not os.path.lexists(dest):
        try:
            if not _renameat2(tmp, dest, _RENAME_NOREPLACE):
                os.rename(tmp, dest)  # a race with another writer is possible here
        except FileExistsError:
            raise _appeared_meanwhile(dest) from None
        return
    if not overwrite:
        raise _appeared_meanwhile(dest)
    if _renameat2(tmp, dest, _RENAME_EXCHANGE):
        # `tmp` now holds what was at `dest`. It was checked just before, but
        # something else may have been put there since: then swap it back.
        if not _is_ours(tmp, os.lstat(tmp), kind):
            try:
                swapped_back = _renameat2(tmp, dest, _RENAME_EXCHANGE)
            except OSError:
                swapped_back = False
            if not swapped_back:
                kept = ExportError(
                    f"{dest} was replaced by something else while exporting, and it could not be put "
                    f"back: it is now at {tmp}, and the new export at {dest}."
                )
                kept.keep_staging = True  # `tmp` holds what the user put there: never delete it
                raise kept
            raise _replaced_meanwhile(dest)
        _remove(tmp)
        return
    # No atomic swap: move the old one aside, move the new one in, and put the
    # old one back if that fails. Between the two renames `dest` is missing.
    backup = dest.parent / f".{dest.name}.{os.getpid()}.old.tmp"
    os.rename(dest, backup)
    try:
        if not _is_ours(backup, os.lstat(backup), kind):
            raise _replaced_meanwhile(dest)
        os.rename(tmp, dest)
    except BaseException:
        os.rename(backup, dest)
        raise
    _remove(backup)


def _appeared_meanwhile(dest: Path) -> ExportError:
    return ExportError(
        f"{dest} appeared while exporting; it was left untouched and nothing was written there. Export "
        "again (the destination is checked again), or choose another path."
    )


def _replaced_meanwhile(dest: Path) -> ExportError:
    return ExportError(
        f"{dest} was replaced by something else while exporting; it was left as it is. Choose another "
        "path, or remove it and export again."
    )
