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
        _installed = True


@contextmanager
def weights_follow() -> Iterator[None]:
    """Weights built inside start at zeros: the caller fills every one of them next."""
    _install()
    _active.depth = getattr(_active, "depth", 0) + 1
    try:
        yield
    finally:
        _active.depth -= 1
