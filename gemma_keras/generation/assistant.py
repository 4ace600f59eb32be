"""`Assistant`: a Gemma 4 assistant model drafting tokens from its target's own state.

Gemma 4's assistant models (multi-token prediction drafts) do not run on
their own: each draft step reads the target's embedding of the last token,
the target's final hidden state before it, and the target's KV cache (each
assistant layer attends to the keys and values of the target's last layer of
its kind that computes them). All steps of a round use the same position,
the one the last accepted token is fed at, and attend only to what the target
has already computed (positions before it). This follows transformers'
`SinglePositionMultiTokenCandidateGenerator` and KerasHub's
`Gemma4AssistantCausalLM.call_with_cache`; the model is KerasHub's.

The output of speculative decoding is still the target's own greedy output:
the assistant only proposes (see `generation.speculative`).

Example:

>>> assistant = gk.load_assistant("path/to/gemma-4-e2b-it-assistant")  # doctest: +SKIP
>>> lm.generate("The capital of France is", draft=assistant, lookahead=4)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gemma_keras.backend.compile import compile_model_function
from gemma_keras.errors import GenerationArgumentError
from gemma_keras.generation.keras_runner import use_position_sliding_mask


@dataclass
class Assistant:
    """A loaded Gemma 4 assistant: KerasHub's `Gemma4AssistantCausalLM` and where it came from."""

    causal_lm: Any
    source: str

    def __post_init__(self):
        self._steps: dict[int, Any] = {}
        # transformers' assistant reads the last `window + 1` keys before its position in a sliding
        # layer (a bidirectional window over the target's cache, flipped): distance < window + 2.
        for layer in self.backbone.transformer_layers:
            use_position_sliding_mask(layer.attention, reach=2)

    @property
    def backbone(self):
        return self.causal_lm.backbone

    @property
    def vocab_size(self) -> int:
        return int(self.backbone.vocabulary_size)

    def check_target(self, target) -> None:
        """Refuses a target whose sizes the assistant was not made for (`target` is its runner)."""
        if not hasattr(target, "forward_states"):
            raise GenerationArgumentError(
                f"the assistant {self.source} drafts for a Gemma 4 model, whose runner exposes its hidden "
                "states and KV cache; this model's does not."
            )
        if self.vocab_size != target.vocab_size:
            raise GenerationArgumentError(
                f"the assistant {self.source} has {self.vocab_size:,} logits per token and the model "
                f"{target.vocab_size:,}: it was made for another model."
            )
        hidden = int(target.backbone.hidden_dim)
        if int(self.causal_lm.backbone_hidden_size) != hidden:
            raise GenerationArgumentError(
                f"the assistant {self.source} reads hidden states of width "
                f"{self.causal_lm.backbone_hidden_size}; this model's are {hidden} wide."
            )
        sources = target.kv_sources()
        for layer, kind in zip(self.backbone.transformer_layers, self.backbone.layer_types, strict=True):
            own = (layer.attention.effective_num_kv_heads, layer.attention.head_dim)
            if kind not in sources:
                raise GenerationArgumentError(f"the model has no {kind} layer for the assistant to read.")
            theirs = sources[kind]
            if own != (theirs.attention.effective_num_kv_heads, theirs.attention.head_dim):
                raise GenerationArgumentError(
                    f"the assistant's {kind} layers read {own[0]} key/value heads of width {own[1]}; the "
                    f"model's have {theirs.attention.effective_num_kv_heads} of width {theirs.attention.head_dim}."
                )

    def propose(
        self, target, cache: list, mask: np.ndarray, position: int, token: int, hidden: np.ndarray, count: int
    ) -> list[int]:
        """`count` greedy proposals for the token after `token`, which is fed at `position`.

        `cache` and `mask` are the target's (one row); `hidden` is the
        target's final hidden state at `position - 1`.
        """
        from keras import ops

        step = self._step(target)
        sources = [target.shared_kv(cache, kind) for kind in self.backbone.layer_types]
        visible = np.array(mask, np.int32, copy=True)
        visible[:, position:] = 0  # the target has computed nothing at or past `position`
        visible = target.prepare_mask(visible)
        tokens, state = [], ops.convert_to_tensor(np.asarray(hidden, np.float32).reshape(1, 1, -1))
        index = ops.convert_to_tensor(position, "int32")
        for _ in range(count):
            ids = ops.convert_to_tensor(np.asarray([[token]], np.int32))
            picked, state = step(ids, visible, (sources, state), index)
            token = int(ops.convert_to_numpy(picked)[0, 0])
            tokens.append(token)
        return tokens

    def _step(self, target):
        """The compiled draft step for this target: `(token, mask, (sources, hidden), position)` ->
        `(the assistant's greedy pick, its next hidden state)`."""
        key = id(target)
        if key not in self._steps:
            lm, embedding = self.causal_lm, target.backbone.token_embedding
            scale = float(np.sqrt(target.backbone.hidden_dim))

            def body(token, mask, state, position):
                from keras import ops

                sources, hidden = state
                last = embedding(token)
                last = last * ops.cast(scale, last.dtype)
                x = ops.concatenate(
                    [ops.cast(last, lm.compute_dtype), ops.cast(hidden, lm.compute_dtype)], -1
                )
                x = lm.pre_projection(x)
                for layer, kv in zip(lm.backbone.transformer_layers, sources, strict=True):
                    x, _ = layer(x, padding_mask=mask, cache=kv, cache_update_index=position, shared_kv=kv)
                x = lm.backbone.layer_norm(x)
                if lm.use_ordered_embeddings:
                    logits = lm._apply_centroid_logits(x)
                else:
                    logits = lm.backbone.token_embedding(x, reverse=True)
                pick = ops.cast(ops.argmax(logits[:, -1, :], axis=-1), "int32")[:, None]
                return pick, ops.cast(lm.post_projection(x), "float32")

            variables = [embedding.embeddings, *lm.variables]
            self._steps[key] = compile_model_function(body, variables, donate=False)
        return self._steps[key]
