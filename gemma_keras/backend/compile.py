"""How each backend compiles a Keras function that runs the model over its variables.

`compile_model_function(body, variables)` returns a callable with the
signature of `body(token_ids, padding_mask, cache, index)`:

- JAX: `jax.jit` over a stateless call (`keras.StatelessScope` maps the
  variables to traced values), with the cache buffers donated, so a step
  updates the KV cache in place (`donate=False` for a body that only reads
  the cache, such as an assistant's draft step over its target's cache);
- TensorFlow: `tf.function(jit_compile=True)`, that is XLA;
- torch: eager, under `torch.inference_mode()` (Keras' layer code does not
  compile well with `torch.compile`; see `generation.torch_runner`).

`keep_compiled_programs(directory)` turns on JAX's persistent compilation
cache there, so that a new process reuses the XLA programs an earlier one
compiled for the same shapes: on the embedded 270M, the first `generate`
after a load took 1.0-1.3 s instead of 1.8-2.3 s, and the next new shape
1.5 s instead of 3.5 s (2-core CPU, three runs each). TensorFlow and torch
have no such cache to turn on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gemma_keras.backend.selection import current_backend
from gemma_keras.checks import env_flag


def compile_model_function(
    body: Callable, variables: list, donate: bool = True, keep_conversions_in_loops: bool = False
) -> Callable:
    """`body(token_ids, padding_mask, cache, index)` compiled over `variables` on JAX and TensorFlow.

    `keep_conversions_in_loops`: on JAX, int8 weights are converted inside the loops that use them
    (see `_KEEP_CONVERSIONS_IN_LOOPS`); TensorFlow and torch ignore it.
    """
    name = current_backend()
    if name == "jax":
        return _jax(
            body, variables, donate, _KEEP_CONVERSIONS_IN_LOOPS if keep_conversions_in_loops else None
        )
    if name == "tensorflow":
        import tensorflow as tf

        return tf.function(body, jit_compile=True, reduce_retracing=False)
    return _torch(body)


XLA_CACHE_ENV = "GEMMA_KERAS_XLA_CACHE"
# Programs that compile faster than this are not worth a disk read; the
# prefill and decode steps of a real model take a second or more.
_MIN_COMPILE_SECONDS = 0.2
_CACHE_BYTES = 512 * 2**20


def keep_compiled_programs(directory: Path) -> Path | None:
    """On JAX, keeps compiled programs in `directory` across processes; returns the directory in use.

    A cache directory the user gave JAX (`JAX_COMPILATION_CACHE_DIR` or
    `jax.config`) wins. `GEMMA_KERAS_XLA_CACHE=0` turns ours off. Returns
    None where no cache is in use: another backend, turned off, or a
    directory that cannot be created.
    """
    if current_backend() != "jax":
        return None
    import jax

    chosen = jax.config.jax_compilation_cache_dir
    if chosen:
        return Path(chosen)
    if not env_flag(XLA_CACHE_ENV, default=True):
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only cache only costs compile time
    jax.config.update("jax_compilation_cache_dir", str(directory))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", _MIN_COMPILE_SECONDS)
    if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:
        jax.config.update("jax_compilation_cache_max_size", _CACHE_BYTES)
    return directory


# XLA hoists work that does not change between a loop's steps out of the loop. For int8 weights that is
# their conversion to float: the greedy chunk then converted every weight once per call and read the
# float32 copies at each step (1.7 GB of temporaries for the 270M), and int8 decoded at 0.6x float32.
# Kept in the loop, the conversion fuses into the products. int4 is the other way round: unpacking it at
# each step took 4x as long as hoisting.
_KEEP_CONVERSIONS_IN_LOOPS = {
    "xla_disable_hlo_passes": "while-loop-invariant-code-motion,while-loop-expensive-invariant-code-motion"
}


def _jax(body: Callable, variables: list, donate: bool, options: dict | None) -> Callable:
    import jax
    import keras

    def stateless(values, token_ids, padding_mask, cache, index):
        with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
            return body(token_ids, padding_mask, cache, index)

    jitted = jax.jit(stateless, donate_argnums=(3,) if donate else (), compiler_options=options)

    def call(token_ids, padding_mask, cache, index) -> Any:
        return jitted([v.value for v in variables], token_ids, padding_mask, cache, index)

    # For inspection (`call.lower(...).compile().memory_analysis()`): JAX's `Lowered` of a call.
    call.lower = lambda *args: jitted.lower([v.value for v in variables], *args)
    return call


def _torch(body: Callable) -> Callable:
    import torch

    def call(token_ids, padding_mask, cache, index) -> Any:
        with torch.inference_mode():
            return body(token_ids, padding_mask, cache, index)

    return call
