"""Test set-up shared by every backend session.

The backend comes from KERAS_BACKEND (each nox session sets its own) and is
fixed here before anything imports keras. Hubs are switched off so no test
can reach the network.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ["GEMMA_KERAS_OFFLINE"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The real model's conversion is shared by the backend sessions of one run.
_SHARED_CACHE = Path(os.environ.get("GEMMA_KERAS_TEST_CACHE") or tempfile.mkdtemp(prefix="gk-test-cache-"))
os.environ["GEMMA_KERAS_CACHE"] = str(_SHARED_CACHE)
os.environ["GEMMA_KERAS_TEST_CACHE"] = str(_SHARED_CACHE)  # also for hf_reference.shared_reference

import gemma_keras as gk  # noqa: E402

BACKEND = gk.use_backend(os.environ.get("KERAS_BACKEND") or gk.current_backend())
ARCHITECTURES = ("gemma", "gemma2", "gemma3")
# For a test whose outcome cannot depend on the Keras backend: one session runs it for all three.
JAX_SESSION_ONLY = pytest.mark.skipif(BACKEND != "jax", reason="backend-independent; runs in the jax session")


def pytest_report_header(config):
    return f"gemma_keras backend: {BACKEND}; cache: {_SHARED_CACHE}"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_dir):
    """`tiny_gguf(arch, qtype="F32", **config)` -> (path, expected tensors), memoized."""
    from gemma_keras.testing import TinyConfig, write_tiny_gguf

    made: dict = {}

    def make(architecture: str = "gemma3", qtype: str = "F32", seed: int = 0, **config):
        key = (architecture, qtype, seed, tuple(sorted(config.items())))
        if key not in made:
            name = f"{architecture}-{qtype}-{seed}-{abs(hash(key[3]))}.gguf"
            path = tiny_dir / name
            expected = write_tiny_gguf(path, architecture, TinyConfig(**config), qtype=qtype, seed=seed)
            made[key] = (path, expected)
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_model(tiny_gguf):
    """`tiny_model(arch, qtype="F32", **config)` -> a loaded `Gemma`, memoized."""
    loaded: dict = {}

    def make(architecture: str = "gemma3", qtype: str = "F32", **config):
        key = (architecture, qtype, tuple(sorted(config.items())))
        if key not in loaded:
            path, _ = tiny_gguf(architecture, qtype, **config)
            loaded[key] = gk.load(path)
        return loaded[key]

    return make


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty cache directory for one test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GEMMA_KERAS_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def real_model():
    return gk.load()


def cache_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def generate_ids(lm, prompts, max_new_tokens, sampling=None, stop_ids=(), add_bos=True) -> list[list[int]]:
    """Generated token ids of each prompt (text, or ids as given; stop tokens excluded), through the decode loop."""
    from gemma_keras.generation.decode import generate_ids as decode_ids

    encoded = [lm.tokenizer.encode(p, add_bos=add_bos) if isinstance(p, str) else list(p) for p in prompts]
    return decode_ids(
        lm.runner,
        encoded,
        max_new_tokens,
        sampling,
        stop_ids,
        pad_id=lm.tokenizer.pad_id,
        context_length=lm.info.context_length,
    )


def free_port() -> int:
    """A loopback port free right now (for a server started in a subprocess)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mapped_file(address: int) -> str | None:
    """The file on disk whose mapping holds `address` in this process, or None (anonymous memory)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(a, 16) for a in fields[0].split("-"))
            if start <= address < end:
                path = fields[5].strip() if len(fields) == 6 else ""
                return path if path.startswith("/") and not path.startswith("/dev/") else None
    return None
