"""Choosing the Keras backend, before keras is imported.

Keras reads `KERAS_BACKEND` once, when it is first imported, so the backend
must be settled before that. This module never imports keras at import time;
`ensure_backend()` resolves the choice, sets the environment and only then
imports keras (quietly: see `quiet.py`).

Resolution order: `use_backend(name)`, then `KERAS_BACKEND`, then the
`backend` entry of a Keras config file the user wrote, then the first
installed of jax, torch, tensorflow.

Keras writes `~/.keras/keras.json` itself the first time it is imported,
always naming `tensorflow`. That file is Keras' default, not the user's
choice, so it does not count: a config file counts only when its text
differs from what Keras writes for itself.

Example:

>>> import gemma_keras as gk
>>> gk.use_backend("jax")  # doctest: +SKIP
>>> gk.current_backend()  # doctest: +SKIP
'jax'
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

from gemma_keras.backend.quiet import quiet_native_logs
from gemma_keras.errors import BackendError

BACKENDS = ("jax", "tensorflow", "torch")
_ALIASES = {"tf": "tensorflow", "pytorch": "torch", "jax": "jax"}
# The module that must import for a backend to count as installed, its
# distribution name for the version, and the pip command that installs it.
_MODULES = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}
# gemma_keras is installed from a clone of its repository; its extras pin each backend.
_INSTALL = {
    "jax": "pip install '.[jax]' in the gemma_keras clone",
    "tensorflow": "pip install '.[tensorflow]' in the gemma_keras clone",
    "torch": "pip install '.[torch]' in the gemma_keras clone",
}
# Preference when nothing names a backend: JAX compiles the decode loop best.
_PREFERENCE = ("jax", "torch", "tensorflow")
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


# Exactly what Keras writes to keras.json when it finds none (keras/src/backend/config.py).
KERAS_OWN_CONFIG = json.dumps(
    {"floatx": "float32", "epsilon": 1e-07, "backend": "tensorflow", "image_data_format": "channels_last"},
    indent=4,
)


def config_file_path() -> Path:
    home = os.environ.get("KERAS_HOME") or str(Path.home() / ".keras")
    return Path(home) / "keras.json"


def _config_file_backend() -> str | None:
    """The backend a user-written keras.json names; None for none, or Keras' own file."""
    try:
        text = config_file_path().read_text()
        if text.strip() == KERAS_OWN_CONFIG:
            return None
        value = json.loads(text).get("backend")
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
        with quiet_native_logs():
            importlib.import_module("keras")
    active = _keras_backend_if_imported()
    if active != name:
        raise BackendError(
            f"keras started with the {active!r} backend instead of {name!r}. "
            f"Set KERAS_BACKEND={name} before keras is imported."
        )
    return name
