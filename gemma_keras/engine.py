"""The decode engine: prefill and step-by-step decoding over KerasHub layers.

KerasHub's `generate` compiles one loop for one `max_length`; a new length
recompiles, and nothing comes out until the loop ends. This engine compiles
small functions per shape instead: a forward pass (the prefill, and single
sampled steps) and a chunk of `CHUNK` greedy steps. The loop between calls
runs in Python, so tokens can stream and stop on strings.

- Prompts are left-padded to a bucketed length and the KV cache is sized to
  a bucketed length, so a new `max_new_tokens` or prompt length within a
  bucket reuses the compiled functions. Gemma uses RoPE, which depends only
  on relative positions, so left padding (masked out) changes no result.
- JAX compiles with `jax.jit`, TensorFlow with `tf.function(jit_compile=True)`.
  On torch the engine runs `torch_decode`, a plain-torch forward over the
  same weights; models it cannot run (LoRA, quantized) use the Keras layers
  eagerly, chunks included.

Apart from `torch_decode`, the engine owns no transformer math: it calls the
backbone's own embedding, decoder blocks (with their caches and sliding
windows) and final norm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_PROMPT_BUCKET = 16
MIN_CACHE_BUCKET = 128
# Greedy tokens decoded per call of the Keras path (see
# `DecodeEngine._greedy_chunk`). Streamed text arrives in bursts this long.
CHUNK = 16


def bucket(n: int, minimum: int) -> int:
    """The smallest power of two >= max(n, minimum)."""
    size = minimum
    while size < n:
        size *= 2
    return size


class DecodeEngine:
    """Runs cached forward passes of a KerasHub Gemma causal LM.

    Args:
        causal_lm: a `keras_hub.models.GemmaCausalLM` or `Gemma3CausalLM`.
    """

    def __init__(self, causal_lm):
        import keras

        self.causal_lm = causal_lm
        self.backbone = causal_lm.backbone
        self.backend = keras.backend.backend()
        self.num_layers = self.backbone.num_layers
        # Gemma 3 blocks take a (key, value) tuple; Gemma 1/2 one stacked tensor.
        self.tuple_cache = type(self.backbone).__name__.startswith("Gemma3")
        self.trace_count = 0
        # On torch, run `torch_decode` instead of Keras' eager layers (faster,
        # same numbers); set False to force the Keras path.
        self.use_torch_fast_path = True
        self._compiled: dict[str, Any] = {}
        for layer in self.backbone.transformer_layers:
            _use_position_sliding_mask(layer.attention)

    # --- the model math, written once for every backend -------------------
    def _forward(self, token_ids, padding_mask, cache, index):
        from keras import ops

        self.trace_count += 1  # runs once per trace when compiled
        backbone = self.backbone
        x = backbone.token_embedding(token_ids)
        x = x * ops.cast(ops.sqrt(backbone.hidden_dim), x.dtype)
        new_cache = []
        for layer, layer_cache in zip(backbone.transformer_layers, cache, strict=True):
            x, layer_cache = layer(
                x,
                padding_mask=padding_mask,
                cache=layer_cache,
                cache_update_index=index,
            )
            new_cache.append(layer_cache)
        x = backbone.layer_norm(x[:, -1:, :])
        logits = backbone.token_embedding(x, reverse=True)[:, 0, :]
        return ops.cast(logits, "float32"), new_cache

    # --- cache ------------------------------------------------------------
    def new_cache(self, batch: int, length: int) -> list:
        from keras import ops

        kv = self.backbone.num_key_value_heads
        dim = self.backbone.head_dim
        dtype = self.causal_lm.compute_dtype
        if self.tuple_cache:
            shape = (batch, length, kv, dim)
            return [(ops.zeros(shape, dtype), ops.zeros(shape, dtype)) for _ in range(self.num_layers)]
        shape = (batch, 2, length, kv, dim)
        return [ops.zeros(shape, dtype) for _ in range(self.num_layers)]

    def _greedy_chunk(self, token_ids, padding_mask, cache, index):
        """Feeds `token_ids`, then `CHUNK - 1` greedy picks; returns the `CHUNK` picks.

        One compiled call decodes several tokens: XLA hoists work that does
        not change between steps (weight relayouts) out of the loop, which
        a call per token cannot do. On the 270M model on CPU (JAX) this is
        about 37 ms per token with chunks of 16, 39 ms with chunks of 8, and
        55 ms with one call per token; KerasHub's fully compiled loop: 37 ms.
        """
        from keras import ops

        picks = ops.zeros((ops.shape(token_ids)[0], CHUNK), "int32")

        def body(i, carry):
            tokens, cache, picks = carry
            logits, cache = self._forward(tokens, padding_mask, cache, index + i)
            chosen = ops.cast(ops.argmax(logits, axis=-1), "int32")[:, None]
            return chosen, cache, ops.slice_update(picks, [0, i], chosen)

        _, cache, picks = ops.fori_loop(0, CHUNK, body, (token_ids, cache, picks))
        return picks, cache

    # --- compiled entry points ----------------------------------------------
    def _function(self, name: str = "forward"):
        fn = self._compiled.get(name)
        if fn is not None:
            return fn
        body = self._forward if name == "forward" else self._greedy_chunk
        if self.backend == "jax":
            fn = self._jax_function(body)
        elif self.backend == "tensorflow":
            import tensorflow as tf

            fn = tf.function(body, jit_compile=True, reduce_retracing=False)
        else:
            fn = self._torch_function(body)
        self._compiled[name] = fn
        return fn

    def _jax_function(self, body):
        import jax
        import keras

        variables = self.causal_lm.variables

        def stateless(values, token_ids, padding_mask, cache, index):
            with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
                return body(token_ids, padding_mask, cache, index)

        jitted = jax.jit(stateless, donate_argnums=(3,))

        def call(token_ids, padding_mask, cache, index):
            values = [v.value for v in variables]
            return jitted(values, token_ids, padding_mask, cache, index)

        return call

    def _torch_function(self, body):
        import torch

        def call(token_ids, padding_mask, cache, index):
            with torch.inference_mode():
                return body(token_ids, padding_mask, cache, index)

        return call

    def _call(self, name: str, token_ids, padding_mask, cache, index: int):
        from keras import ops

        out, cache = self._function(name)(
            ops.convert_to_tensor(token_ids, "int32"),
            ops.convert_to_tensor(padding_mask, "int32"),
            cache,
            ops.convert_to_tensor(index, "int32"),
        )
        return np.asarray(ops.convert_to_numpy(out)), cache

    def run(self, token_ids, padding_mask, cache, index: int):
        """One forward pass: returns `(last-position logits as numpy, cache)`."""
        return self._call("forward", token_ids, padding_mask, cache, index)

    def run_greedy_chunk(self, token_ids, padding_mask, cache, index: int):
        """`CHUNK` greedy steps in one call: returns `(picks (batch, CHUNK), cache)`."""
        return self._call("greedy_chunk", token_ids, padding_mask, cache, index)

    # --- a whole generation ---------------------------------------------------
    def start(self, prompts: Sequence[Sequence[int]], max_new_tokens: int):
        """Prefills left-padded prompts; returns a `DecodeState`."""
        rows = len(prompts)
        placement = self._placement()
        if placement is not None:
            # The batch axis must divide the batch: repeat the last prompt,
            # whose rows are cut off the results again.
            prompts = list(prompts) + [prompts[-1]] * (placement.padded_rows(rows) - rows)
        batch = len(prompts)
        longest = max(len(p) for p in prompts)
        prompt_len = bucket(longest, MIN_PROMPT_BUCKET)
        # Room for a greedy chunk that runs past the last token asked for.
        cache_len = bucket(prompt_len + max_new_tokens + CHUNK, MIN_CACHE_BUCKET)
        tokens = np.zeros((batch, prompt_len), dtype=np.int32)
        mask = np.zeros((batch, cache_len), dtype=np.int32)
        for row, ids in enumerate(prompts):
            tokens[row, prompt_len - len(ids) :] = ids
            mask[row, prompt_len - len(ids) :] = 1
        # Positions after the prompt hold generated tokens: attendable.
        mask[:, prompt_len:] = 1
        fast = self._torch_decoder()
        if fast is not None:
            # Eager torch has no per-call compile overhead to amortize.
            run, chunk = fast.run, None
            cache = fast.new_cache(batch, cache_len, self.causal_lm.compute_dtype)
        else:
            run, chunk = self.run, self.run_greedy_chunk
            cache = self.new_cache(batch, cache_len)
        if placement is not None:
            tokens, mask, cache = placement.put((tokens, mask, cache))
        logits, cache = run(tokens, mask, cache, 0)
        return DecodeState(run, chunk, mask, cache, prompt_len, cache_len, logits[:rows], placement)

    def _placement(self):
        """How to split inputs over the devices, when the model is sharded (JAX only)."""
        if self.backend != "jax":
            return None
        from gemma_keras.distribution import batch_placement

        return batch_placement(self.causal_lm.variables)

    def _torch_decoder(self):
        """The plain-torch path on the torch backend, when the model allows it."""
        if self.backend != "torch" or not self.use_torch_fast_path:
            return None
        from gemma_keras import torch_decode

        if not torch_decode.supports(self.backbone):
            return None
        if self._compiled.get("torch") is None:
            self._compiled["torch"] = torch_decode.TorchDecoder(self.backbone)
        return self._compiled["torch"]


def _use_position_sliding_mask(attention) -> None:
    """Swaps KerasHub's sliding-window mask for one built from positions.

    KerasHub slices a `(keys, keys)` band matrix at the cache index. Under
    TensorFlow's XLA that index becomes a compile-time constant, so every
    decode step recompiled (seconds per token), and on every backend it
    builds a large matrix per layer per step. Comparing positions gives the
    identical mask, `|query_pos - key_pos| < window`, with neither cost.
    """
    if not getattr(attention, "use_sliding_window_attention", False):
        return
    if getattr(attention, "use_bidirectional_attention", False):
        return

    def mask_sliding_window(attention_mask, cache_update_index=0):
        from keras import ops

        _, query_len, key_len = ops.shape(attention_mask)
        query_pos = ops.arange(query_len, dtype="int32") + ops.cast(cache_update_index, "int32")
        key_pos = ops.arange(key_len, dtype="int32")
        distance = ops.abs(query_pos[:, None] - key_pos[None, :])
        window = distance < attention.sliding_window_size
        return ops.logical_and(ops.cast(attention_mask, "bool"), window[None, :, :])

    attention._mask_sliding_window = mask_sliding_window


class DecodeState:
    """The state of one batched generation between steps."""

    def __init__(self, run, chunk, mask, cache, index: int, cache_len: int, logits, placement=None):
        self._run = run
        self._placement = placement
        self.rows = len(logits)
        self._chunk = chunk
        self.mask = mask
        self.cache = cache
        self.index = index
        self.cache_len = cache_len
        self.logits = logits

    @property
    def can_chunk(self) -> bool:
        return self._chunk is not None

    def step(self, next_ids: np.ndarray) -> np.ndarray:
        """Feeds one token per row; returns the next logits."""
        logits, self.cache = self._run(self._tokens(next_ids), self.mask, self.cache, self.index)
        self.logits = logits[: self.rows]
        self.index += 1
        return self.logits

    def greedy_chunk(self, next_ids: np.ndarray) -> np.ndarray:
        """Feeds one token per row, then decodes greedily: returns `(batch, CHUNK)` picks.

        The last pick is not fed yet; pass it to the next call.
        """
        picks, self.cache = self._chunk(self._tokens(next_ids), self.mask, self.cache, self.index)
        self.index += CHUNK
        self.logits = None
        return picks[: self.rows]

    def _tokens(self, next_ids: np.ndarray):
        tokens = np.asarray(next_ids, dtype=np.int32).reshape(-1, 1)
        if self._placement is None:
            return tokens
        extra = self._placement.padded_rows(self.rows) - self.rows
        # Padding rows follow the last real row, as in `DecodeEngine.start`.
        tokens = np.concatenate([tokens, np.repeat(tokens[-1:], extra, axis=0)])
        return self._placement.put(tokens)
