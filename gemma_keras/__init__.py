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

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from gemma_keras.backend.devices import available_backends
from gemma_keras.backend.selection import current_backend, use_backend
from gemma_keras.errors import (
    BackendError,
    CacheError,
    DataError,
    DistributionError,
    ExportError,
    FinetuneError,
    FrozenWeightsWarning,
    GemmaKerasError,
    GenerationArgumentError,
    GenerationError,
    GGUFError,
    HubUnavailableError,
    Interrupted,
    MissingExtraError,
    ModelNotFoundError,
    NotInstructionTunedWarning,
    SourceError,
    TurnsDroppedWarning,
    UnsupportedModelError,
)

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "CacheError",
    "DataError",
    "DistributionError",
    "ExportError",
    "FinetuneConfig",
    "FinetuneError",
    "FinetuneResult",
    "FrozenWeightsWarning",
    "Gemma",
    "GemmaKerasError",
    "GenerationArgumentError",
    "GenerationError",
    "GGUFError",
    "HubUnavailableError",
    "Interrupted",
    "MissingExtraError",
    "ModelNotFoundError",
    "NotInstructionTunedWarning",
    "TurnsDroppedWarning",
    "SamplingParams",
    "SourceError",
    "UnsupportedModelError",
    "available_backends",
    "current_backend",
    "distribute",
    "distribution",
    "load",
    "load_assistant",
    "serve",
    "use_backend",
]

if TYPE_CHECKING:
    from gemma_keras import distribution
    from gemma_keras.generation.sampling import SamplingParams
    from gemma_keras.model import Gemma
    from gemma_keras.training.config import FinetuneConfig
    from gemma_keras.training.loop import FinetuneResult

# Public names that live in modules importing keras or numpy-heavy code: loaded on first use.
_LAZY = {
    "Gemma": "gemma_keras.model",
    "SamplingParams": "gemma_keras.generation.sampling",
    "FinetuneConfig": "gemma_keras.training.config",
    "FinetuneResult": "gemma_keras.training.loop",
}


def load(source: Any = None, **kwargs: Any) -> Gemma:
    """Loads a Gemma model; see `gemma_keras.sources.resolve.load` for the arguments."""
    from gemma_keras.sources.resolve import load as _load

    return _load(source, **kwargs)


def load_assistant(source: Any, **kwargs: Any) -> Any:
    """Loads a Gemma 4 assistant model, a draft for `generate(..., draft=assistant)`.

    `source` is a transformers directory (`Gemma4AssistantForCausalLM`), a
    Keras preset directory or a KerasHub preset name; `dtype` as for `load`.
    See `gemma_keras.sources.assistant`.

    Example:

    >>> assistant = gk.load_assistant("path/to/gemma-4-e2b-it-assistant")  # doctest: +SKIP
    >>> lm.generate("The capital of France is", draft=assistant)  # doctest: +SKIP
    """
    from gemma_keras.sources.assistant import load_assistant as _load_assistant

    return _load_assistant(source, **kwargs)


def serve(model: Any = None, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> int:
    """Serves a model over OpenAI's HTTP API until SIGTERM; returns 0 after a graceful stop.

    `model` is a loaded `Gemma`, or a source for `load` (None: the embedded
    model), loaded in the background while `/health` says `loading`.
    `options` are `gemma_keras.serving.server.Server`'s (`max_batch`,
    `max_queue`, `api_key`, `grace`, ...). Needs the `serve` extra.

    Example:

    >>> import gemma_keras as gk
    >>> gk.serve(gk.load(), port=8000)  # doctest: +SKIP
    """
    from gemma_keras.serving.server import serve as _serve

    if model is None or isinstance(model, (str, os.PathLike)):
        source = model
        return _serve(lambda: load(source), host, port, **options)
    return _serve(model, host, port, **options)


def distribute(
    data_parallel: int | Literal["auto"] | None = "auto",
    model_parallel: int = 1,
    *,
    devices: Sequence[Any] | None = None,
):
    """Shards models loaded from now on over devices (JAX only); `distribute(None)` stops.

    See `gemma_keras.distribution.mesh.distribute` for the arguments.

    Example:

    >>> import gemma_keras as gk
    >>> gk.distribute(data_parallel=2, model_parallel=4)  # doctest: +SKIP
    >>> lm = gk.load()  # doctest: +SKIP
    """
    from gemma_keras.distribution.mesh import distribute as _distribute

    return _distribute(data_parallel, model_parallel, devices=devices)


def __getattr__(name: str) -> Any:
    # Lazy, so that `import gemma_keras` stays free of keras and numpy-heavy code.
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "distribution":
        return importlib.import_module("gemma_keras.distribution")
    raise AttributeError(f"module 'gemma_keras' has no attribute {name!r}")
