"""Running the app under uvicorn: loading in the background, warm-up, readiness and a graceful stop.

The server listens at once, so a load balancer or Kubernetes sees a live
process whose `/health` says `loading` (503) while the model loads and
compiles; it says `ready` (200) once a warm-up has compiled the batch
shapes decoding uses. On SIGTERM it stops accepting requests, `/health`
says `draining`, the requests in flight finish (for at most `grace`
seconds) and `serve` returns 0.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from gemma_keras.buckets import round_up
from gemma_keras.serving.app import ServerState, make_app
from gemma_keras.serving.engine import DEFAULT_RESERVE, Engine

# The serving cache length is a multiple of this: 768 positions hold the default request (656).
CACHE_MULTIPLE = 128


def model_name(lm) -> str:
    """The id `/v1/models` lists: the source's file or preset name."""
    source = str(lm.info.source)
    if source.startswith("embedded:"):
        return source.split(":", 1)[1]
    name = Path(source.rstrip("/")).name
    return name.removesuffix(".gguf") or source


def warm_up(engine: Engine, rows: int) -> None:
    """Compiles what serving runs before `/health` says ready: `Engine.warm_up` for each batch size the
    engine uses for up to `rows` rows (powers of two: 6 rows decode as 8). After it, requests whose
    prompt and budget fit in the engine's `min_length` compile nothing; others do, and `on_compile`
    reports it."""
    size = 1
    while True:
        engine.warm_up(size)
        if size >= rows:
            break
        size *= 2


def _log(message: str) -> None:
    print(f"gemma-keras serve: {message}", file=sys.stderr, flush=True)


class _Uvicorn(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame) -> None:
        self.state.draining = True  # /health says so, and new requests get 503
        super().handle_exit(sig, frame)


class Server:
    """A server for one model; `run()` blocks, `start()` runs it in a thread (for tests and notebooks).

    Args:
        model: a loaded `Gemma`, or a function that loads one (called in a
            background thread while `/health` says `loading`).
        host, port: where to listen (port 0: any free port; see `port` after start).
        max_batch: rows decoding at once.
        max_queue: requests waiting beyond those; more get 429.
        api_key: when set, `/v1/*` needs `Authorization: Bearer <api_key>`.
        grace: seconds requests in flight get to finish after SIGTERM.
        max_body_bytes: larger request bodies get 413.
        default_max_tokens: a chat reply's budget when the request sets none.
        name: the model id clients send (default: from the model's source).
    """

    def __init__(
        self,
        model: Any,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        max_batch: int = 8,
        max_queue: int = 64,
        api_key: str | None = None,
        grace: float = 30.0,
        max_body_bytes: int = 1 << 20,
        default_max_tokens: int = 512,
        name: str | None = None,
        log_level: str = "warning",
    ):
        self.loader: Callable[[], Any] = (
            model if callable(model) and not hasattr(model, "runner") else (lambda: model)
        )
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.name = name
        self.state = ServerState(
            model_name=name or "",
            api_key=api_key,
            max_body_bytes=max_body_bytes,
            default_max_tokens=default_max_tokens,
        )
        config = uvicorn.Config(
            make_app(self.state),
            host=host,
            port=port,
            log_level=log_level,
            timeout_graceful_shutdown=grace,
            lifespan="off",
        )
        self.uvicorn = _Uvicorn(config, self.state)
        self._thread: threading.Thread | None = None
        self.load_exception: BaseException | None = None

    @property
    def port(self) -> int:
        for server in getattr(self.uvicorn, "servers", []):
            for sock in server.sockets:
                return sock.getsockname()[1]
        return self.uvicorn.config.port

    @property
    def url(self) -> str:
        return f"http://{self.uvicorn.config.host}:{self.port}"

    def _prepare(self) -> None:
        try:
            started = time.monotonic()
            lm = self.loader()
            self.state.model_name = self.name or model_name(lm)
            # A request that sets no `max_tokens` gets the default; its batch's cache is the one the
            # warm-up compiles for, no longer than that needs: TensorFlow copies a batch's whole cache
            # at each call, and a call past the cache's first half attends over all of it.
            budget = DEFAULT_RESERVE + self.state.default_max_tokens + max(lm.runner.chunk, 1)
            length = round_up(budget, CACHE_MULTIPLE)
            engine = Engine(
                lm.runner,
                lm.tokenizer.pad_id,
                lm.tokenizer.decode,
                lm.info.context_length,
                max_batch=self.max_batch,
                max_queue=self.max_queue,
                min_length=length,
                on_step=self.state.metrics.engine_state,
                on_compile=self._compiled_late,
            )
            warm_up(engine, self.max_batch)
            engine.start()
            self.state.lm, self.state.engine = lm, engine
            self.state.ready = True
            _log(f"ready: {self.state.model_name} in {time.monotonic() - started:.1f} s")
        except BaseException as exc:  # noqa: BLE001 - /health reports it, then `run` raises it
            self.state.load_error = f"{type(exc).__name__}: {exc}"
            self.load_exception = exc
            self.uvicorn.should_exit = True  # an orchestrator restarts or reports a process that ends

    def _compiled_late(self, traces: int, seconds: float, shapes: str) -> None:
        self.state.metrics.late_compiles.inc(traces)
        _log(
            f"compiled {traces} new shape(s) while serving, in {seconds:.1f} s ({shapes}): a request "
            f"longer than the warmed {self.state.engine.min_length} positions, or a prompt over "
            f"{DEFAULT_RESERVE} tokens, compiles at first use (docs/serving.md, Warm-up)."
        )

    def run(self) -> int:
        """Serves until SIGTERM or SIGINT; returns 0 after a graceful stop.

        If the model cannot be loaded, the server stops and the loading error is raised.
        """
        threading.Thread(target=self._prepare, name="gemma-keras-load", daemon=True).start()
        stopped = []
        # uvicorn re-raises the signal it handled once it is done; ours only notes it, so the
        # process exits 0 after a SIGTERM rather than dying of the signal.
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
        try:
            _log(f"listening on http://{self.uvicorn.config.host}:{self.uvicorn.config.port}")
            self.uvicorn.run()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.close()
        if self.load_exception is not None:
            raise self.load_exception
        return 0

    def start(self, timeout: float = 600.0) -> Server:
        """Serves from a thread; returns once the model is ready (or raises why not)."""
        self._thread = threading.Thread(target=self.uvicorn.run, name="gemma-keras-server", daemon=True)
        self._thread.start()
        self._prepare()
        deadline = time.monotonic() + timeout
        while not self.uvicorn.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the HTTP server did not start (port in use?).")
            time.sleep(0.01)
        if self.state.load_error:
            self.stop()
            raise RuntimeError(self.state.load_error)
        return self

    def stop(self) -> None:
        """Stops serving as SIGTERM does, and waits for it."""
        self.state.draining = True
        self.uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join()
        self.close()

    def close(self) -> None:
        if self.state.engine is not None:
            self.state.engine.stop()


def serve(model: Any, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> int:
    """Serves `model` (a `Gemma`, or a function that loads one) over OpenAI's HTTP API until SIGTERM.

    `options` are `Server`'s. Returns 0 after a graceful stop.

    Example:

    >>> gk.serve(lm, port=8000)  # doctest: +SKIP
    """
    return Server(model, host, port, **options).run()
