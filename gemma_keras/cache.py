"""The conversion cache: GGUF files converted once into Keras presets.

An entry lives at `<cache>/gguf/<sha256 of the file>/` and holds a KerasHub
preset plus `gemma_keras.json`, which is written last and lists every file
with its size and sha256. An entry is only trusted when that manifest exists and
matches, so a conversion killed half-way is rebuilt, never used.

Entries are built in a temporary directory beside the final one and moved
into place with one `rename`; a lock file keeps two processes from
converting the same file at once.

The cache lives in `$GEMMA_KERAS_CACHE`, else `$XDG_CACHE_HOME/gemma_keras`,
else `~/.cache/gemma_keras`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from gemma_keras.errors import CacheError

MANIFEST = "gemma_keras.json"
FORMAT_VERSION = 1


def cache_dir() -> Path:
    """The root of the cache (not created)."""
    env = os.environ.get("GEMMA_KERAS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "gemma_keras"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(entry: Path, verify: bool = True) -> dict[str, Any] | None:
    """The entry's manifest when the entry is complete and intact, else None.

    Sizes are always checked; with `verify`, every file's sha256 too (about
    half a second for the 270M model's 1 GB of float32 weights).
    """
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            return None
        for name, meta in manifest["files"].items():
            path = entry / name
            if not path.resolve().is_relative_to(entry.resolve()):
                return None  # a manifest that points outside its entry is forged
            if path.stat().st_size != meta["size"]:
                return None
            if verify and file_sha256(path) != meta["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest


def write_manifest(entry: Path, info: dict[str, Any]) -> None:
    files = {
        str(p.relative_to(entry)): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(entry.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = dict(info, format_version=FORMAT_VERSION, files=files)
    atomic_write_text(entry / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))


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
def locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def get_or_build(
    kind: str,
    key: str,
    build: Callable[[Path], dict[str, Any]],
) -> tuple[Path, bool]:
    """Returns `(entry_dir, built_now)` for `<cache>/<kind>/<key>`.

    `build(tmp_dir)` fills a fresh directory and returns manifest extras.
    Any exception from it leaves nothing behind in the cache.
    """
    root = cache_dir() / kind
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(
            f"Cannot create the cache directory {root}: {exc}. Set GEMMA_KERAS_CACHE to a writable directory."
        ) from exc
    entry = root / key
    if read_manifest(entry) is not None:
        return entry, False
    with locked(root / f".{key}.lock"):
        # Another process may have finished the entry while we waited.
        if read_manifest(entry) is not None:
            return entry, False
        # Whoever left these was killed: the lock is ours, so nobody owns them.
        for stale in root.glob(f".{key}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}.", suffix=".tmp"))
        try:
            info = build(tmp)
            write_manifest(tmp, info)
            if entry.exists():  # a broken entry from an older crash
                shutil.rmtree(entry)
            os.rename(tmp, entry)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CacheError(
                f"Could not write the cache entry {entry}: {exc}. Free some space or set "
                "GEMMA_KERAS_CACHE to another directory; nothing was left behind."
            ) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return entry, True
