"""Data and model parallelism over a `("batch", "model")` device mesh (JAX only).

`distribute()` sets Keras' global distribution, so every model loaded or
built afterwards creates its variables on the mesh:

- `model_parallel=1`: `keras.distribution.DataParallel`. Weights are
  replicated; batches are split over the devices.
- `model_parallel>1`: a `keras.distribution.ModelParallel` whose layouts come
  from `RULES`. Attention is split by heads, the feed-forward layers by their
  hidden width, the token embedding by its vocabulary (or, when that does not
  divide, by its width), Megatron style; norms and LoRA weights are
  replicated.

The layouts depend on the model's sizes, which are not known when
`distribute()` runs. So the distribution decides each variable's layout when
the variable is created, from its path and shape: a dimension is sharded only
when the model axis divides it, and otherwise the next candidate layout (or
full replication) is used. A model with one KV head (multi-query attention)
thus keeps its key and value projections whole on every device, where
KerasHub's `GemmaBackbone.get_layout_map` fails. `layout_map()` gives the
same layouts as a plain `keras.distribution.LayoutMap`, for users who build
their own `ModelParallel`.

Example (8 simulated CPU devices; start Python with
`XLA_FLAGS=--xla_force_host_platform_device_count=8 KERAS_BACKEND=jax`):

>>> import gemma_keras as gk
>>> gk.distribute(data_parallel=2, model_parallel=4)  # doctest: +SKIP
<GemmaModelParallel mesh=(2, 4)>
>>> lm = gk.load("tiny.gguf")  # variables are created sharded  # doctest: +SKIP
>>> lm.generate(["Hello", "The capital of"], max_new_tokens=8)  # doctest: +SKIP
>>> gk.distribute(None)  # back to one device for models loaded later  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from typing import Any, Literal

from gemma_keras.backend.devices import require_sharding_backend
from gemma_keras.backend.jax_mesh import axis_size, sync_random_seed
from gemma_keras.backend.selection import ensure_backend
from gemma_keras.checks import positive_int
from gemma_keras.distribution.layouts import BATCH, MODEL, axes_for
from gemma_keras.errors import DistributionError


def distribute(
    data_parallel: int | Literal["auto"] | None = "auto",
    model_parallel: int = 1,
    *,
    devices: Sequence[Any] | None = None,
):
    """Sets the Keras distribution that models loaded from now on use.

    Args:
        data_parallel: devices along the batch axis; "auto" (the default)
            gives every device not taken by `model_parallel`. `None` turns
            distribution off for models loaded later.
        model_parallel: devices along the model axis, over which weights are
            sharded. 1 means plain data parallelism.
        devices: the devices to use, as Keras device strings (`"gpu:0"`) or
            JAX devices; default: all of them (all processes' devices in a
            multi-process run). Their count must be
            `data_parallel * model_parallel`.

    Returns:
        The `keras.distribution.Distribution` now in force, or None.

    Raises:
        BackendError: the backend is not JAX.
        DistributionError: the sizes do not fit the devices.

    Example:

    >>> import gemma_keras as gk
    >>> gk.distribute(model_parallel=2)  # doctest: +SKIP
    >>> lm = gk.load()  # doctest: +SKIP
    """
    if data_parallel is None:
        # Turning off must work anywhere, even where distributing cannot.
        keras = sys.modules.get("keras")
        if keras is not None:
            keras.distribution.set_distribution(None)
        return None
    require_sharding_backend("gemma_keras.distribute")
    ensure_backend()
    import keras
    import numpy as np

    where = "given" if devices is not None else "available"
    devices = list(devices) if devices is not None else keras.distribution.list_devices()
    mp = positive_int("model_parallel", model_parallel, DistributionError)
    if data_parallel == "auto":
        if len(devices) % mp:
            raise DistributionError(
                f"model_parallel={mp} does not divide the {len(devices)} {where} devices; pass a "
                f"model_parallel that divides {len(devices)}, or devices=... with a multiple of {mp}."
            )
        dp = len(devices) // mp
    else:
        dp = positive_int("data_parallel", data_parallel, DistributionError)
    if dp * mp != len(devices):
        raise DistributionError(
            f"data_parallel={dp} x model_parallel={mp} = {dp * mp} devices, but {len(devices)} are "
            f"{where}. Pass sizes whose product is {len(devices)}, or devices=... with {dp * mp} devices."
        )
    grid = np.asarray(devices, dtype=object)
    if mp == 1:
        mesh = keras.distribution.DeviceMesh((dp,), (BATCH,), grid)
        dist = keras.distribution.DataParallel(device_mesh=mesh)
    else:
        mesh = keras.distribution.DeviceMesh((dp, mp), (BATCH, MODEL), grid.reshape(dp, mp))
        dist = _model_parallel_class()(mesh)
    sync_random_seed()
    keras.distribution.set_distribution(dist)
    return dist


def current():
    """The Keras distribution in force, or None. Never imports keras."""
    keras = sys.modules.get("keras")
    return keras.distribution.distribution() if keras is not None else None


@functools.cache
def _model_parallel_class():
    # Built on first use: keras must not be imported with gemma_keras.
    import keras

    class GemmaModelParallel(keras.distribution.ModelParallel):
        """`ModelParallel` whose variable layouts come from `RULES`, sized at creation."""

        def __init__(self, device_mesh):
            super().__init__(layout_map=keras.distribution.LayoutMap(device_mesh), batch_dim_name=BATCH)
            self.model_size = axis_size(device_mesh, MODEL)

        def get_variable_layout(self, variable):
            if getattr(variable, "_layout", None) is not None:
                return variable._layout
            axes = axes_for(variable.path, variable.shape, self.model_size)
            return keras.distribution.TensorLayout(axes, self.device_mesh)

        def get_tensor_layout(self, path):
            # Activations: left to XLA's sharding propagation.
            return None

        def __repr__(self) -> str:
            return f"<GemmaModelParallel mesh={tuple(self.device_mesh.shape)}>"

    return GemmaModelParallel
