"""The decode loop: prefill, greedy chunks or sampled steps, stop ids, stop strings and streamed text.

Everything between "token ids in" and "token ids and text out" lives here,
over any `Runner`:

- `Request`: one row's prompt ids, token budget, sampling and stops.
- `Batch`: rows decoding together over one KV cache. Positions are cache
  columns shared by all rows; each row starts at its own column, with its
  prompt placed to end where decoding is, and its padding mask hides the
  columns before it. Gemma uses RoPE, so attention depends only on the
  distance between positions and a row's start column changes no result.
  So rows can start together (`Batch.start`, prompts left-padded), join a
  running batch between steps (`join`), and leave it (`leave`), which
  continuous batching and chat-prefix reuse build on.
- `decode` and `generate_ids`: whole generations of a fixed set of rows,
  as `generate`, `stream` and `chat` run them.

Greedy rows without a repetition penalty or a constraint run in the runner's
compiled chunks when every active row is such a row; otherwise each step
samples on the host with NumPy (`sampling.py`), so a seed picks the same
tokens on every backend.

A row with a `constraint` (structured output, `structured.py`) has the
tokens its grammar refuses set to -inf before each pick, greedy or sampled;
its stop ids are allowed only once its text is complete, and it ends as soon
as nothing but a stop could follow.

Prompts and the cache are bucketed to powers of two, so a new prompt length
or `max_new_tokens` within a bucket reuses the runner's compiled functions.

Example:

>>> ids = generate_ids(lm.runner, [lm.tokenizer.encode("Hello")], 8)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from gemma_keras.buckets import bucket, long_bucket, round_up
from gemma_keras.checks import is_integer, positive_int
from gemma_keras.errors import GenerationArgumentError, GenerationError
from gemma_keras.generation.runner import Runner
from gemma_keras.generation.sampling import SamplingParams, next_tokens
from gemma_keras.generation.streaming import TextCollector
from gemma_keras.generation.structured import Constraint

MIN_PROMPT_BUCKET = 16
MIN_CACHE_BUCKET = 128
# Past these, prompt and cache buckets grow in steps of this size (`buckets.long_bucket`). A prompt
# step of 512 is the Keras runner's prefill piece, so every long prompt runs as pieces of one shape.
PROMPT_STEP = 512
CACHE_STEP = 1024


def prompt_bucket(n: int) -> int:
    """The padded width of an `n`-token prompt."""
    return long_bucket(n, MIN_PROMPT_BUCKET, PROMPT_STEP)


def cache_bucket(n: int) -> int:
    """The cache length that holds `n` positions."""
    return long_bucket(n, MIN_CACHE_BUCKET, CACHE_STEP)


Detokenize = Callable[[list[int]], str]


@dataclass
class Request:
    """One row of generation.

    Attributes:
        prompt: the prompt's token ids (at least one).
        max_new_tokens: how many tokens to pick at most (a stop token counts).
        sampling: how to pick them.
        stop_ids: token ids that end the row; they are not returned.
        stop: strings that end the row, found across token boundaries; the
            text is cut before them. They need a `detokenize` function.
        stream: the row's index in its own seeded draw: row `i` of a batch
            samples like a lone prompt with `stream=i`.
        constraint: keeps the row's tokens inside a grammar (a `structured.Constraint`,
            e.g. `structured.json_constraint(tokenizer, schema)`); one per row, as it
            holds the row's state.
    """

    prompt: Sequence[int]
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_ids: frozenset[int] = frozenset()
    stop: tuple[str, ...] = ()
    stream: int = 0
    constraint: Constraint | None = None

    def check(self, vocab_size: int, where: str = "prompt") -> None:
        """Raises `GenerationArgumentError` naming the first bad field."""
        positive_int("max_new_tokens", self.max_new_tokens, GenerationArgumentError)
        if len(self.prompt) == 0:
            raise GenerationArgumentError(f"{where} encodes to no tokens.")
        bad = [i for i in self.prompt if not is_integer(i) or not 0 <= i < vocab_size]
        if bad:
            raise GenerationArgumentError(
                f"{where} holds token ids outside the vocabulary (0..{vocab_size - 1}): {bad[:5]}."
            )
        bad = [i for i in self.stop_ids if not 0 <= i < vocab_size]
        if bad:
            raise GenerationArgumentError(
                f"stop_token_ids {sorted(bad)} are outside the vocabulary (0..{vocab_size - 1})."
            )
        if self.constraint is not None and not isinstance(self.constraint, Constraint):
            raise GenerationArgumentError(
                "constraint must have allowed(), accept(token), accepting and done "
                f"(a structured.Constraint), got {type(self.constraint).__name__}."
            )


@dataclass
class Event:
    """What one row did: accepted `token` (None when it ended) and the text that became final."""

    row: int
    token: int | None
    text: str
    finish_reason: str | None = None  # "stop" (a stop id or string) or "length"


class _Row:
    def __init__(self, request: Request, start: int, detokenize: Detokenize | None, vocab_size: int):
        params = request.sampling
        self.request = request
        self.start = start
        self.collector = TextCollector(detokenize or (lambda ids: ""), request.stop)
        seed = params.seed
        self.rng = np.random.default_rng(None if seed is None else [seed, request.stream])
        self.seen = None
        if params.repetition_penalty is not None:
            self.seen = np.zeros((1, vocab_size), dtype=bool)
            self.seen[0, np.asarray(request.prompt, dtype=np.int64)] = True
        self.count = 0  # tokens picked
        self.pending: int | None = None  # picked, not yet fed to the model
        self.fed: list[int] = []  # every token that became pending: fed at the next position
        self.finish_reason: str | None = None

    @property
    def plain_greedy(self) -> bool:
        return self.request.sampling.greedy and self.seen is None and self.request.constraint is None

    @property
    def ids(self) -> list[int]:
        return self.collector.ids

    def pick(self, logits: np.ndarray) -> int:
        constraint = self.request.constraint
        if constraint is not None:
            logits = np.where(self._allowed(constraint, logits.shape[-1]), logits, -np.inf)
        return int(next_tokens(logits[None, :], self.request.sampling, self.rng, self.seen)[0])

    def _allowed(self, constraint: Constraint, vocab_size: int) -> np.ndarray:
        """The tokens the row may pick next: the grammar's, and its stop ids once the text is complete."""
        allowed = np.zeros(vocab_size, dtype=bool)
        if not constraint.done:
            grammar = np.asarray(constraint.allowed(), dtype=bool)[:vocab_size]
            allowed[: len(grammar)] = grammar
        if constraint.accepting:
            allowed[[i for i in self.request.stop_ids if i < vocab_size]] = True
        if not allowed.any():
            raise GenerationError(
                "the output constraint allows no token here (the grammar is stuck, or it is "
                "complete and the row has no stop_token_ids to end with)."
            )
        return allowed

    def accept(self, row: int, token: int) -> list[Event]:
        """Takes one picked token; returns the events it causes."""
        self.count += 1
        events = []
        if token in self.request.stop_ids:
            self.finish_reason = "stop"
        else:
            if self.seen is not None:
                self.seen[0, token] = True
            if self.request.constraint is not None:
                self.request.constraint.accept(token)
            events.append(Event(row, token, self.collector.feed(token)))
            if self.collector.stopped or (
                self.request.constraint is not None and self.request.constraint.done
            ):
                self.finish_reason = "stop"
            elif self.count >= self.request.max_new_tokens:
                self.finish_reason = "length"
        if self.finish_reason is None:
            self.pending = token
            self.fed.append(token)
        else:
            self.pending = None
            events.append(Event(row, None, self.collector.finish(), self.finish_reason))
        return events


def _slots(runner: Runner, rows: int) -> int:
    """`rows` rounded up to a multiple of the runner's `batch_multiple`."""
    return round_up(rows, max(1, runner.batch_multiple))


class Batch:
    """Rows that decode together over one KV cache of `length` positions.

    Args:
        runner: the model's runner.
        rows: row slots (rounded up to the runner's `batch_multiple`).
        length: cache positions per row.
        pad_id: the token fed to rows that have ended.
        detokenize: ids -> text, for streamed text and stop strings.
    """

    def __init__(
        self,
        runner: Runner,
        rows: int,
        length: int,
        pad_id: int = 0,
        detokenize: Detokenize | None = None,
    ):
        self.runner = runner
        self.size = _slots(runner, rows)
        self.length = length
        self.pad_id = pad_id
        self.detokenize = detokenize
        self.cache = runner.new_cache(self.size, length)
        self.mask = np.zeros((self.size, length), dtype=np.int32)
        self._mask = None  # the runner's form of `mask`, remade when it changes
        self.index = 0  # the next cache position to write
        self.rows: list[_Row | None] = [None] * self.size

    # --- rows -------------------------------------------------------------
    @classmethod
    def start(cls, runner: Runner, requests: Sequence[Request], **options) -> tuple[Batch, list[Event]]:
        """Prefills all `requests` together, left-padded; returns the batch and the first events.

        `options` are `prefill`'s.
        """
        batch, logits = cls.prefill(runner, requests, **options)
        events = []
        for row, state in enumerate(batch.rows):
            if state is not None:
                events += state.accept(row, state.pick(logits[row]))
        return batch, events

    @classmethod
    def prefill(
        cls,
        runner: Runner,
        requests: Sequence[Request],
        pad_id: int = 0,
        detokenize: Detokenize | None = None,
        context_length: int | None = None,
        rows: int | None = None,
        length: int | None = None,
        reserve: int = 0,
    ) -> tuple[Batch, np.ndarray]:
        """Runs the prompts through the model; returns the batch and each row's next-token logits.

        `rows` and `length` ask for room beyond the requests: free rows and
        cache positions for requests that join later. `reserve` places the
        prompts to end at that position at least (the columns before them
        stay masked), so a later prompt of up to `reserve` tokens can join
        at once instead of waiting for decoding to get that far.
        """
        if not requests:
            raise GenerationArgumentError("there is nothing to generate: no prompts were given.")
        for i, request in enumerate(requests):
            request.check(runner.vocab_size, "prompt" if len(requests) == 1 else f"prompt[{i}]")
        longest = max(len(r.prompt) for r in requests)
        budget = max(r.max_new_tokens for r in requests)
        _check_context(longest, budget, context_length)
        prompt_len = prompt_bucket(longest)
        end = max(prompt_len, int(reserve))
        # Room for a greedy chunk that runs past the last token asked for.
        length = cache_bucket(max(end + budget + max(runner.chunk, 1), length or 0))
        batch = cls(runner, max(len(requests), rows or 0), length, pad_id, detokenize)
        tokens = np.full((batch.size, prompt_len), pad_id, dtype=np.int32)
        for row, request in enumerate(requests):
            tokens[row, prompt_len - len(request.prompt) :] = request.prompt
            batch._place(row, request, end - len(request.prompt))
        logits, batch.cache = runner.forward(tokens, batch._runner_mask(), batch.cache, end - prompt_len)
        batch.index = end
        return batch, logits

    def free_rows(self) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r is None or r.finish_reason is not None]

    def fits(self, request: Request) -> bool:
        """Whether `request`'s (bucketed) prompt fits before the current position, and its budget after it."""
        room = self.length - self.index - max(self.runner.chunk, 1)
        padded = prompt_bucket(len(request.prompt))
        return padded <= self.index and request.max_new_tokens <= room

    def can_join(self, request: Request) -> bool:
        """Whether `request` can join now: a free row, and it `fits`."""
        return bool(self.free_rows()) and self.fits(request)

    def join(self, request: Request) -> tuple[int, list[Event]]:
        """Adds a row whose prompt ends at the current position; returns its row and first events."""
        rows, events = self.join_all([request])
        return rows[0], events

    def join_all(self, requests: Sequence[Request], width: int = 0) -> tuple[list[int], list[Event]]:
        """Adds a row per request, each prompt ending at the current position; returns the rows and events.

        The prompts are prefilled together, left-padded to one bucket (or to
        `width`, when that is wider and fits before the position), in a cache
        of this batch's length, and then copied into their rows: requests
        that arrive together pay for one pass over the weights, not one each.
        The prefill attends over the whole cache (`Runner.forward`'s
        `whole`), so its compiled shape does not depend on the position.
        """
        for request in requests:
            request.check(self.runner.vocab_size)
        free = self.free_rows()
        for request in requests:
            if len(requests) > len(free) or not self.fits(request):
                raise GenerationArgumentError(
                    f"the request cannot join this batch now (free rows: {len(free)} for "
                    f"{len(requests)} requests, prompt {len(request.prompt)} tokens before position "
                    f"{self.index}, room for {self.length - self.index} more)."
                )
        rows = free[: len(requests)]
        padded = max(prompt_bucket(len(r.prompt)) for r in requests)
        if padded < width <= self.index:
            padded = width
        # A batch with no active rows, of the size these requests round up to, takes them in its own
        # cache: no second cache to allocate and copy from.
        size = _slots(self.runner, bucket(len(requests), 1))
        together = self if not self.active and self.size == size else None
        if together is None:
            together = Batch(self.runner, size, self.length, self.pad_id, self.detokenize)
        tokens = np.full((together.size, padded), self.pad_id, dtype=np.int32)
        together.mask[:], together._mask = 0, None
        for i, request in enumerate(requests):
            tokens[i, padded - len(request.prompt) :] = request.prompt
            together.mask[i, self.index - len(request.prompt) :] = 1
        logits, together.cache = self.runner.forward(
            tokens, together._runner_mask(), together.cache, self.index - padded, whole=True
        )
        if together is not self:
            self.cache = self.runner.copy_rows(self.cache, rows, together.cache, list(range(len(requests))))
        events: list[Event] = []
        for i, (row, request) in enumerate(zip(rows, requests, strict=True)):
            state = self._place(row, request, self.index - len(request.prompt))
            events += state.accept(row, state.pick(logits[i]))
        return rows, events

    def resize(self, rows: int) -> dict[int, int]:
        """Moves the active rows into a cache of `rows` slots; returns {old row: new row}.

        Continuous batching grows a batch when requests arrive and shrinks it
        when they end, so a lone request does not pay for idle rows. Each
        active row's cache is copied whole; nothing is recomputed.
        """
        active = self.active
        size = _slots(self.runner, max(rows, len(active), 1))
        cache = self.runner.select_rows(self.cache, active, size)
        mask = np.zeros((size, self.length), dtype=np.int32)
        moved = {}
        for new, old in enumerate(active):
            mask[new] = self.mask[old]
            moved[old] = new
        self.rows = [self.rows[old] for old in active] + [None] * (size - len(active))
        self.size, self.cache, self.mask, self._mask = size, cache, mask, None
        return moved

    def lengthen(self, length: int) -> None:
        """Gives every row `length` cache positions, keeping what the cache holds."""
        if length <= self.length:
            return
        mask = np.zeros((self.size, length), dtype=np.int32)
        mask[:, : self.length] = self.mask
        mask[:, self.length :] = self.mask[:, -1:]  # a row's mask is 1 from its start on
        self.cache = self.runner.lengthen(self.cache, length)
        self.length, self.mask, self._mask = length, mask, None

    def leave(self, row: int) -> None:
        """Ends a row now (a cancelled request); its slot is free for `join`."""
        state = self.rows[row]
        if state is not None and state.finish_reason is None:
            state.finish_reason = "cancelled"
            state.pending = None

    def _place(self, row: int, request: Request, start: int) -> _Row:
        state = _Row(request, start, self.detokenize, self.runner.vocab_size)
        self.rows[row] = state
        self.mask[row] = 0
        self.mask[row, start:] = 1  # the prompt and every position after it
        self._mask = None
        return state

    def _runner_mask(self):
        if self._mask is None:
            self._mask = self.runner.prepare_mask(self.mask)
        return self._mask

    # --- decoding -----------------------------------------------------------
    @property
    def active(self) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r is not None and r.finish_reason is None]

    @property
    def done(self) -> bool:
        return not self.active

    def step(self) -> list[Event]:
        """Advances every active row by one token, or by a greedy chunk; returns the events."""
        active = self.active
        if not active:
            return []
        feed = np.full((self.size, 1), self.pad_id, dtype=np.int32)
        for row in active:
            feed[row, 0] = self.rows[row].pending
        chunk = self.runner.chunk
        if self.index + 1 > self.length:
            return self._out_of_room(active)
        events: list[Event] = []
        if chunk and all(self.rows[r].plain_greedy for r in active) and self.index + chunk <= self.length:
            picks, self.cache = self.runner.greedy_chunk(feed, self._runner_mask(), self.cache, self.index)
            self.index += chunk
            for row in active:
                state = self.rows[row]
                for token in picks[row].tolist():
                    events += state.accept(row, int(token))
                    if state.finish_reason is not None:
                        break
            return events
        logits, self.cache = self.runner.forward(feed, self._runner_mask(), self.cache, self.index)
        self.index += 1
        for row in active:
            state = self.rows[row]
            events += state.accept(row, state.pick(logits[row]))
        return events

    def _out_of_room(self, active: list[int]) -> list[Event]:
        events = []
        for row in active:
            state = self.rows[row]
            state.finish_reason, state.pending = "length", None
            events.append(Event(row, None, state.collector.finish(), "length"))
        return events

    def ids(self, row: int) -> list[int]:
        """The tokens row `row` generated so far (stop tokens excluded)."""
        return list(self.rows[row].ids)

    def text(self, row: int) -> str:
        return self.rows[row].collector.text


def _check_context(prompt: int, budget: int, context_length: int | None) -> None:
    if context_length is not None and prompt + budget > context_length:
        raise GenerationArgumentError(
            f"The prompt ({prompt} tokens) plus max_new_tokens ({budget}) "
            f"exceeds the model's context of {context_length} tokens."
        )


class KeptCache:
    """One row's KV cache, kept from one generation to the next: chat prefix reuse.

    A new prompt that begins with tokens the cache already holds (the
    conversation so far, the last reply included) prefills only the rest, so
    the time to the first token of a chat reply follows the new message, not
    the whole history. The rest is fed at the positions that follow, in one
    call; for a runner that compiles each shape it is padded on the right to
    a power-of-two width (37 tokens as 64), so that the compiled shapes stay
    few. The padding lands past the real tokens, where causality hides it
    and the next steps overwrite it; no padding overwrites kept positions.
    When the reply would not fit, the cache is lengthened (copied into one
    with room for the conversation to double, capped by the context), not
    prefilled again. A prompt that shares no prefix is prefilled whole into
    a new cache.

    Args:
        runner, pad_id, detokenize, context_length: as for `decode`.

    Attributes:
        ids: the tokens whose keys and values the cache holds, in order.
        reused: how many tokens of the last prompt were not prefilled again.
    """

    def __init__(
        self,
        runner: Runner,
        pad_id: int = 0,
        detokenize: Detokenize | None = None,
        context_length: int | None = None,
    ):
        self.runner = runner
        self.pad_id = pad_id
        self.detokenize = detokenize
        self.context_length = context_length
        self.ids: list[int] = []
        self.reused = 0
        self._batch: Batch | None = None

    def reset(self) -> None:
        self._batch, self.ids, self.reused = None, [], 0

    def decode(self, request: Request) -> Iterator[Event]:
        """Generates `request` on row 0, reusing what the cache holds; yields its events."""
        request.check(self.runner.vocab_size)
        _check_context(len(request.prompt), request.max_new_tokens, self.context_length)
        try:
            batch, events = self._start(request)
        except BaseException:
            self.reset()
            raise
        self.ids = []  # until this generation ends, nothing kept is trusted
        state = batch.rows[0]
        try:
            yield from events
            while not batch.done:
                yield from batch.step()
        except GeneratorExit:
            pass  # closed early: what was fed so far is still valid
        except BaseException:
            self.reset()
            raise
        # A token still pending was picked but never fed.
        fed = state.fed if state.pending is None else state.fed[:-1]
        self.ids = list(request.prompt) + fed

    def _start(self, request: Request) -> tuple[Batch, list[Event]]:
        prompt = [int(t) for t in request.prompt]
        batch, common = self._batch, 0
        # At least the prompt's last token is fed again: its logits pick the first token.
        limit = min(len(self.ids), len(prompt) - 1)
        while common < limit and self.ids[common] == prompt[common]:
            common += 1
        if batch is not None and common:
            start, chunk = batch.rows[0].start, max(self.runner.chunk, 1)
            rest = prompt[common:]
            # A compiling runner gets the rest padded on the right to a power-of-two width: few shapes, one call.
            width = bucket(len(rest), 1) if self.runner.compiles else len(rest)
            needed = start + common + max(width, len(rest) + request.max_new_tokens + chunk)
            if needed > batch.length:  # room to double, but not past the context
                grown = 2 * needed
                if self.context_length is not None:
                    grown = max(needed, min(grown, start + self.context_length + chunk))
                batch.lengthen(cache_bucket(grown))
            index = start + common
            state = batch._place(0, request, start)
            tokens = np.full((batch.size, width), self.pad_id, dtype=np.int32)
            tokens[0, : len(rest)] = rest
            logits, batch.cache = self.runner.forward_at(
                tokens, batch._runner_mask(), batch.cache, index, len(rest) - 1
            )
            batch.index = index + len(rest)
            self.reused = common
            return batch, state.accept(0, state.pick(logits[0]))
        batch, events = Batch.start(
            self.runner,
            [request],
            pad_id=self.pad_id,
            detokenize=self.detokenize,
            context_length=self.context_length,
        )
        self._batch, self.reused = batch, 0
        return batch, events


def decode(
    runner: Runner,
    requests: Sequence[Request],
    pad_id: int = 0,
    detokenize: Detokenize | None = None,
    context_length: int | None = None,
) -> Iterator[Event]:
    """Generates every request together; yields each row's events as tokens are decoded.

    Closing the iterator early stops decoding.
    """
    batch, events = Batch.start(
        runner, requests, pad_id=pad_id, detokenize=detokenize, context_length=context_length
    )
    yield from events
    while not batch.done:
        yield from batch.step()


def next_token_logits(runner: Runner, prompt: Sequence[int]) -> np.ndarray:
    """The float32 logits after `prompt`, from the same bucketed prefill generation runs."""
    _, logits = Batch.prefill(runner, [Request(list(prompt), 1)])
    return logits[0]


def generate_ids(
    runner: Runner,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: SamplingParams | None = None,
    stop_ids: Sequence[int] = (),
    pad_id: int = 0,
    context_length: int | None = None,
) -> list[list[int]]:
    """The generated token ids of each prompt, stop tokens excluded.

    Example:

    >>> generate_ids(lm.runner, [[2, 651, 6037]], max_new_tokens=4)  # doctest: +SKIP
    [[576, 6081, 603, 7127]]
    """
    sampling = sampling or SamplingParams()
    stops = frozenset(int(i) for i in stop_ids)
    requests = [Request(list(p), max_new_tokens, sampling, stops, stream=i) for i, p in enumerate(prompts)]
    out: list[list[int]] = [[] for _ in requests]
    for event in decode(runner, requests, pad_id, None, context_length):
        if event.token is not None:
            out[event.row].append(event.token)
    return out
