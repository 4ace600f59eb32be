"""Imports keras_hub without TensorFlow when the backend is not TensorFlow.

keras_hub imports TensorFlow and tensorflow-text whenever they are installed,
and its Gemma requirements install them on every backend. It needs them only
for tf.data preprocessing: KerasHub's Gemma 3, 3n and 4 preprocessors, and
its `get_file`, which asks TensorFlow for its file-system schemes even for a
local directory. gemma_keras runs none of that to load a cached model or to
generate; its tokenizer is sentencepiece's. Measured on this project's 2-core
CPU with JAX: `import keras_hub` takes 1.2 s and 249 MB of RSS without
TensorFlow, 3.0 s and 862 MB with it.

So, off the TensorFlow backend, `import_keras_hub()` imports keras_hub with
TensorFlow hidden, and `without_tensorflow()` hides it again around a preset
load. keras_hub binds `tf = None` into its modules when TensorFlow is hidden.
Keras itself imports TensorFlow the first time it serializes anything (a
`get_config`), only to ask whether an object is a `tf.TensorShape`; while
keras_hub runs without TensorFlow, Keras' lazy `tensorflow` module answers
`available` with whether TensorFlow is imported, which is the same answer for
any object that exists. `keras_hub_with_tensorflow()` undoes both: it imports
TensorFlow and puts it back in keras_hub's names, for the steps that need
KerasHub's preprocessor: converting a model, exporting a Keras preset, or
`lm.causal_lm` used as KerasHub's own model.

TensorFlow is not hidden when it is the backend, when it is already imported,
or when `GEMMA_KERAS_KERAS_HUB_TENSORFLOW=1`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
from collections.abc import Iterator
from types import ModuleType

from gemma_keras.backend.quiet import quiet_native_logs
from gemma_keras.backend.selection import ensure_backend
from gemma_keras.checks import env_flag

KERAS_HUB_TENSORFLOW_ENV = "GEMMA_KERAS_KERAS_HUB_TENSORFLOW"
# keras_hub's modules bind these names at import: `tf`, `tf_text`.
_HIDDEN = {"tensorflow": "tf", "tensorflow_text": "tf_text"}


def import_keras_hub() -> ModuleType:
    """Imports keras_hub quietly, and without TensorFlow off the TensorFlow backend."""
    backend = ensure_backend()
    if "keras_hub" in sys.modules:
        return sys.modules["keras_hub"]
    with quiet_native_logs():
        if backend == "tensorflow" or env_flag(KERAS_HUB_TENSORFLOW_ENV):
            return importlib.import_module("keras_hub")
        with without_tensorflow():
            keras_hub = importlib.import_module("keras_hub")
    if tensorflow_hidden():
        _keras_lazy_tensorflow(imported_only=True)
    return keras_hub


def tensorflow_hidden() -> bool:
    """Whether keras_hub was imported without TensorFlow and has not been given it since."""
    tensor_utils = sys.modules.get("keras_hub.src.utils.tensor_utils")
    return tensor_utils is not None and getattr(tensor_utils, "tf", 0) is None


@contextlib.contextmanager
def without_tensorflow() -> Iterator[None]:
    """Makes `import tensorflow` fail (as if not installed) for the block, unless it is already imported."""
    if any(sys.modules.get(name) is not None for name in _HIDDEN):
        yield
        return
    # A None entry makes `import tensorflow` raise ImportError and
    # `importlib.util.find_spec` answer None: both read as "not installed".
    for name in _HIDDEN:
        sys.modules[name] = None
    try:
        yield
    finally:
        for name in _HIDDEN:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def keras_hub_with_tensorflow() -> None:
    """Gives keras_hub (and Keras) the TensorFlow that keras_hub was imported without, if it is installed.

    Where TensorFlow is not installed, KerasHub's own ImportError names what
    needs it, as it would without gemma_keras.
    """
    if not tensorflow_hidden():
        return
    modules = {}
    with quiet_native_logs():
        for name in _HIDDEN:
            try:
                modules[name] = importlib.import_module(name)
            except ImportError:
                pass
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("keras_hub"):
            continue
        for dist, alias in _HIDDEN.items():
            if dist in modules and vars(module).get(alias, 0) is None:
                setattr(module, alias, modules[dist])
    _keras_lazy_tensorflow(imported_only=False)


def _keras_lazy_tensorflow(imported_only: bool) -> None:
    """Switches Keras' lazy `tensorflow` module between "available once imported" and Keras' own rule."""
    from keras.src.utils import module_utils

    lazy = module_utils.tensorflow
    if not isinstance(lazy, module_utils.LazyModule):  # another Keras: leave it alone
        return
    lazy.__class__ = (
        _imported_only_class(module_utils.LazyModule) if imported_only else module_utils.LazyModule
    )


@functools.cache
def _imported_only_class(base: type) -> type:
    class ImportedOnly(base):
        @property
        def available(self) -> bool:
            return sys.modules.get("tensorflow") is not None

    return ImportedOnly
