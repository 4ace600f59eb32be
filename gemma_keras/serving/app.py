"""The ASGI app: OpenAI-compatible routes over one `Engine`.

Routes: `GET /health`, `GET /metrics`, `GET /v1/models`,
`POST /v1/completions`, `POST /v1/chat/completions` (plain, or server-sent
events with `"stream": true`).

Each request is read (up to `max_body_bytes`), checked and planned
(`protocol.py`) before the engine sees it; a refusal is an OpenAI error
object with status 400, 401, 413, 429 or 503. While a request runs, a
watcher waits for its client to go away and then cancels its rows at once,
streamed or not.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gemma_keras.errors import GemmaKerasError
from gemma_keras.generation.decode import Event
from gemma_keras.serving import protocol
from gemma_keras.serving.engine import Engine, EngineStopped, Job, QueueFull
from gemma_keras.serving.errors import APIError
from gemma_keras.serving.metrics import Metrics

_GONE = object()  # the client went away


@dataclass
class ServerState:
    """What the routes share. `lm` and `engine` are set once the model is loaded."""

    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    default_max_tokens: int = 512
    lm: Any = None
    engine: Engine | None = None
    metrics: Metrics = field(default_factory=Metrics)
    ready: bool = False
    draining: bool = False
    load_error: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))


def _error(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _read_json(request: HTTPRequest, limit: int) -> dict:
    declared = request.headers.get("content-length", "")
    too_big = APIError(f"the request body is over {limit} bytes.", status=413, code="request_too_large")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return protocol.parse_body(b"".join(chunks))


def _check_key(state: ServerState, request: HTTPRequest) -> None:
    if state.api_key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), state.api_key.encode()):
        raise APIError(
            "invalid or missing API key: send 'Authorization: Bearer <key>'.",
            status=401,
            code="invalid_api_key",
        )


def _check_ready(state: ServerState) -> None:
    if state.draining:
        raise APIError("the server is shutting down.", status=503, kind="server_error", code="shutting_down")
    if not state.ready:
        reason = state.load_error or "the model is still loading"
        raise APIError(f"not ready: {reason}.", status=503, kind="server_error", code="not_ready")


class _Run:
    """One HTTP request's jobs in the engine, and the queue their events arrive on."""

    def __init__(self, state: ServerState, plan: protocol.Plan, request: HTTPRequest):
        lm = state.lm
        self.state = state
        self.plan = plan
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        constraint = _constraint_factory(lm.tokenizer, plan.schema)
        requests = plan.requests(frozenset(lm.default_stop_ids), constraint)
        self.prompt_tokens = sum(len(p) for p in plan.prompts) * plan.n
        self.jobs = [Job(r, self._deliver(i)) for i, r in enumerate(requests)]
        self.request = request
        self.watcher: asyncio.Task | None = None
        self.gone = False  # the client went away

    def _deliver(self, index: int) -> Callable[[Any], None]:
        def put(item: Any) -> None:
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, item))
            except RuntimeError:  # the server's loop has closed: nobody is waiting any more
                pass

        return put

    def submit(self) -> None:
        try:
            self.state.engine.submit(self.jobs)
        except QueueFull as exc:
            raise APIError(
                str(exc) + " Retry later.",
                status=429,
                kind="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(exc.retry_after)},
            ) from None
        except EngineStopped as exc:
            raise APIError(str(exc), status=503, kind="server_error", code="shutting_down") from None
        self.state.metrics.prompt_tokens.inc(self.prompt_tokens)
        self.watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self.request.receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                self.cancel()
                self.queue.put_nowait((None, _GONE))
                return

    def cancel(self) -> None:
        for job in self.jobs:
            if not job.finished:
                self.state.engine.cancel(job)

    def close(self) -> None:
        self.cancel()
        if self.watcher is not None:
            self.watcher.cancel()

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        """(choice, event) until every choice finished; stops quietly if the client went away."""
        remaining = len(self.jobs)
        while remaining:
            index, item = await self.queue.get()
            if item is _GONE:
                return
            if isinstance(item, BaseException):
                raise item
            if item.finish_reason is not None:
                remaining -= 1
                job = self.jobs[index]
                self.state.metrics.finished(job.submitted, job.first_token, time.monotonic(), job.tokens)
            yield index, item

    @property
    def completion_tokens(self) -> int:
        return sum(job.tokens for job in self.jobs)


def _constraint_factory(tokenizer, schema):
    if schema is None:
        return None
    from gemma_keras.generation.structured import json_constraint

    try:
        json_constraint(tokenizer, schema)  # a bad schema is the client's 400, found before submitting
    except GemmaKerasError as exc:
        raise APIError(str(exc), "response_format") from None
    return lambda: json_constraint(tokenizer, schema)


def _model_error(exc: BaseException) -> APIError:
    return APIError(f"generation failed: {exc}", status=500, kind="server_error", code="generation_failed")


async def _complete(run: _Run) -> Response:
    plan = run.plan
    texts = [""] * len(run.jobs)
    reasons: list[str | None] = [None] * len(run.jobs)
    try:
        async for index, event in run.events():
            texts[index] += event.text
            reasons[index] = event.finish_reason or reasons[index]
    except GemmaKerasError as exc:
        return _error(_model_error(exc))
    finally:
        run.close()
    choices = [protocol.choice_body(plan, i, texts[i], reasons[i]) for i in range(len(texts))]
    return JSONResponse(protocol.response_body(plan, choices, run.prompt_tokens, run.completion_tokens))


class _EventStream:
    """A server-sent-event response that ends the run whenever the response ends."""

    status_code = 200

    def __init__(self, run: _Run):
        self.run = run

    async def __call__(self, scope, receive, send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
            }
        )
        try:
            async for data in self._chunks():
                if self.run.gone:
                    return
                await send(
                    {"type": "http.response.body", "body": b"data: " + data + b"\n\n", "more_body": True}
                )
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        except OSError:
            pass  # the client went away while we wrote
        finally:
            self.run.close()

    async def _chunks(self) -> AsyncIterator[bytes]:
        run, plan = self.run, self.run.plan
        buffered = plan.parses_tools  # a reply may turn out to be a tool call: sent whole at the end
        texts = [""] * len(run.jobs)
        started = [False] * len(run.jobs)

        def chunk(choices: list[dict], usage: dict | None = None) -> bytes:
            return json.dumps(protocol.chunk_body(plan, choices, usage)).encode()

        try:
            async for index, event in run.events():
                texts[index] += event.text
                first = not started[index]
                started[index] = True
                if event.finish_reason is None:
                    if event.text and not buffered:
                        yield chunk([protocol.delta_choice(plan, index, event.text, None, first)])
                    elif first and plan.chat:
                        yield chunk(
                            [protocol.delta_choice(plan, index, None if buffered else "", None, True)]
                        )
                    continue
                if buffered:
                    done = protocol.choice_body(plan, index, texts[index], event.finish_reason)
                    yield chunk([_buffered_delta(plan, index, done, first)])
                else:
                    yield chunk([protocol.delta_choice(plan, index, event.text, event.finish_reason, first)])
        except GemmaKerasError as exc:
            yield json.dumps(_model_error(exc).body()).encode()
            return
        if plan.include_usage:
            yield chunk([], protocol.usage(run.prompt_tokens, run.completion_tokens))


def _buffered_delta(plan: protocol.Plan, index: int, done: dict, first: bool) -> dict:
    message = done["message"]
    delta: dict[str, Any] = {"role": "assistant"} if first else {}
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
    delta["content"] = message.get("content")
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": done["finish_reason"]}


def make_app(state: ServerState) -> Starlette:
    """The Starlette app serving `state`'s model."""

    def endpoint(name: str, handler):
        async def route(request: HTTPRequest) -> Response:
            try:
                if name.startswith("/v1/"):
                    _check_key(state, request)
                response = await handler(request)
            except APIError as exc:
                response = _error(exc)
            state.metrics.requests.labels(name, str(response.status_code)).inc()
            return response

        return route

    async def health(request: HTTPRequest) -> Response:
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if state.load_error:
            return JSONResponse({"status": "failed", "error": state.load_error}, status_code=503)
        if not state.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics(request: HTTPRequest) -> Response:
        if state.engine is not None:
            state.metrics.engine_state(state.engine.active_rows, state.engine.waiting)
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    async def models(request: HTTPRequest) -> Response:
        card = {
            "id": state.model_name,
            "object": "model",
            "created": state.created,
            "owned_by": "gemma-keras",
        }
        return JSONResponse({"object": "list", "data": [card]})

    def generation(chat: bool):
        async def handler(request: HTTPRequest) -> Response:
            _check_ready(state)
            body = await _read_json(request, state.max_body_bytes)
            if chat:
                plan = protocol.chat_plan(body, state.lm, state.model_name, state.default_max_tokens)
            else:
                plan = protocol.completion_plan(body, state.lm, state.model_name)
            run = _Run(state, plan, request)
            run.submit()
            if plan.stream:
                return _EventStream(run)  # type: ignore[return-value]
            return await _complete(run)

        return handler

    routes = [
        Route("/health", endpoint("/health", health), methods=["GET"]),
        Route("/metrics", endpoint("/metrics", metrics), methods=["GET"]),
        Route("/v1/models", endpoint("/v1/models", models), methods=["GET"]),
        Route("/v1/completions", endpoint("/v1/completions", generation(False)), methods=["POST"]),
        Route("/v1/chat/completions", endpoint("/v1/chat/completions", generation(True)), methods=["POST"]),
    ]
    return Starlette(routes=routes)
