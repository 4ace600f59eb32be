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
