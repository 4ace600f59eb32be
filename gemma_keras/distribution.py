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
import re
import sys
from collections.abc import Sequence
from typing import Any, Literal

from gemma_keras import backend as _backend
from gemma_keras.errors import DistributionError

BATCH = "batch"
MODEL = "model"

Axes = tuple[str | None, ...]

# Variable path regex -> candidate layouts, best first. The first candidate
# whose sharded dimensions the model axis divides wins; when none does, the
# variable is replicated. Variables matching no rule are replicated (norms,
# LoRA factors, quantization scales).
_PREFIX = r"(?:.*/)?"
_BLOCK = _PREFIX + r"decoder_block_\d+/"
RULES: tuple[tuple[str, tuple[Axes, ...]], ...] = (
    # (vocabulary, hidden). By vocabulary first: the tied output projection
    # then yields logits split over the vocabulary and needs no gather.
    (_PREFIX + r"token_embedding/embeddings", ((MODEL, None), (None, MODEL))),
    # (heads, hidden, head_dim), split by heads. Query and key/value heads
    # are separate rules, as their counts differ: one KV head (or a count the
    # axis does not divide) stays whole on every device, as Megatron does
    # for multi-query attention, while the query heads are still split.
    (_BLOCK + r"attention/query/kernel", ((MODEL, None, None),)),
    (_BLOCK + r"attention/(?:key|value)/kernel", ((MODEL, None, None),)),
    # (heads, head_dim, hidden): split like the query heads that feed it.
    (_BLOCK + r"attention/attention_output/kernel", ((MODEL, None, None),)),
    # (hidden, ffn) and (ffn, hidden): split along the feed-forward width.
    (_BLOCK + r"ffw_gating(?:_2)?/kernel", ((None, MODEL),)),
    (_BLOCK + r"ffw_linear/kernel", ((MODEL, None),)),
)
_COMPILED = tuple((re.compile(pattern), candidates) for pattern, candidates in RULES)


def axes_for(path: str, shape: Sequence[int], model_size: int) -> Axes:
    """The sharding axes of one variable on a mesh whose model axis has `model_size` devices.

    Example:

    >>> axes_for("decoder_block_0/attention/key/kernel", (1, 2048, 256), 4)
    (None, None, None)
    >>> axes_for("decoder_block_0/attention/key/kernel", (4, 2048, 256), 4)
    ('model', None, None)
    >>> axes_for("token_embedding/embeddings", (457, 32), 4)
    (None, 'model')
    """
    shape = tuple(int(d) for d in shape)
    replicated: Axes = (None,) * len(shape)
    if model_size <= 1:
        return replicated
    for pattern, candidates in _COMPILED:
        if not pattern.fullmatch(path):
            continue
        for axes in candidates:
            if len(axes) == len(shape) and all(
                axis is None or dim % model_size == 0 for axis, dim in zip(axes, shape, strict=True)
            ):
                return axes
        return replicated
    return replicated


# --- turning it on and off ----------------------------------------------------
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
    _backend.require_sharding_backend("gemma_keras.distribute")
    _backend.ensure_backend()
    import keras
    import numpy as np

    where = "given" if devices is not None else "available"
    devices = list(devices) if devices is not None else keras.distribution.list_devices()
    mp = _positive("model_parallel", model_parallel)
    if data_parallel == "auto":
        if len(devices) % mp:
            raise DistributionError(
                f"model_parallel={mp} does not divide the {len(devices)} {where} devices; pass a "
                f"model_parallel that divides {len(devices)}, or devices=... with a multiple of {mp}."
            )
        dp = len(devices) // mp
    else:
        dp = _positive("data_parallel", data_parallel)
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
    _sync_random_seed()
    keras.distribution.set_distribution(dist)
    return dist


def current():
    """The Keras distribution in force, or None. Never imports keras."""
    keras = sys.modules.get("keras")
    return keras.distribution.distribution() if keras is not None else None


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DistributionError(f"{name} must be a positive integer, got {value!r}.")
    return value


def _sync_random_seed() -> None:
    """Gives every process the same Keras seed, as `keras.distribution.initialize` does.

    Each process initializes its own shards of every new variable (LoRA
    factors, for one); with different seeds the "replicated" copies would
    silently differ between processes.
    """
    import jax

    if jax.process_count() == 1:
        return
    from keras.src.utils import rng_utils

    if rng_utils.get_random_seed() is not None:
        return
    import keras
    import numpy as np
    from jax.experimental import multihost_utils

    local = np.asarray(np.random.default_rng().integers(0, 2**31 - 1), dtype=np.int32)
    keras.utils.set_random_seed(int(multihost_utils.broadcast_one_to_all(local)))


@functools.cache
def _model_parallel_class():
    # Built on first use: keras must not be imported with gemma_keras.
    import keras

    class GemmaModelParallel(keras.distribution.ModelParallel):
        """`ModelParallel` whose variable layouts come from `RULES`, sized at creation."""

        def __init__(self, device_mesh):
            super().__init__(layout_map=keras.distribution.LayoutMap(device_mesh), batch_dim_name=BATCH)
            self.model_size = _axis_size(device_mesh, MODEL)

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


def _axis_size(mesh, name: str) -> int:
    if name not in mesh.axis_names:
        raise DistributionError(
            f"The device mesh has axes {tuple(mesh.axis_names)}, but gemma_keras shards weights over "
            f"an axis named {name!r}. Build it as DeviceMesh(shape, axis_names=({BATCH!r}, {MODEL!r}), ...)."
        )
    return int(mesh.shape[list(mesh.axis_names).index(name)])


# --- an explicit LayoutMap ----------------------------------------------------
def variable_shapes(model_or_config) -> dict[str, tuple[int, ...]]:
    """`{variable path: shape}` of a `Gemma`, a KerasHub Gemma backbone or its config dict.

    For a config, one representative decoder block (`decoder_block_0`) is listed.
    """
    if isinstance(model_or_config, dict):
        return _shapes_from_config(model_or_config)
    backbone = getattr(model_or_config, "backbone", model_or_config)
    variables = getattr(backbone, "weights", None)
    if variables is None:
        raise DistributionError(
            "layout_map takes a gemma_keras.Gemma, a KerasHub Gemma backbone or its config dict "
            f"(backbone.get_config()), got {type(model_or_config).__name__}."
        )
    return {v.path: tuple(int(d) for d in v.shape) for v in variables}


def _shapes_from_config(config: dict) -> dict[str, tuple[int, ...]]:
    needed = ("vocabulary_size", "num_query_heads", "num_key_value_heads", "hidden_dim", "head_dim")
    missing = [k for k in (*needed, "intermediate_dim") if k not in config]
    if missing:
        raise DistributionError(
            f"The config lacks {', '.join(missing)}; pass a KerasHub Gemma backbone's get_config()."
        )
    vocab, heads, kv, hidden, head_dim = (int(config[k]) for k in needed)
    # KerasHub's Gemma 1/2 blocks halve intermediate_dim; Gemma 3 blocks do not.
    gemma3 = "global_rope_scaling_factor" in config
    ffn = int(config["intermediate_dim"]) // (1 if gemma3 else 2)
    block = "decoder_block_0/"
    return {
        "token_embedding/embeddings": (vocab, hidden),
        block + "attention/query/kernel": (heads, hidden, head_dim),
        block + "attention/key/kernel": (kv, hidden, head_dim),
        block + "attention/value/kernel": (kv, hidden, head_dim),
        block + "attention/attention_output/kernel": (heads, head_dim, hidden),
        block + "ffw_gating/kernel": (hidden, ffn),
        block + "ffw_gating_2/kernel": (hidden, ffn),
        block + "ffw_linear/kernel": (ffn, hidden),
    }


def layout_map(model_or_config, mesh):
    """A `keras.distribution.LayoutMap` for one model's sizes on `mesh`.

    Every dimension it shards is divisible by the mesh's `"model"` axis;
    what cannot be split evenly is replicated. Keys are regexes over
    variable paths, like KerasHub's own layout maps.

    Args:
        model_or_config: a `gemma_keras.Gemma`, a KerasHub Gemma backbone, or
            the backbone's config dict.
        mesh: a `keras.distribution.DeviceMesh` with a `"model"` axis.

    Example:

    >>> import keras, gemma_keras as gk  # doctest: +SKIP
    >>> mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"), keras.distribution.list_devices())  # doctest: +SKIP
    >>> config = gk.load("tiny.gguf").backbone.get_config()  # doctest: +SKIP
    >>> dist = keras.distribution.ModelParallel(layout_map=gk.distribution.layout_map(config, mesh))  # doctest: +SKIP
    """
    _backend.ensure_backend()
    import keras

    size = _axis_size(mesh, MODEL)
    shapes = variable_shapes(model_or_config)
    result = keras.distribution.LayoutMap(mesh)
    for pattern, _ in RULES:
        matched = {axes_for(p, s, size) for p, s in shapes.items() if re.fullmatch(pattern, p)}
        if len(matched) > 1:
            # Not so for any Gemma: every block has the same sizes.
            raise DistributionError(f"Variables matching {pattern!r} need different layouts: {matched}.")
        if matched:
            result[pattern] = matched.pop()
    return result


# --- placing generation inputs ----------------------------------------------------
class BatchPlacement:
    """Pads a generation batch to the mesh's batch axis and splits it over it.

    Only used when the model's variables live on the current distribution's
    mesh: arrays on different device sets cannot meet in one computation.
    """

    def __init__(self, dist):
        self.dist = dist
        self.multiple = _axis_size(dist.device_mesh, dist.batch_dim_name)

    def padded_rows(self, rows: int) -> int:
        return -(-rows // self.multiple) * self.multiple

    def put(self, tree):
        import jax

        def place(x):
            return jax.device_put(x, self.dist.get_data_layout(x.shape).backend_layout)

        return jax.tree.map(place, tree)


def batch_placement(variables) -> BatchPlacement | None:
    """The placement for generation inputs of a model with `variables`, or None."""
    dist = current()
    if dist is None or not variables or _backend.current_backend() not in _backend.SHARDING_BACKENDS:
        return None
    import jax

    sharding = getattr(variables[0].value, "sharding", None)
    mesh_devices = set(dist.device_mesh.backend_mesh.devices.flat)
    if sharding is None or set(sharding.device_set) != mesh_devices:
        return None
    if jax.process_count() > 1:
        raise DistributionError(
            "generate does not yet run across several processes (each would need the others' "
            "rows). Generate in one process, or call gemma_keras.distribute(None) and load the "
            "model again to generate on this process's devices."
        )
    return BatchPlacement(dist)
