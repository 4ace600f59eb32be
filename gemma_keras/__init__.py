"""gemma_keras: Gemma 1, 2 and 3 as Keras 3 models on JAX, TensorFlow or PyTorch.

Importing this package does not import keras, so a backend can still be
chosen afterwards with `use_backend`.

Example:

>>> import gemma_keras as gk
>>> gk.use_backend("jax")  # doctest: +SKIP
>>> lm = gk.load()  # doctest: +SKIP
>>> lm.generate("The capital of France is", max_new_tokens=16)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gemma_keras.backend import available_backends, current_backend, use_backend
from gemma_keras.errors import (
    BackendError,
    CacheError,
    ExportError,
    GemmaKerasError,
    GenerationArgumentError,
    GGUFError,
    HubUnavailableError,
    ModelNotFoundError,
    SourceError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "CacheError",
    "ExportError",
    "Gemma",
    "GemmaKerasError",
    "GenerationArgumentError",
    "GGUFError",
    "HubUnavailableError",
    "ModelNotFoundError",
    "SamplingParams",
    "SourceError",
    "UnsupportedModelError",
    "available_backends",
    "current_backend",
    "load",
    "use_backend",
]

if TYPE_CHECKING:
    from gemma_keras.model import Gemma
    from gemma_keras.sampling import SamplingParams


def load(source: Any = None, **kwargs: Any) -> Gemma:
    """Loads a Gemma model; see `gemma_keras.sources.load` for the arguments."""
    from gemma_keras.sources import load as _load

    return _load(source, **kwargs)


def __getattr__(name: str) -> Any:
    # Lazy, so that `import gemma_keras` stays free of keras and numpy-heavy code.
    if name == "Gemma":
        from gemma_keras.model import Gemma

        return Gemma
    if name == "SamplingParams":
        from gemma_keras.sampling import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'gemma_keras' has no attribute {name!r}")
