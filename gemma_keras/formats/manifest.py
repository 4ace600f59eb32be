"""`gemma_keras.json`: our metadata file beside a Keras preset.

The conversion cache and preset exports both write it. It lists every file
of the directory with its size and sha256, written last, so a directory with
a manifest that matches its files is whole; and it keeps what KerasHub's
preset does not (the context length, whether the model is instruction-tuned).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from gemma_keras.formats.staging import atomic_write_text

MANIFEST = "gemma_keras.json"
FORMAT_VERSION = 1


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(entry: Path, verify: bool = True) -> dict[str, Any] | None:
    """The directory's manifest when the directory is complete and intact, else None.

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
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
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
