"""Speculative decoding: a small draft model proposes tokens, the model checks them all in one pass.

Greedy only, one prompt. Each round the draft decodes `lookahead` tokens
greedily; the target model then runs once over the last accepted token and
the proposals, which gives its own greedy pick after each of them. Proposals
are kept while they equal the target's picks; at the first that differs, the
target's pick is taken instead, and when all match, the target's pick after
the last comes free. Every token comes from the target's own logits, so the
output is the target's greedy output, token for token; the draft only decides
how many tokens one target pass yields.

Both models keep their KV caches. Rejected proposals leave entries past the
accepted position; causal masking hides them, and the next round overwrites
them. The draft must share the target's vocabulary (the same tokenizer).

A Gemma 4 assistant (`generation.assistant`) drafts differently: it keeps no
cache of its own, and reads the target's cache and the target's final hidden
state after the last kept token, so the target's verifying pass also returns
its hidden states (`forward_states`).

Example:

>>> lm.generate("The capital of France is", max_new_tokens=64, draft=small_lm)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from gemma_keras.buckets import bucket
from gemma_keras.errors import GenerationArgumentError
from gemma_keras.generation.assistant import Assistant
from gemma_keras.generation.decode import MIN_CACHE_BUCKET, Batch, Detokenize, Event, Request
from gemma_keras.generation.runner import Runner

DEFAULT_LOOKAHEAD = 4


@dataclass
class DraftStats:
    """How a speculative generation went: proposals made, proposals accepted, target passes."""

    proposed: int = 0
    accepted: int = 0
    target_passes: int = 0
    tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.tokens / self.target_passes if self.target_passes else 0.0


def check_draft(
    request: Request, target: Runner, draft: Runner | Assistant, lookahead: int = DEFAULT_LOOKAHEAD
) -> None:
    """Refuses what speculative decoding cannot reproduce exactly, and a bad `lookahead`."""
    if not isinstance(lookahead, int) or isinstance(lookahead, bool) or not 1 <= lookahead <= 64:
        raise GenerationArgumentError(f"lookahead must be an integer from 1 to 64, got {lookahead!r}.")
    if not request.sampling.greedy or request.sampling.repetition_penalty is not None:
        raise GenerationArgumentError(
            "draft= decodes greedily (temperature=0, no repetition_penalty): only then is the output "
            "exactly the model's own."
        )
    if request.constraint is not None:
        raise GenerationArgumentError("draft= cannot be combined with json_schema.")
    if isinstance(draft, Assistant):
        draft.check_target(target)
    elif draft.vocab_size != target.vocab_size:
        raise GenerationArgumentError(
            f"the draft model has {draft.vocab_size:,} logits per token and the model {target.vocab_size:,}: "
            "a draft must share the model's tokenizer."
        )


def speculative_decode(
    target: Runner,
    draft: Runner | Assistant,
    request: Request,
    *,
    lookahead: int = DEFAULT_LOOKAHEAD,
    pad_id: int = 0,
    detokenize: Detokenize | None = None,
    context_length: int | None = None,
    stats: DraftStats | None = None,
) -> Iterator[Event]:
    """Yields the events of one greedy generation, as `decode` would, using `draft` to propose tokens.

    `draft` is another model's runner, or a Gemma 4 `Assistant`, which drafts from the target's state.
    """
    check_draft(request, target, draft, lookahead)
    stats = stats if stats is not None else DraftStats()
    # The caches leave room for a last round of proposals past the budget.
    room = bucket(len(request.prompt), 16) + request.max_new_tokens + lookahead + 2
    length = bucket(room, MIN_CACHE_BUCKET)
    options = dict(pad_id=pad_id, context_length=context_length, length=length)
    big, logits = Batch.prefill(target, [request], detokenize=detokenize, **options)
    drafter = (
        _AssistantDrafter(draft, target, big, request)
        if isinstance(draft, Assistant)
        else _ModelDrafter(draft, request, options)
    )
    row = big.rows[0]
    yield from row.accept(0, int(np.argmax(logits[0])))
    stats.tokens += 1
    while row.finish_reason is None:
        index = big.index  # where the last accepted token goes
        k = min(lookahead, request.max_new_tokens - row.count, big.length - index - 1)
        proposals = drafter.propose(big, row.pending, k)
        tokens = np.asarray([[row.pending, *proposals]], np.int32)
        checked, big.cache = drafter.verify(big, tokens, index)
        picks = np.argmax(checked[0], axis=-1).tolist()
        stats.target_passes += 1
        stats.proposed += len(proposals)
        taken = 0
        for proposal, pick in zip(proposals, picks, strict=False):
            if proposal != pick or row.finish_reason is not None:
                break
            yield from row.accept(0, proposal)
            taken += 1
        stats.accepted += taken
        stats.tokens += taken
        if row.finish_reason is None:  # the target's pick after the last kept token
            yield from row.accept(0, int(picks[taken]))
            stats.tokens += 1
        big.index = index + 1 + taken
        drafter.kept(index, proposals, taken, [row.pending] if row.pending is not None else [])


class _ModelDrafter:
    """Another model drafts: it keeps its own cache and is fed every accepted token."""

    def __init__(self, draft: Runner, request: Request, options: dict):
        self.draft = draft
        self.small, _ = Batch.prefill(draft, [Request(request.prompt, request.max_new_tokens)], **options)
        self.unfed: list[int] | None = (
            None  # accepted tokens the draft has not seen; the last is the target's too
        )

    def propose(self, big: Batch, pending: int, count: int) -> list[int]:
        small = self.small
        feed = self.unfed if self.unfed is not None else [pending]
        self.unfed = feed
        proposals: list[int] = []
        for _ in range(count):
            logits, small.cache = self.draft.forward(
                np.asarray([feed], np.int32), small._runner_mask(), small.cache, small.index
            )
            small.index += len(feed)
            proposals.append(int(np.argmax(logits[0])))
            feed = proposals[-1:]
        return proposals

    @staticmethod
    def verify(big: Batch, tokens: np.ndarray, index: int):
        return big.runner.forward_all(tokens, big._runner_mask(), big.cache, index)

    def kept(self, index: int, proposals: list[int], taken: int, pending: list[int]) -> None:
        if not proposals:  # no room to propose: the draft saw nothing this round
            self.unfed = self.unfed + pending
            return
        # The draft has seen the kept proposals except, when all were kept, the last one.
        seen = min(taken, len(proposals) - 1)
        self.small.index = index + 1 + seen
        self.unfed = proposals[seen:taken] + pending


class _AssistantDrafter:
    """A Gemma 4 assistant drafts from the target's hidden state before the pending token and its cache."""

    def __init__(self, assistant: Assistant, target: Runner, big: Batch, request: Request):
        self.assistant = assistant
        # The prefill kept only logits: feed the last prompt token again (same position, same keys
        # and values) for its hidden state.
        last = np.asarray([[request.prompt[-1]]], np.int32)
        (_, hidden), big.cache = target.forward_states(last, big._runner_mask(), big.cache, big.index - 1)
        self.hidden = hidden[0, -1]

    def propose(self, big: Batch, pending: int, count: int) -> list[int]:
        if count <= 0:
            return []
        return self.assistant.propose(big.runner, big.cache, big.mask, big.index, pending, self.hidden, count)

    def verify(self, big: Batch, tokens: np.ndarray, index: int):
        (logits, self.states), cache = big.runner.forward_states(tokens, big._runner_mask(), big.cache, index)
        return logits, cache

    def kept(self, index: int, proposals: list[int], taken: int, pending: list[int]) -> None:
        self.hidden = self.states[0, taken]  # after the last kept token, which predicted the pending one
