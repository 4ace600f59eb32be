"""`gemma_keras.json`: our metadata file inside a directory we write.

The conversion cache, Keras preset exports and safetensors exports write it.
It lists every file of the directory with its size and sha256, written last,
so a directory with a manifest that matches its files is whole; it keeps what
KerasHub's preset does not (the context length, whether the model is
instruction-tuned); and its `kind` ("keras_preset" or "safetensors") says
which of our writers made the directory, so an export with
`overwrite=True` replaces only a directory we wrote of the same kind
(`export_kind`).
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
KERAS_PRESET = "keras_preset"
SAFETENSORS = "safetensors"


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


def export_kind(entry: Path) -> str | None:
    """The `kind` of our export at `entry`, or None when it is not wholly ours.

    The directory must hold a manifest that matches its files' sizes, and
    nothing the manifest does not list (a file a user added makes the
    directory theirs too). A manifest without `kind` predates kinds, when
    only Keras presets had one.
    """
    manifest = read_manifest(entry, verify=False)
    if manifest is None:
        return None
    listed = {entry / name for name in manifest["files"]} | {entry / MANIFEST}
    folders = {parent for path in listed for parent in path.parents}
    for path in entry.rglob("*"):
        if path.is_symlink() or (path not in listed and not (path.is_dir() and path in folders)):
            return None
    kind = manifest.get("kind", KERAS_PRESET)
    return kind if isinstance(kind, str) else None


def manifest_info(info) -> dict[str, Any]:
    """What a manifest keeps from a `ModelInfo` beside an export (`gk.load` reads it back)."""
    return {
        "architecture": info.architecture,
        "context_length": info.context_length,
        "instruction_tuned": info.instruction_tuned,
    }


def write_manifest(entry: Path, info: dict[str, Any], kind: str = KERAS_PRESET) -> None:
    """Lists `entry`'s files in its manifest, with `info` and the writer's `kind`; written last."""
    files = {
        str(p.relative_to(entry)): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(entry.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = dict(info, kind=kind, format_version=FORMAT_VERSION, files=files)
    atomic_write_text(entry / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
