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
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gemma_keras.errors import CacheError
from gemma_keras.formats.manifest import MANIFEST, file_sha256, read_manifest, write_manifest

__all__ = [
    "MANIFEST",
    "cache_dir",
    "file_sha256",
    "get_or_build",
    "locked",
    "read_manifest",
    "write_manifest",
]


def cache_dir() -> Path:
    """The root of the cache (not created)."""
    env = os.environ.get("GEMMA_KERAS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "gemma_keras"


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
    current: Callable[[dict[str, Any]], bool] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Returns `(entry_dir, manifest)` for `<cache>/<kind>/<key>`.

    `build(tmp_dir)` fills a fresh directory and returns manifest extras.
    Any exception from it leaves nothing behind in the cache. An existing
    entry is returned once its manifest matches its files' sizes and
    checksums, and `current(manifest)` holds (an entry an older gemma_keras
    wrote in another form fails it); otherwise it is rebuilt.
    """
    root = cache_dir() / kind
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(
            f"Cannot create the cache directory {root}: {exc}. Set GEMMA_KERAS_CACHE to a writable directory."
        ) from exc
    entry = root / key

    def usable() -> dict[str, Any] | None:
        manifest = read_manifest(entry)
        return manifest if manifest is not None and (current is None or current(manifest)) else None

    if (manifest := usable()) is not None:
        return entry, manifest
    with locked(root / f".{key}.lock"):
        # Another process may have finished the entry while we waited.
        if (manifest := usable()) is not None:
            return entry, manifest
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
    return entry, read_manifest(entry, verify=False)
