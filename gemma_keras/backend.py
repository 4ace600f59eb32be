"""Backend selection: the one place that knows Keras backend names.

Keras reads `KERAS_BACKEND` once, when it is first imported, so the backend
must be settled before that. This module never imports keras at import time;
`ensure_backend()` resolves the choice, sets the environment and only then
imports keras.

Resolution order: `use_backend(name)`, then `KERAS_BACKEND`, then the
`backend` entry of the Keras config file, then the first installed of
jax, torch, tensorflow.

Example:

>>> import gemma_keras as gk
>>> gk.use_backend("jax")  # doctest: +SKIP
>>> gk.current_backend()  # doctest: +SKIP
'jax'
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from gemma_keras.errors import BackendError

BACKENDS = ("jax", "tensorflow", "torch")
_ALIASES = {"tf": "tensorflow", "pytorch": "torch", "jax": "jax"}
# The module that must import for a backend to count as installed, its
# distribution name for the version, and the pip command that installs it.
_MODULES = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}
_DISTS = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}
_INSTALL = {
    "jax": "pip install 'gemma-keras[jax]'",
    "tensorflow": "pip install 'gemma-keras[tensorflow]'",
    "torch": "pip install 'gemma-keras[torch]'",
}
# Preference when nothing names a backend: JAX compiles the decode loop best.
_PREFERENCE = ("jax", "torch", "tensorflow")
# Backends on which Keras' distribution API shards variables.
SHARDING_BACKENDS = ("jax",)

_explicit: str | None = None


def normalize_backend_name(name: str) -> str:
    """Returns the canonical backend name, or raises `BackendError`."""
    if not isinstance(name, str):
        raise BackendError(f"backend must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BACKENDS:
        raise BackendError(f"Unknown backend {name!r}. Choose one of: {', '.join(BACKENDS)}.")
    return key


def is_installed(name: str) -> bool:
    """Whether the backend's library can be imported in this environment."""
    return importlib.util.find_spec(_MODULES[normalize_backend_name(name)]) is not None


def _require_installed(name: str) -> None:
    if not is_installed(name):
        raise BackendError(
            f"The {name!r} backend is not installed in this Python environment "
            f"({sys.executable}). Install it with: {_INSTALL[name]}"
        )


def _keras_backend_if_imported() -> str | None:
    keras = sys.modules.get("keras")
    if keras is None:
        return None
    try:
        return keras.backend.backend()
    except AttributeError:  # keras is mid-import
        return os.environ.get("KERAS_BACKEND")


def _config_file_backend() -> str | None:
    home = os.environ.get("KERAS_HOME") or str(Path.home() / ".keras")
    path = Path(home) / "keras.json"
    try:
        value = json.loads(path.read_text()).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def use_backend(name: str) -> str:
    """Chooses the Keras backend for this process.

    Call it before anything imports keras. Calling it again with the backend
    already in use is a no-op.

    Args:
        name: "jax", "tensorflow" (or "tf") or "torch" (or "pytorch").

    Returns:
        The canonical backend name.

    Raises:
        BackendError: the name is unknown, the backend is not installed, or
            keras was already imported with a different backend.
    """
    global _explicit
    name = normalize_backend_name(name)
    _require_installed(name)
    active = _keras_backend_if_imported()
    if active is not None and active != name:
        raise BackendError(
            f"keras is already imported with the {active!r} backend, so it "
            f"cannot switch to {name!r} in this process. Call "
            f"gemma_keras.use_backend({name!r}) before importing keras (or "
            f"anything that imports it), or start Python with "
            f"KERAS_BACKEND={name}."
        )
    _explicit = name
    os.environ["KERAS_BACKEND"] = name
    return name


def resolve_backend() -> tuple[str, str]:
    """Returns `(backend, where_it_came_from)` without importing keras."""
    active = _keras_backend_if_imported()
    if active is not None:
        return active, "keras already imported"
    if _explicit is not None:
        return _explicit, "use_backend()"
    env = os.environ.get("KERAS_BACKEND")
    if env:
        return normalize_backend_name(env), "KERAS_BACKEND"
    config = _config_file_backend()
    if config and config.lower() in BACKENDS and is_installed(config.lower()):
        return config.lower(), "keras config file"
    for name in _PREFERENCE:
        if is_installed(name):
            return name, "first installed backend"
    raise BackendError("No Keras backend is installed. Install one, for example: " + _INSTALL["jax"])


def current_backend() -> str:
    """The backend gemma_keras uses (or will use) in this process."""
    return resolve_backend()[0]


def ensure_backend() -> str:
    """Settles the backend, then imports keras with it. Returns its name."""
    name, _ = resolve_backend()
    if _keras_backend_if_imported() is None:
        _require_installed(name)
        os.environ["KERAS_BACKEND"] = name
        # Quiet TensorFlow's C++ start-up banner; it is noise for users.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        importlib.import_module("keras")
    active = _keras_backend_if_imported()
    if active != name:
        raise BackendError(
            f"keras started with the {active!r} backend instead of {name!r}. "
            f"Set KERAS_BACKEND={name} before keras is imported."
        )
    return name


def devices(name: str | None = None) -> list[str]:
    """The devices a backend can run on, such as `["cpu:0"]`.

    This imports the backend's library. TensorFlow imports keras with it, so
    for TensorFlow the backend this process resolves to is settled first.
    """
    name = normalize_backend_name(name) if name else current_backend()
    _require_installed(name)
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
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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
    if name not in SHARDING_BACKENDS:
        raise BackendError(
            f"{feature} needs the JAX backend, but this process uses {name!r}: Keras shards "
            "variables over devices only on JAX. Start Python with KERAS_BACKEND=jax, or call "
            "gemma_keras.use_backend('jax') before anything imports keras."
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
    if dtype not in allowed:
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
