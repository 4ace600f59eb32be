"""The quantization modes of `Gemma.quantize`, as Keras quantization configs.

Keras quantizes each layer that has a `quantize` method: every EinsumDense
projection and the ReversibleEmbedding, whose quantized table serves both
the token lookup and the tied output projection. Norms stay float.

- "int8": weight-only. int8 weights, one abs-max scale per output channel
  (per vocabulary row for the embedding); the layers' inputs stay float.
- "int4": weight-only. int4 weights in groups of `INT4_GROUP_SIZE` values
  along the input axis, each group with its own scale and zero point; the
  inputs stay float.
- "int8-activations": Keras' default int8 mode. Weights as in "int8", and
  each layer's inputs quantized to int8 (abs-max per row) on every call.

At load only (`gk.load(path, quantize="gguf")`, `GGUF_MODE`): keep a
quantized GGUF's own blocks. On torch (CPU) the plain-torch runner
multiplies by them packed for torch's int4 kernel, with the file's values
(`formats.gguf_blocks`, `generation.packed_torch`); elsewhere the float32
weights, which hold the same values, run.

This module imports nothing heavy, so that the CLI can list the modes.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator
from typing import Any

from gemma_keras.errors import GenerationArgumentError

QUANTIZE_MODES = ("int8", "int4", "int8-activations")
GGUF_MODE = "gguf"
LOAD_QUANTIZE_MODES = (*QUANTIZE_MODES, GGUF_MODE)
# int4 weights share one scale and zero point per this many input values.
INT4_GROUP_SIZE = 128


def check_quantize_mode(mode: Any, at_load: bool = False) -> str:
    """Returns `mode` if it is one of `QUANTIZE_MODES` (or, `at_load`, `LOAD_QUANTIZE_MODES`); raises otherwise."""
    modes = LOAD_QUANTIZE_MODES if at_load else QUANTIZE_MODES
    if isinstance(mode, str) and mode == GGUF_MODE and not at_load:
        raise GenerationArgumentError(
            "quantize mode 'gguf' keeps a GGUF file's own blocks, so it is chosen when loading: "
            "gk.load('model.gguf', quantize='gguf')."
        )
    if not isinstance(mode, str) or mode not in modes:
        choices = ", ".join(repr(m) for m in modes)
        raise GenerationArgumentError(f"quantize mode must be one of {choices}, got {mode!r}.")
    return mode


def quantization_config(mode: str):
    """The Keras `QuantizationConfig` behind one of `QUANTIZE_MODES`."""
    from keras.quantizers import Int4QuantizationConfig, Int8QuantizationConfig

    check_quantize_mode(mode)
    if mode == "int8":  # Keras' default weight quantizer: abs-max per output channel
        return Int8QuantizationConfig(activation_quantizer=None)
    if mode == "int4":
        return Int4QuantizationConfig(activation_quantizer=None, block_size=INT4_GROUP_SIZE)
    return Int8QuantizationConfig()  # "int8-activations": AbsMaxQuantizer on the inputs too


_COLLECT_LOCK = threading.Lock()


@contextlib.contextmanager
def one_collection() -> Iterator[None]:
    """Runs Python's garbage collector once at the end instead of once per deleted weight.

    Keras' `Layer.__delattr__` calls `gc.collect()` for every variable it drops, and
    quantizing drops every float kernel. In a process holding many objects each
    collection takes up to a second or more: quantizing the 270M to int8 took 170 s in
    the JAX test session, almost all of it in those collections.
    """
    with _COLLECT_LOCK:
        collect = gc.collect
        gc.collect = lambda generation=2: 0
        try:
            yield
        finally:
            gc.collect = collect
    gc.collect()


# Rows of a table quantized at once by `rows_at_a_time`: 16,384 x 640 float32 is 40 MB per temporary.
_QUANTIZE_ROWS = 16384
_QUANTIZER_LOCK = threading.Lock()


@contextlib.contextmanager
def rows_at_a_time() -> Iterator[None]:
    """Keras' NumPy abs-max quantizer, run over a large table's rows a block at a time.

    Keras quantizes the embedding in NumPy (`abs_max_quantize(..., to_numpy=True)`), one whole
    array per step: `abs`, the product, `round` and `clip` each made a float32 copy of the 262,144 x
    640 table, and quantizing the 270M to int8 peaked at 4.0 GB. Per-row scales make each row's result
    independent of the others, so the same operations over blocks of rows give the same bytes.
    """
    import numpy as np
    from keras.src.quantizers import quantizers

    whole = quantizers.abs_max_quantize

    def blockwise(inputs, axis, value_range=(-127, 127), dtype="int8", epsilon=None, to_numpy=False):
        epsilon = quantizers.backend.epsilon() if epsilon is None else epsilon
        last = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
        if (
            not to_numpy
            or len(inputs.shape) != 2
            or last not in ((-1,), (1,))
            or inputs.shape[0] <= _QUANTIZE_ROWS
        ):
            return whole(inputs, axis, value_range, dtype, epsilon, to_numpy)
        from keras import ops

        original_dtype = quantizers.backend.standardize_dtype(inputs.dtype)
        array = ops.convert_to_numpy(inputs)
        outputs = np.empty(array.shape, dtype)
        scale = np.empty((array.shape[0], 1), array.dtype)
        for start in range(0, array.shape[0], _QUANTIZE_ROWS):
            rows = slice(start, start + _QUANTIZE_ROWS)
            block = array[rows]
            scale[rows] = np.divide(
                value_range[1], np.add(np.max(np.abs(block), axis=1, keepdims=True), epsilon)
            )
            outputs[rows] = np.clip(np.round(np.multiply(block, scale[rows])), value_range[0], value_range[1])
        return ops.convert_to_tensor(outputs), ops.convert_to_tensor(scale, dtype=original_dtype)

    with _QUANTIZER_LOCK:
        quantizers.abs_max_quantize = blockwise
        try:
            yield
        finally:
            quantizers.abs_max_quantize = whole
