"""Stop requests from SIGINT and SIGTERM, honoured at safe points.

Python's own SIGINT handler raises `KeyboardInterrupt` wherever the main
thread happens to be. Inside a garbage-collection callback (JAX runs one,
`_xla_gc_callback`) that exception is printed as "Exception ignored" and
lost, and the work goes on as if nothing was asked. Raised in the middle of
a checkpoint or a rename, it could also stop a write half way.

So long-running work (a fine-tuning run, a GGUF conversion, an export) runs
inside `deferred()`: in the main thread, SIGINT and SIGTERM handlers that
only record the request. The work calls `check()` at its safe points (after
an optimizer step, between layers, before publishing a file), which raises
`Interrupted`, a `KeyboardInterrupt` that carries the signal number. A
second signal while one is pending is not deferred: the signal's default
action ends the process at once (a forced quit; files written atomically
stay whole). On leaving `deferred()` the previous handlers come back, and a
request nobody checked is delivered to them.

`raising()` is for the command line, around a whole command: both signals
raise `Interrupted` at once (SIGTERM as SIGINT does), and the request is
also remembered, so one raised where Python drops it is still honoured at
the next `check()`, or at the latest when the command ends.

Example:

>>> from gemma_keras import interrupts
>>> with interrupts.deferred():
...     for step in range(3):
...         pass  # one unit of work
...         interrupts.check()
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator

from gemma_keras.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_pending: int | None = None
_depth = 0  # nesting of `deferred()` in the main thread


def requested() -> int | None:
    """The signal number of a stop request not yet honoured, or None."""
    return _pending


def clear() -> None:
    """Forgets a pending request (after its `KeyboardInterrupt` was handled)."""
    global _pending
    _pending = None


def check(message: Callable[[int], str] | str | None = None, **details) -> None:
    """Raises `Interrupted` if a stop was requested; call it where stopping is safe.

    `message` (a string, or a function of the signal number) says what was
    stopped and how to go on; `details` become attributes of the exception
    (`step`, `checkpoint`, ...).
    """
    signum = _pending
    if signum is None:
        return
    clear()
    text = message(signum) if callable(message) else message
    raise Interrupted(signum, text, **details)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _install(handler) -> dict[int, object]:
    """Sets `handler` for each signal not ignored or set outside Python; returns the previous ones."""
    previous = {}
    for signum in SIGNALS:
        old = signal.getsignal(signum)
        if old is None or old == signal.SIG_IGN:
            continue  # a handler set from C, or a signal the parent asked us to ignore
        signal.signal(signum, handler)
        previous[signum] = old
    return previous


def _restore(previous: dict[int, object]) -> None:
    for signum, old in previous.items():
        signal.signal(signum, old)


def _record(signum: int, frame) -> None:
    global _pending
    if _pending is not None:
        # Asked twice: quit now, the way the signal would have without us.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _pending = signum


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """SIGINT and SIGTERM only record a stop request here; `check()` raises it.

    Outside the main thread (where Python cannot set handlers) this does
    nothing. Nested uses share the outermost one's handlers.
    """
    global _depth
    if not _in_main_thread():
        yield
        return
    if _depth:
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    previous = _install(_record)
    _depth = 1
    try:
        yield
    finally:
        _depth = 0
        _restore(previous)
        signum = _pending
        if signum is not None and signum in previous:
            clear()
            signal.raise_signal(signum)  # nobody checked: the previous handler gets it now


def _record_and_raise(signum: int, frame) -> None:
    global _pending
    _pending = signum
    raise Interrupted(signum)


@contextlib.contextmanager
def raising() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` at once, and are remembered for the next `check()`.

    For a whole command-line command. A request whose exception was dropped
    (raised inside a garbage-collection callback) and never checked is
    raised on the way out, so the command still ends as interrupted.
    """
    if not _in_main_thread():
        yield
        return
    previous = _install(_record_and_raise)
    try:
        yield
    except BaseException:
        clear()  # the interrupt, or another error, is on its way out already
        raise
    finally:
        _restore(previous)
    signum = _pending
    if signum is not None:
        clear()
        raise Interrupted(signum)
