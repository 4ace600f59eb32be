"""Set-up for the sharding tests: 8 JAX devices, and no distribution leaking between tests.

Run them with `nox -s tests_distributed`, which starts Python with
`XLA_FLAGS=--xla_force_host_platform_device_count=8` so that one CPU shows
up as 8 JAX devices. The per-backend `tests` sessions deselect them.
"""

from __future__ import annotations

import pytest

import gemma_keras as gk
from tests.conftest import BACKEND

DEVICES = 8


def _skip_reason() -> str | None:
    if BACKEND != "jax":
        return f"sharding runs on JAX only; this session uses {BACKEND!r} (run nox -s tests_distributed)"
    import jax

    if jax.device_count() < DEVICES:
        return (
            f"needs {DEVICES} JAX devices, found {jax.device_count()}: start Python with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={DEVICES} (nox -s tests_distributed does)"
        )
    return None


@pytest.fixture(autouse=True)
def _eight_devices_and_a_clean_distribution():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    gk.distribute(None)
    yield
    gk.distribute(None)


@pytest.fixture(scope="session")
def reference_model(tiny_gguf):
    """`reference_model(arch, kv_heads)`: loaded with no distribution, memoized (do not mutate)."""
    loaded: dict = {}

    def make(architecture: str, kv_heads: int):
        key = (architecture, kv_heads)
        if key not in loaded:
            gk.distribute(None)
            path, _ = tiny_gguf(architecture, kv_heads=kv_heads)
            loaded[key] = gk.load(path)
        return loaded[key]

    return make
