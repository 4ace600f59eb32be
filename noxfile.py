"""Sessions: one test session per backend, plus lint, docs and a demo.

    nox -s tests              # tests-jax, tests-tensorflow, tests-torch
    nox -s tests-torch        # one backend
    nox -s tests_distributed  # sharding on 8 simulated CPU devices (JAX)
    nox -s lint docs          # ruff; mkdocs --strict
    nox -s demo               # the embedded Gemma 3 270M generates text

Each test session has its own virtualenv with only its backend's extra (plus
the test tools: transformers and torch are the parity reference on every
backend). keras-hub brings TensorFlow into every one of them.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

BACKENDS = ["jax", "tensorflow", "torch"]
ROOT = Path(__file__).parent
# The real model converts once per run and is shared by the backend sessions.
TEST_CACHE = ROOT / ".nox" / "gemma-keras-cache"
# The CPU wheel of torch lies on this machine's disk; a looser spec would let
# pip pull a multi-GB CUDA build, so it goes in first, pinned.
TORCH = "torch==2.13.0"

nox.options.sessions = ["lint", "docs", "tests", "tests_distributed"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
@nox.parametrize("backend", BACKENDS, ids=BACKENDS)
def tests(session: nox.Session, backend: str) -> None:
    """The unit, integration (real 270M) and parity tests on one backend."""
    session.install(TORCH)
    session.install("-e", f".[{backend},model,test]")
    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    env = {
        "KERAS_BACKEND": backend,
        "GEMMA_KERAS_TEST_CACHE": str(TEST_CACHE),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    # The sharding tests need 8 devices and JAX: tests_distributed runs them.
    args = session.posargs or ["-ra", "--durations=15", "-m", "not distributed", "tests"]
    session.run("python", "-m", "pytest", *args, env=env)


@nox.session
def tests_distributed(session: nox.Session) -> None:
    """Data and model parallelism on JAX: 8 simulated CPU devices, plus a 2-process run."""
    # No torch or transformers: nothing here compares against them.
    session.install("-e", ".[jax]", "pytest>=8")
    env = {
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    args = session.posargs or ["-ra", "--durations=10", "-m", "distributed", "tests/distributed"]
    session.run("python", "-m", "pytest", *args, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def docs(session: nox.Session) -> None:
    """Builds the docs with warnings as errors."""
    session.install("mkdocs>=1.6")
    session.run("mkdocs", "build", "--strict", "--site-dir", os.fspath(ROOT / "site"))


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: the embedded real Gemma 3 270M generates text on JAX."""
    session.install("-e", ".[jax,model]")
    env = {"KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"}
    session.run("gemma-keras", "info", env=env)
    prompt = session.posargs[0] if session.posargs else "The capital of France is"
    session.run("gemma-keras", "generate", prompt, "--max-new-tokens", "48", env=env)
