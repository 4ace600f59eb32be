"""The serving engine: continuous batching over `decode.Batch`, in one thread.

Requests arrive from the web server's event loop at any time. The engine's
thread takes them between decode steps: a request joins a running batch
when its prompt fits before the batch's position and its budget fits after
it (a batch starts with `reserve` columns before decoding, so most prompts
fit at once); otherwise it starts a new batch. Requests taken in the same
round are prefilled together, one pass over the weights per batch they
join. Rows that end or whose client went away leave at once, so a long
request never holds a short one back. A batch grows (by powers of two) as
rows join and shrinks as they leave, so a lone request does not pay for
idle rows.

Batches keep to the shapes `warm_up` compiles: one cache length
(`min_length`) for every batch whose requests fit in it, prompts padded to
one of two widths, and prefills that attend over the whole cache. A server
compiles them before it says ready, so that a request within them never
stops the batch for a compile.

At most `max_batch` rows decode at once; up to `max_queue` more wait, in
arrival order, and beyond that `submit` raises `QueueFull` (HTTP 429).

Results go back through each job's `deliver` callback, called from the
engine thread with a `decode.Event` or, if the model failed, an exception.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gemma_keras.buckets import bucket
from gemma_keras.generation.decode import Batch, Event, Request, cache_bucket, prompt_bucket

# Prompt columns kept free before decoding starts: a prompt of up to this many
# tokens can join a running batch at once.
DEFAULT_RESERVE = 128
# Prompts up to this many tokens are padded to it, and longer ones up to `reserve` to that: two prefill
# widths per batch size, which the warm-up compiles. A 16-token prompt padded to 32 took 166-215 ms
# against 164-179 ms on the 270M (JAX, one row); padding it to 128 took 277-297 ms.
SHORT_PROMPT = 32


# Admission rounds before a decode step: each takes the requests that arrived during the last one's
# prefill (they are usually sent together), bounded so that running rows keep decoding.
ADMIT_ROUNDS = 3


class QueueFull(Exception):
    """The wait queue is full; try again after `retry_after` seconds."""

    def __init__(self, waiting: int, retry_after: int = 1):
        super().__init__(f"the server is busy: {waiting} requests are waiting already.")
        self.retry_after = retry_after


class EngineStopped(Exception):
    """The engine stopped before the request ran."""


@dataclass(eq=False)
class Job:
    """One row of generation and where its events go.

    `deliver` is called from the engine thread, once per event, with a
    `decode.Event`, or with an exception when the job fails; the event with
    a `finish_reason` (or the exception) is the last.
    """

    request: Request
    deliver: Callable[[Event | BaseException], None]
    submitted: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    tokens: int = 0
    cancelled: bool = False
    finished: bool = False


class _Running:
    def __init__(self, batch: Batch, jobs: dict[int, Job]):
        self.batch = batch
        self.jobs = jobs


class Engine:
    """Continuous batching for one model.

    Args:
        runner, pad_id, detokenize, context_length: as `decode.Batch` takes them.
        max_batch: rows decoding at once, over all batches.
        max_queue: requests waiting beyond those.
        reserve: prompt columns a new batch keeps before decoding.
        min_length: the cache length of every batch whose requests fit in it
            (longer requests get a longer cache). The warm-up compiles for it.
        on_step: called after each decode step with (active rows, waiting requests).
        on_compile: called with (new compiled shapes, seconds, batch shapes) when
            serving requests compiled something the warm-up did not.
    """

    def __init__(
        self,
        runner,
        pad_id: int,
        detokenize: Callable[[list[int]], str],
        context_length: int | None,
        max_batch: int = 8,
        max_queue: int = 64,
        reserve: int = DEFAULT_RESERVE,
        min_length: int = 512,
        on_step: Callable[[int, int], None] | None = None,
        on_compile: Callable[[int, float, str], None] | None = None,
    ):
        self.runner = runner
        self.pad_id = pad_id
        self.detokenize = detokenize
        self.context_length = context_length
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.reserve = reserve
        self.min_length = min_length
        self.on_step = on_step or (lambda active, waiting: None)
        self.on_compile = on_compile or (lambda traces, seconds, shapes: None)
        self._waiting: deque[Job] = deque()
        self._running: list[_Running] = []
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    # --- called from any thread ----------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gemma-keras-engine", daemon=True)
        self._thread.start()

    def submit(self, jobs: list[Job]) -> None:
        """Queues jobs (all or none); raises `QueueFull` or `EngineStopped`."""
        with self._wake:
            if self._stop:
                raise EngineStopped("the server is shutting down.")
            if len(self._waiting) + len(jobs) > self.max_queue + max(0, self.max_batch - self.active_rows):
                raise QueueFull(len(self._waiting))
            self._waiting.extend(jobs)
            self._wake.notify()

    def cancel(self, job: Job) -> None:
        """Frees the job's row at the next step (its client went away)."""
        job.cancelled = True
        with self._wake:
            self._wake.notify()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def active_rows(self) -> int:
        return sum(len(r.batch.active) for r in self._running)

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ends the thread; jobs still waiting or running fail with `EngineStopped`."""
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the engine thread ------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stop and not self._waiting and not self._running:
                    self._wake.wait()
                if self._stop:
                    break
            self._drop_cancelled()
            traces, started = self._traces(), time.monotonic()
            # Requests that arrived while the last ones were prefilled are taken before the next step:
            # a step of a greedy chunk would keep them waiting for the whole chunk.
            for _ in range(ADMIT_ROUNDS):
                if not self._admit():
                    break
            for running in list(self._running):
                self._step(running)
            if self._traces() > traces:  # the batches' shapes are described only then: steps are hot
                shapes = ", ".join(f"{r.batch.size} rows x {r.batch.length} positions" for r in self._running)
                self.on_compile(self._traces() - traces, time.monotonic() - started, shapes)
            self._running = [r for r in self._running if r.batch.active]
            self.on_step(self.active_rows, len(self._waiting))
        error = EngineStopped("the server shut down before the request finished.")
        for job in [*self._waiting, *(j for r in self._running for j in r.jobs.values())]:
            self._fail(job, error)

    def _admit(self) -> bool:
        """Takes waiting requests into batches; says whether it took any.

        Requests taken together join together: one prefill per batch they join, not one each.
        """
        fresh: list[Job] = []
        joining: dict[_Running, list[Job]] = {}
        while self._waiting:
            job = self._waiting[0]
            if job.cancelled:
                self._waiting.popleft()
                self._finish(job, Event(-1, None, "", "cancelled"))
                continue
            admitted = len(fresh) + sum(len(jobs) for jobs in joining.values())
            if self.active_rows + admitted >= self.max_batch:
                break
            self._waiting.popleft()
            try:
                job.request.check(self.runner.vocab_size)
            except Exception as exc:  # a bad request ends alone, before it can fail a group
                self._fail(job, exc)
                continue
            running = self._batch_for(job.request)
            if running is None:
                fresh.append(job)
            else:
                joining.setdefault(running, []).append(job)
        for running, jobs in joining.items():
            self._join(running, jobs)
        if fresh:
            self._start(fresh)
        return bool(fresh or joining)

    def _batch_for(self, request: Request) -> _Running | None:
        """The running batch `request` can join (the fullest first), or None."""
        for running in sorted(self._running, key=lambda r: -len(r.batch.active)):
            if running.batch.fits(request):
                return running
        return None

    def _join(self, running: _Running, jobs: list[Job]) -> None:
        batch = running.batch
        if len(batch.free_rows()) < len(jobs):
            self._resize(running, bucket(len(batch.active) + len(jobs), 1))
        requests = [job.request for job in jobs]
        try:
            rows, events = batch.join_all(requests, self._width(requests))
        except Exception as exc:  # a model failure ends these jobs only
            for job in jobs:
                self._fail(job, exc)
            return
        running.jobs.update(zip(rows, jobs, strict=True))
        self._dispatch(running, events)

    def _start(self, jobs: list[Job]) -> None:
        try:
            batch, rows, events = self._new_batch([j.request for j in jobs])
        except Exception as exc:
            for job in jobs:
                self._fail(job, exc)
            return
        running = _Running(batch, dict(zip(rows, jobs, strict=True)))
        self._running.append(running)
        self._dispatch(running, events)

    def _width(self, requests: list[Request]) -> int:
        """The width prompts are padded to: `SHORT_PROMPT` or `reserve` when they fit, else their bucket."""
        longest = max(len(r.prompt) for r in requests)
        fits = [w for w in (SHORT_PROMPT, self.reserve) if longest <= w]
        return max(fits[:1] + [prompt_bucket(longest)])

    def _new_batch(self, requests: list[Request]) -> tuple[Batch, list[int], list[Event]]:
        """A batch whose prompts end at `reserve` (or after the longest), joined as a batch's rows join.

        Its cache is `min_length` long when the requests fit in it, so that
        most batches have the shapes the warm-up compiled. A longer cache
        keeps the batch open to joins for longer (rows join only while there
        is room after the current position); a short context caps it, as no
        row may be longer anyway.
        """
        reserve, length = self.reserve, self.min_length
        budget = max(r.max_new_tokens for r in requests)
        if self.context_length is not None:
            reserve = min(reserve, self.context_length - budget)
            length = min(length, bucket(self.context_length, 128))
        padded, width = prompt_bucket(max(len(r.prompt) for r in requests)), self._width(requests)
        if width > max(reserve, padded):  # a short context leaves no room to pad into
            width = padded
        end = max(reserve, width)
        needed = end + budget + max(self.runner.chunk, 1)  # a greedy chunk may run past the budget
        if needed > length:
            length = cache_bucket(needed)
        batch = Batch(self.runner, bucket(len(requests), 1), length, self.pad_id, self.detokenize)
        batch.index = end
        rows, events = batch.join_all(requests, width)
        return batch, rows, events

    def warm_up(self, rows: int) -> None:
        """Compiles what a batch of `rows` rows runs for requests that fit in `min_length` positions.

        That is: its prefill at both prompt widths, and a greedy chunk and a
        sampled step at every span of the cache a row reaches until the cache
        is full (`KerasRunner._span`). Call it while no request is admitted:
        it runs the model from the calling thread.
        """
        runner, chunk = self.runner, max(self.runner.chunk, 1)
        for width in dict.fromkeys((SHORT_PROMPT, self.reserve)):
            batch, _, _ = self._new_batch([Request([self.pad_id] * width, chunk + 2) for _ in range(rows)])
        feed = np.full((batch.size, 1), self.pad_id, np.int32)
        mask = runner.prepare_mask(np.ones((batch.size, batch.length), np.int32))
        # Spans are powers of two (the whole cache past half of it): one call whose reach ends at each
        # power of two covers every span a row's calls can have.
        cache, reach = batch.cache, bucket(batch.index + chunk, 1)
        while True:
            index = min(reach, batch.length) - chunk
            if runner.chunk:
                _, cache = runner.greedy_chunk(feed, mask, cache, index)
            _, cache = runner.forward(feed, mask, cache, index)
            if not (runner.compiles and runner.spans) or reach >= batch.length:
                break
            reach *= 2

    def _traces(self) -> int:
        return getattr(self.runner, "trace_count", 0) if self.runner.compiles else 0

    def _step(self, running: _Running) -> None:
        if not running.batch.active:
            return
        try:
            events = running.batch.step()
        except Exception as exc:
            for job in running.jobs.values():
                self._fail(job, exc)
            running.jobs.clear()
            for row in running.batch.active:
                running.batch.leave(row)
            return
        self._dispatch(running, events)
        active = len(running.batch.active)
        # Shrink only well below the size, so rows that end and others that join do not
        # copy the cache back and forth.
        if active and bucket(active, 1) * 4 <= running.batch.size or active == 1 < running.batch.size:
            self._resize(running, bucket(active, 1))

    def _resize(self, running: _Running, rows: int) -> None:
        moved = running.batch.resize(rows)
        running.jobs = {moved[row]: job for row, job in running.jobs.items() if row in moved}

    def _drop_cancelled(self) -> None:
        for running in self._running:
            for row, job in list(running.jobs.items()):
                if job.cancelled and not job.finished:
                    running.batch.leave(row)
                    del running.jobs[row]
                    self._finish(job, Event(row, None, "", "cancelled"))

    def _dispatch(self, running: _Running, events: list[Event]) -> None:
        now = time.monotonic()
        for event in events:
            job = running.jobs.get(event.row)
            if job is None:
                continue
            if event.token is not None:
                job.tokens += 1
                if job.first_token is None:
                    job.first_token = now
            if event.finish_reason is not None:
                del running.jobs[event.row]
                self._finish(job, event)
            elif not job.cancelled:
                job.deliver(event)

    def _finish(self, job: Job, event: Event) -> None:
        job.finished = True
        job.deliver(event)

    def _fail(self, job: Job, error: BaseException) -> None:
        if not job.finished:
            job.finished = True
            job.deliver(error)
