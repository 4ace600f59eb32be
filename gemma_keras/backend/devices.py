"""What each backend offers here: devices, the default dtype and its capabilities.

Example:

>>> import gemma_keras as gk
>>> gk.available_backends()  # doctest: +SKIP
{'jax': {'version': '0.10.2', 'devices': ['cpu:0']}, ...}
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from typing import Any

from gemma_keras.backend.quiet import quiet_native_logs
from gemma_keras.backend.selection import (
    BACKENDS,
    _keras_backend_if_imported,
    _require_installed,
    current_backend,
    is_installed,
    normalize_backend_name,
    resolve_backend,
)
from gemma_keras.errors import BackendError

_DISTS = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}
_TITLES = {"jax": "JAX", "tensorflow": "TensorFlow", "torch": "PyTorch"}


@dataclass(frozen=True)
class Capabilities:
    """What the rest of the library may rely on for one backend.

    Attributes:
        compiles: Keras functions can be compiled whole (XLA), so the Keras
            decode path runs compiled and greedy chunks pay off.
        shards_variables: Keras' distribution API places and shards
            variables over devices.
        plain_torch: the plain-torch runner (`generation.torch_runner`) can run.
        fused_sparse_cross_entropy: the fused sparse cross-entropy needs less
            memory than computing it from logits in two passes.
        prefill_chunk: the Keras runner feeds a longer prompt in pieces of
            this many positions: each piece's attention scores span the
            piece, not the whole prompt. On the 270M on this CPU, 512 made
            JAX prefill 1.28-1.35x as fast at 2,048 and 4,096 tokens;
            TensorFlow was slower in pieces of 512 at 2,048 tokens (347
            against 400 tok/s), so it keeps prompts up to 2,048 whole.
        attention_spans: the Keras runner's compiled calls attend over the
            first positions of a long cache only, in power-of-two spans
            (`KerasRunner._span`): each span compiles once, and saves the
            attention over masked positions.
    """

    compiles: bool
    shards_variables: bool
    plain_torch: bool
    fused_sparse_cross_entropy: bool
    prefill_chunk: int = 512
    attention_spans: bool = False


_CAPABILITIES = {
    "jax": Capabilities(
        compiles=True,
        shards_variables=True,
        plain_torch=False,
        fused_sparse_cross_entropy=False,
        attention_spans=True,
    ),
    "tensorflow": Capabilities(
        compiles=True,
        shards_variables=False,
        plain_torch=False,
        fused_sparse_cross_entropy=True,
        prefill_chunk=2048,
        attention_spans=True,
    ),
    "torch": Capabilities(
        compiles=False, shards_variables=False, plain_torch=True, fused_sparse_cross_entropy=False
    ),
}


def capabilities(name: str | None = None) -> Capabilities:
    """The `Capabilities` of a backend (default: the one in use)."""
    return _CAPABILITIES[normalize_backend_name(name) if name else current_backend()]


def devices(name: str | None = None) -> list[str]:
    """The devices a backend can run on, such as `["cpu:0"]`.

    This imports the backend's library. TensorFlow imports keras with it, so
    for TensorFlow the backend this process resolves to is settled first.
    """
    name = normalize_backend_name(name) if name else current_backend()
    _require_installed(name)
    with quiet_native_logs():
        return _devices(name)


def _devices(name: str) -> list[str]:
    if name == "jax":
        import jax

        return [f"{d.platform}:{d.id}" for d in jax.devices()]
    if name == "torch":
        import torch

        found = ["cpu:0"]
        if torch.cuda.is_available():
            found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            found.append("mps:0")
        return found
    if _keras_backend_if_imported() is None:
        # Importing TensorFlow imports keras, which then fixes its backend
        # for good: make sure that is the backend this process resolves to.
        os.environ["KERAS_BACKEND"] = resolve_backend()[0]
    import tensorflow as tf

    counts: dict[str, int] = {}
    found = []
    for d in tf.config.list_physical_devices():
        kind = d.device_type.lower()
        found.append(f"{kind}:{counts.get(kind, 0)}")
        counts[kind] = counts.get(kind, 0) + 1
    return found


def require_sharding_backend(feature: str) -> str:
    """Returns the backend if it can shard Keras variables over devices, else raises.

    Keras' distribution API (`DeviceMesh`, `DataParallel`, `ModelParallel`)
    places and shards variables on JAX only.
    """
    name = current_backend()
    if not capabilities(name).shards_variables:
        able = [b for b, c in _CAPABILITIES.items() if c.shards_variables]
        raise BackendError(
            f"{feature} needs the {' or '.join(_TITLES[b] for b in able)} backend, but this process uses {name!r}: Keras "
            f"shards variables over devices only there. Start Python with KERAS_BACKEND={able[0]}, or "
            f"call gemma_keras.use_backend({able[0]!r}) before anything imports keras."
        )
    return name


def has_accelerator(name: str | None = None) -> bool:
    """Whether the backend sees a GPU or TPU."""
    return any(not d.startswith("cpu") for d in devices(name))


def default_dtype(name: str | None = None) -> str:
    """float32 on CPU, bfloat16 on GPU/TPU; `GEMMA_KERAS_DTYPE` overrides."""
    override = os.environ.get("GEMMA_KERAS_DTYPE")
    if override:
        return validate_dtype(override)
    return "bfloat16" if has_accelerator(name) else "float32"


def validate_dtype(dtype: str) -> str:
    allowed = ("float32", "bfloat16", "float16")
    if not isinstance(dtype, str) or dtype not in allowed:
        raise BackendError(f"Unsupported dtype {dtype!r}; choose one of {', '.join(allowed)}.")
    return dtype


def available_backends() -> dict[str, dict[str, Any]]:
    """Every installed backend with its version and devices.

    Example:

    >>> import gemma_keras as gk
    >>> gk.available_backends()  # doctest: +SKIP
    {'jax': {'version': '0.10.2', 'devices': ['cpu:0']}, ...}
    """
    found: dict[str, dict[str, Any]] = {}
    for name in BACKENDS:
        if not is_installed(name):
            continue
        try:
            version = importlib.metadata.version(_DISTS[name])
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        try:
            devs = devices(name)
        except Exception as exc:  # a broken install must not hide the others
            devs = [f"error: {exc}"]
        found[name] = {"version": version, "devices": devs}
    return found
