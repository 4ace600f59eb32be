"""Builds Keras models without drawing random weights that are overwritten at once.

A KerasHub backbone draws every weight from its initializer when it is
built, and every load then overwrites them all with the file's values. On
the 270M that draw took about 4.7 s of a warm JAX load (3.6 s of it
compiling XLA random kernels, one per shape). Inside `weights_follow()`,
`Layer.add_weight` starts each weight at zeros instead. Only loads use it, and
only around a build whose every weight is then filled from a file (a
KerasHub `from_preset`, `convert.build_backbone`, `keras_preset.rebuild`); a
weight the file lacks makes those loads fail, so none is left at zero.
Outside it, and in other threads, Keras is unchanged: LoRA and anything a user
builds still draw random weights.

On torch it also saves a copy of every weight as the file fills it. Keras'
weights store hands each layer a NumPy array read from the file, and the
torch backend's `convert_to_tensor` copies any array again before
`assign` copies it into the variable: loading the 270M held two extra copies
of the 671 MB embedding at once (1.28 GB traced by tracemalloc). Inside
`weights_follow()`, an array that already has the variable's dtype is
viewed with `torch.from_numpy` instead.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_active = threading.local()
_install_lock = threading.Lock()
_installed = False


def _install() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        from keras.layers import Layer

        original = Layer.add_weight

        @functools.wraps(original)
        def add_weight(self, *args, **kwargs):
            if getattr(_active, "depth", 0):
                if len(args) > 1:  # Keras 2 style: add_weight(shape, initializer, ...)
                    args = (args[0], "zeros", *args[2:])
                else:
                    kwargs["initializer"] = "zeros"
            return original(self, *args, **kwargs)

        Layer.add_weight = add_weight
        _install_torch_view()
        _installed = True


def _install_torch_view() -> None:
    import keras

    if keras.backend.backend() != "torch":
        return
    import numpy as np
    import torch

    variable_class = keras.Variable
    original = getattr(variable_class, "_convert_to_tensor", None)
    if original is None:  # a private Keras method: without it, loads copy as Keras always did
        return
    original_assign = variable_class.assign

    @functools.wraps(original_assign)
    def assign(self, value):
        # Only `assign` copies what it converts; a variable built from an array keeps it.
        if not getattr(_active, "depth", 0):
            return original_assign(self, value)
        _active.assigning = True
        try:
            return original_assign(self, value)
        finally:
            _active.assigning = False

    @functools.wraps(original)
    def _convert_to_tensor(self, value, dtype=None):
        if (
            getattr(_active, "assigning", False)
            and type(value) is np.ndarray
            and value.dtype.kind in "fiu"  # not ml_dtypes' bfloat16, which torch cannot view
            and value.flags.c_contiguous
            and value.flags.writeable  # torch.from_numpy needs it, and only the load holds the array
            and dtype is not None
            and value.dtype.name == keras.backend.standardize_dtype(dtype)
        ):
            return torch.from_numpy(value)  # assign copies it into the variable (onto its device)
        return original(self, value, dtype)

    variable_class.assign = assign
    variable_class._convert_to_tensor = _convert_to_tensor


@contextmanager
def weights_follow() -> Iterator[None]:
    """Weights built inside start at zeros: the caller fills every one of them next."""
    _install()
    _active.depth = getattr(_active, "depth", 0) + 1
    try:
        yield
    finally:
        _active.depth -= 1
