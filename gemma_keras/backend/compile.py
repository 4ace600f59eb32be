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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gemma_keras.backend.selection import current_backend


def compile_model_function(body: Callable, variables: list, donate: bool = True) -> Callable:
    name = current_backend()
    if name == "jax":
        return _jax(body, variables, donate)
    if name == "tensorflow":
        import tensorflow as tf

        return tf.function(body, jit_compile=True, reduce_retracing=False)
    return _torch(body)


def _jax(body: Callable, variables: list, donate: bool) -> Callable:
    import jax
    import keras

    def stateless(values, token_ids, padding_mask, cache, index):
        with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
            return body(token_ids, padding_mask, cache, index)

    jitted = jax.jit(stateless, donate_argnums=(3,) if donate else ())

    def call(token_ids, padding_mask, cache, index) -> Any:
        return jitted([v.value for v in variables], token_ids, padding_mask, cache, index)

    return call


def _torch(body: Callable) -> Callable:
    import torch

    def call(token_ids, padding_mask, cache, index) -> Any:
        with torch.inference_mode():
            return body(token_ids, padding_mask, cache, index)

    return call
