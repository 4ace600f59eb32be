"""`KerasRunner`: cached forward passes through KerasHub's own layers, compiled by the backend.

KerasHub's `generate` compiles one loop for one `max_length`; a new length
recompiles, and nothing comes out until the loop ends. This runner compiles
two small functions instead (`backend.compile`): a forward pass, used for
prefills and single steps, and a chunk of `CHUNK` greedy steps. The decode
loop between calls runs in Python, so tokens can stream and stop on strings.

The runner owns no transformer math: it calls the backbone's own embedding,
decoder blocks (with their caches and sliding windows) and final norm. One
change is made to KerasHub's layers: `use_position_sliding_mask`.

Gemma 4 ("per_layer" cache layout) differs in three ways, all in
`_forward_per_layer`: each layer's cache has that layer's own head count and
width (KerasHub pads every layer to the widest and stacks them, copying the
whole cache each step); a KV-shared layer has no cache and reads the one its
source layer has just written; and per-layer inputs are computed once per call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gemma_keras.architectures.record import Architecture
from gemma_keras.backend.compile import compile_model_function
from gemma_keras.backend.jax_mesh import batch_placement
from gemma_keras.errors import GenerationArgumentError

# Greedy tokens decoded per `greedy_chunk` call. Streamed greedy text arrives
# in bursts this long.
CHUNK = 16
# The shortest span of cache positions a call attends over (`KerasRunner._span`), and the shortest
# cache that calls attend over in spans: a span costs a compile, so it must save at least half.
MIN_SPAN = 128
MIN_SPANNED = 512


class KerasRunner:
    """Runs a KerasHub Gemma causal LM's layers with a KV cache.

    Args:
        causal_lm: a KerasHub Gemma causal LM.
        arch: its architecture record (the cache layout comes from it).
        sharded: whether the backend can shard variables, so that inputs
            must follow a sharded model onto its mesh.
    """

    chunk = CHUNK

    def __init__(
        self,
        causal_lm,
        arch: Architecture,
        sharded: bool = False,
        compiles: bool = True,
        prefill_chunk: int | None = None,
        spans: bool = False,
    ):
        self.causal_lm = causal_lm
        self.compiles = compiles
        # Cut calls: prompts wider than `prefill_chunk` run in pieces (`_in_pieces`), and calls attend
        # over the first positions of the cache only (`_span`).
        self.prefill_chunk = prefill_chunk if arch.cuttable_calls else None
        self.spans = spans and arch.cuttable_calls
        self.backbone = causal_lm.backbone
        self.arch = arch
        self.trace_count = 0
        self._sharded = sharded
        self._placement_checked = False
        self._placement = None
        self._compiled: dict[str, Any] = {}
        if arch.cache_layout == "altup":  # Gemma 3n: the text model sits inside the backbone
            self.text = self.backbone.language_model
            self.vocab_size = int(self.text.vocab_size)
        else:
            self.text = self.backbone
            self.vocab_size = int(self.backbone.vocabulary_size)
        self.layers = list(self.text.transformer_layers)
        for layer in self.layers:
            use_position_sliding_mask(layer.attention)
        # Gemma 4 and 3n: the cache slot each layer reads (its own, or its KV source's), and which layers own one.
        self._slots: list[int] = []
        self._owners: list = []
        if arch.cache_layout in ("per_layer", "altup"):
            last: dict[str, int] = {}  # Gemma 3n shares the last unshared layer of the same kind
            for i, layer in enumerate(self.layers):
                if arch.cache_layout == "altup":
                    kind = self.text.layer_types[i]
                    source = last[kind] if i >= self.text.first_kv_shared_layer_idx > 0 else None
                else:
                    source = layer.kv_shared_layer_index if layer.is_kv_shared_layer else None
                if source is not None:
                    self._slots.append(self._slots[source])
                else:
                    if arch.cache_layout == "altup":
                        last[self.text.layer_types[i]] = i
                    self._slots.append(len(self._owners))
                    self._owners.append(layer)

    def kv_sources(self) -> dict:
        """Gemma 4: see `last_owners`."""
        return last_owners(self.backbone, self._owners)

    def shared_kv(self, cache: list, kind: str):
        """The cache of `kv_sources()[kind]`, `(rows, 2, length, heads, dim)` as KerasHub's blocks read it."""
        return cache[self._owners.index(self.kv_sources()[kind])]

    # --- the model math, written once for every backend -------------------
    def _forward(self, token_ids, padding_mask, cache, index, every_position=False, states=False, last=None):
        """Logits after the last token `(rows, vocab)`, or after each one `(rows, t, vocab)`.

        `states` (Gemma 4): `(logits after each token, final-normed hidden states after each)`.
        `last`: the logits after fed token `last` instead of the last one (a feed padded on the right).
        """
        from keras import ops

        self.trace_count += 1  # runs once per trace when compiled

        def kept(x):
            if every_position:
                return x
            return x[:, -1:, :] if last is None else ops.take(x, ops.reshape(last, (1,)), axis=1)

        if self.arch.cache_layout == "altup":
            x, cache = self._hidden_altup(token_ids, padding_mask, cache, index)
            x = kept(x)  # already normalized
        else:
            if self.arch.cache_layout == "per_layer":
                x, cache = self._hidden_per_layer(token_ids, padding_mask, cache, index)
            else:
                x, cache = self._hidden(token_ids, padding_mask, cache, index)
            x = self.backbone.layer_norm(kept(x))
        logits = self.text.token_embedding(x, reverse=True)
        if states:
            return (ops.cast(logits, "float32"), ops.cast(x, "float32")), cache
        return ops.cast(logits if every_position else logits[:, 0, :], "float32"), cache

    def _hidden(self, token_ids, padding_mask, cache, index):
        """Gemma 1-3: the last decoder block's output for every fed token, and the cache."""
        from keras import ops

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
        return x, new_cache

    def _hidden_per_layer(self, token_ids, padding_mask, cache, index):
        """Gemma 4's forward pass, as `Gemma4CausalLM.call_with_cache` computes it (text only)."""
        from keras import ops

        backbone = self.backbone
        x = backbone.token_embedding(token_ids)
        per_layer = backbone.hidden_size_per_layer_input
        if per_layer:
            table = backbone.per_layer_token_embedding(token_ids)
            table = ops.cast(table, x.dtype) * ops.cast(per_layer**0.5, x.dtype)
        x = x * ops.cast(ops.sqrt(backbone.hidden_dim), x.dtype)
        if per_layer:
            projected = backbone.per_layer_model_projection(x) * ops.cast(backbone.hidden_dim**-0.5, x.dtype)
        cache = list(cache)
        for i, layer in enumerate(backbone.transformer_layers):
            layer_input = None
            if per_layer:
                part = slice(i * per_layer, (i + 1) * per_layer)
                normed = backbone.per_layer_projection_norm(projected[:, :, part])
                layer_input = (normed + table[:, :, part]) * ops.cast(2.0**-0.5, x.dtype)
            slot = self._slots[i]
            shared = cache[slot] if layer.is_kv_shared_layer else None
            x, written = layer(
                x,
                padding_mask=padding_mask,
                cache=cache[slot],
                cache_update_index=index,
                per_layer_input=layer_input,
                shared_kv=shared,
            )
            if shared is None:
                cache[slot] = written
        return x, cache

    def _hidden_altup(self, token_ids, padding_mask, cache, index):
        """Gemma 3n's text forward pass, as KerasHub's `Gemma3nTextModel` computes it, with one cache per owning layer."""
        from keras import ops

        text = self.text
        embeddings, per_layer = self.backbone.embedding_processor({"token_ids": token_ids})

        def rescaled(streams, like):
            """Each AltUp stream scaled to the magnitude of `like` (KerasHub's epsilon)."""
            target = ops.sqrt(ops.mean(like**2, axis=-1, keepdims=True))
            return [
                s * target / ops.sqrt(ops.maximum(ops.mean(s**2, axis=-1, keepdims=True), 1e-5))
                for s in streams
            ]

        streams = [embeddings, *rescaled([p(embeddings) for p in text.altup_projections], embeddings)]
        x = ops.stack(streams, axis=0)
        cache = list(cache)
        for i, layer in enumerate(self.layers):
            slot = self._slots[i]
            x, written = layer(
                (x, per_layer[:, :, i, :], padding_mask), cache=cache[slot], cache_update_index=index
            )
            if self._owners[slot] is layer:
                cache[slot] = written
        out = [x[0], *rescaled([p(x[j + 1]) for j, p in enumerate(text.altup_unembed_projections)], x[0])]
        return text.final_normalization(ops.mean(ops.stack(out), axis=0)), cache

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

    # --- cache and inputs ---------------------------------------------------
    def new_cache(self, rows: int, length: int) -> list:
        from keras import ops

        kv = self.backbone.num_key_value_heads
        dim = self.backbone.head_dim
        dtype = self.causal_lm.compute_dtype
        if self.arch.cache_layout == "altup":  # heads before positions
            cache = [
                ops.zeros(
                    (rows, 2, layer.attention.num_key_value_heads, length, layer.attention.head_dim), dtype
                )
                for layer in self._owners
            ]
        elif self.arch.cache_layout == "per_layer":
            cache = [
                ops.zeros(
                    (rows, 2, length, layer.attention.effective_num_kv_heads, layer.attention.head_dim), dtype
                )
                for layer in self._owners
            ]
        elif self.arch.cache_layout == "pair":
            shape = (rows, length, kv, dim)
            cache = [
                (ops.zeros(shape, dtype), ops.zeros(shape, dtype)) for _ in range(self.backbone.num_layers)
            ]
        else:
            shape = (rows, 2, length, kv, dim)
            cache = [ops.zeros(shape, dtype) for _ in range(self.backbone.num_layers)]
        return self._place(cache)

    def prepare_mask(self, padding_mask: np.ndarray):
        from keras import ops

        return self._place(ops.convert_to_tensor(np.asarray(padding_mask, np.int32), "int32"))

    def copy_rows(self, cache, rows: list[int], source, source_rows: list[int]):
        import keras
        from keras import ops

        # One scatter per cache tensor: each eager update copies the whole cache, so a row at a time
        # cost 7 copies of an 8-row cache when 7 requests joined (0.4 s on the 270M, more than their prefill).
        where = ops.convert_to_tensor(np.asarray(rows, np.int32)[:, None], "int32")
        taken = ops.convert_to_tensor(np.asarray(source_rows, np.int32), "int32")

        def copy(dst, src):
            return ops.scatter_update(dst, where, ops.take(src, taken, axis=0))

        return self._place(keras.tree.map_structure(copy, cache, source))

    def select_rows(self, cache, rows: list[int], size: int):
        import keras
        from keras import ops

        index = ops.convert_to_tensor(np.asarray(rows, np.int32), "int32")

        def select(x):
            kept = ops.take(x, index, axis=0)
            if size == len(rows):
                return kept
            return ops.concatenate([kept, ops.zeros((size - len(rows), *x.shape[1:]), x.dtype)], axis=0)

        return self._place(keras.tree.map_structure(select, cache))

    def lengthen(self, cache, length: int):
        import keras
        from keras import ops

        # (rows, length, ...), (rows, 2, heads, length, ...) or (rows, 2, length, ...)
        axis = {"pair": 1, "altup": 3}.get(self.arch.cache_layout, 2)

        def longer(x):
            shape = list(x.shape)
            shape[axis] = length - shape[axis]
            return ops.concatenate([x, ops.zeros(shape, x.dtype)], axis=axis)

        return self._place(keras.tree.map_structure(longer, cache))

    @property
    def placement(self):
        """How inputs follow a sharded model onto its mesh, or None.

        Decided on first use, not when the model loads: a model sharded over
        several processes loads and trains, and only generating there is refused.
        """
        if not self._placement_checked:
            self._placement = batch_placement(self.causal_lm.variables) if self._sharded else None
            self._placement_checked = True
        return self._placement

    @property
    def batch_multiple(self) -> int:
        return self.placement.multiple if self.placement is not None else 1

    def _place(self, tree):
        return tree if self.placement is None else self.placement.put(tree)

    # --- compiled entry points ----------------------------------------------
    def _call(self, name: str, token_ids: np.ndarray, mask, cache, index: int, reach: int | None = None):
        """Runs compiled `name`; `reach`, the cache positions the call can touch, picks its span."""
        from keras import ops

        span = self._span(reach, mask)
        fn = self._compiled.get((name, span))
        if fn is None:
            body = {
                "forward": self._forward,
                "forward_all": lambda *args: self._forward(*args, every_position=True),
                "forward_states": lambda *args: self._forward(*args, every_position=True, states=True),
                # `index` carries (index, last): the compiled signature has four arguments.
                "forward_at": lambda t, m, c, where: self._forward(t, m, c, where[0], last=where[1]),
                "greedy_chunk": self._greedy_chunk,
            }[name]
            if span is not None:
                body = _within(body, span)
            layers = self.causal_lm._flatten_layers()
            int8 = [layer for layer in layers if getattr(layer, "quantization_mode", None) == "int8"]
            # Weight-only int8; Keras' int8 with quantized inputs multiplies int8 by int8, and ran at
            # 0.6x with its conversions kept in the loop.
            weights_only = bool(int8) and not any(getattr(layer, "inputs_quantizer", None) for layer in int8)
            fn = self._compiled[(name, span)] = compile_model_function(
                body, self.causal_lm.variables, keep_conversions_in_loops=weights_only
            )
        tokens = self._place(ops.convert_to_tensor(np.asarray(token_ids, np.int32), "int32"))
        out, cache = fn(tokens, mask, cache, ops.convert_to_tensor(index, "int32"))
        if isinstance(out, tuple):
            return tuple(np.asarray(ops.convert_to_numpy(o)) for o in out), cache
        return np.asarray(ops.convert_to_numpy(out)), cache

    def _span(self, reach: int | None, mask) -> int | None:
        """The cache positions a call attends over: a power of two that holds `reach`, or None for all.

        The compiled functions attend over every cache position they are
        given, masked or not. A call that touches only the first positions
        of a long cache (a long prompt's first pieces, a serving batch's
        first tokens) gets only those: a power of two, so that few shapes
        compile. Keys and values past it stay as they are.
        """
        length = int(mask.shape[-1])
        if not self.spans or reach is None or length < MIN_SPANNED:
            return None
        span = max(MIN_SPAN, 1 << (max(reach, 1) - 1).bit_length())
        return span if span * 2 <= length else None

    def _in_pieces(self, name: str, token_ids, mask, cache, index: int, whole: bool = False):
        """`_call`, over pieces of `prefill_chunk` positions when the feed is wider than that.

        Each piece is one compiled call, and its attention scores span
        `piece x cache length`, not `prompt x cache length`. Long prompts are
        bucketed to multiples of 512 (`decode.prompt_bucket`), so the pieces
        share a few compiled shapes. `whole`: every piece attends over the
        whole cache, so that its compiled shape does not depend on `index`.
        """
        token_ids = np.asarray(token_ids)
        step, width = self.prefill_chunk, token_ids.shape[1]
        if not step or width <= step:
            return self._call(name, token_ids, mask, cache, index, None if whole else index + width)
        outs = []
        for start in range(0, width, step):
            piece = token_ids[:, start : start + step]
            reach = None if whole else index + start + piece.shape[1]
            out, cache = self._call(name, piece, mask, cache, index + start, reach)
            outs.append(out)
        return (np.concatenate(outs, axis=1) if name == "forward_all" else outs[-1]), cache

    def forward(self, token_ids, mask, cache, index: int, whole: bool = False):
        """A forward pass: returns `(last-position logits as numpy, cache)`; `whole` as `_in_pieces`."""
        return self._in_pieces("forward", token_ids, mask, cache, index, whole)

    def forward_all(self, token_ids, mask, cache, index: int):
        """A forward pass: returns `(logits after every fed token (rows, t, vocab), cache)`."""
        return self._in_pieces("forward_all", token_ids, mask, cache, index)

    def forward_at(self, token_ids, mask, cache, index: int, last: int):
        """As `forward`, but the logits after fed token `last`: tokens after it are padding, whose keys
        and values land past the real ones (later steps overwrite them, and causality hides them)."""
        reach = index + np.asarray(token_ids).shape[1]
        return self._call("forward_at", token_ids, mask, cache, np.array([index, last], np.int32), reach)

    def greedy_chunk(self, token_ids, mask, cache, index: int):
        """`CHUNK` greedy steps in one call: returns `(picks (rows, CHUNK), cache)`."""
        return self._call("greedy_chunk", token_ids, mask, cache, index, index + CHUNK)

    def forward_states(self, token_ids, mask, cache, index: int):
        """Gemma 4: `((logits, final-normed hidden states) after every fed token, cache)`."""
        if self.arch.cache_layout != "per_layer":
            raise GenerationArgumentError(
                f"only Gemma 4 exposes its hidden states here, not {self.arch.title}."
            )
        return self._call("forward_states", token_ids, mask, cache, index)


def _within(body, span: int):
    """`body(tokens, mask, cache, index)` run over the first `span` positions of every cache tensor.

    Gemma 1-3 caches hold positions on the third axis from the end. The
    positions past `span` are written back untouched; RoPE positions come
    from `index`, which a prefix of the cache leaves as they are.
    """

    def run(tokens, mask, cache, index):
        import keras
        from keras import ops

        def prefix(x):
            shape = list(x.shape)
            shape[-3] = span
            return ops.slice(x, [0] * len(shape), shape)

        out, part = body(tokens, mask[:, :span], keras.tree.map_structure(prefix, cache), index)
        whole = keras.tree.map_structure(lambda x, p: ops.slice_update(x, [0] * len(x.shape), p), cache, part)
        return out, whole

    return run


def last_owners(backbone, owners: list) -> dict:
    """Gemma 4: the last layer of each kind ("full_attention", "sliding_attention") among `owners`, the
    layers that compute keys and values. An assistant model reads those (transformers' `shared_kv_states`)."""
    layers = list(backbone.transformer_layers)
    return {backbone.layer_types[layers.index(layer)]: layer for layer in owners}


def use_position_sliding_mask(attention, reach: int = 0) -> None:
    """Swaps KerasHub's sliding-window mask for one built from positions.

    KerasHub slices a `(keys, keys)` band matrix at the cache index. Under
    TensorFlow's XLA that index becomes a compile-time constant, so every
    decode step recompiled (seconds per token), and on every backend it
    builds a large matrix per layer per step. Comparing positions gives the
    identical mask, `|query_pos - key_pos| < window`, with neither cost.
    `reach` widens the window (a Gemma 4 assistant's, see `generation.assistant`).
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
        window = distance < attention.sliding_window_size + reach
        return ops.logical_and(ops.cast(attention_mask, "bool"), window[None, :, :])

    attention._mask_sliding_window = mask_sliding_window
