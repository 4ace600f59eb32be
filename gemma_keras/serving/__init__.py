"""Serving: an OpenAI-compatible HTTP server with continuous batching.

- `engine.py`: continuous batching over `generation.decode.Batch`, in one thread;
- `protocol.py`: OpenAI request checks and response shapes;
- `tools.py`: tool calling in Gemma's prompt format;
- `app.py`: the ASGI routes; `server.py`: uvicorn, warm-up, readiness, graceful stop;
- `metrics.py`: Prometheus metrics.

Needs the `serve` extra: `pip install -e '.[serve]'`.

Example:

>>> import gemma_keras as gk  # doctest: +SKIP
>>> gk.serve(gk.load(), port=8000)  # doctest: +SKIP
"""

from gemma_keras.errors import MissingExtraError

try:
    import prometheus_client  # noqa: F401
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:
    raise MissingExtraError(
        f"serving needs the 'serve' extra, and {exc.name} is not installed: "
        "pip install 'gemma-keras[serve]' (from a clone: pip install -e '.[serve]')."
    ) from None
