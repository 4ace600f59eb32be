"""Keeps third-party log lines away from users, unless they ask for them.

TensorFlow (which keras-hub imports on every backend), XLA and
tensorflow-text's SentencePiece op write INFO lines and a CUDA probe error
straight to file descriptor 2 from C++. absl prints some of them before it is
initialised, so `TF_CPP_MIN_LOG_LEVEL` cannot hide them all. Python loggers
(absl, JAX's platform probe) add more.

`quiet_native_logs()` wraps the few steps that print them: importing keras
and keras_hub, and building KerasHub's tokenizer and model. For its
duration, fd 2 points at a temporary file, while Python's `sys.stderr` keeps
the real stderr, so our own progress lines and errors still show. What was
captured is printed if the step fails. `GEMMA_KERAS_VERBOSE=1` (`--verbose`
on the command line) turns all of this off.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator

from gemma_keras.checks import env_flag

VERBOSE_ENV = "GEMMA_KERAS_VERBOSE"
# Python loggers that report start-up facts (no GPU found, and so on).
_NOISY_LOGGERS = ("absl", "jax._src.xla_bridge", "tensorflow", "h5py._conv")
_lock = threading.RLock()
_active = False


def verbose() -> bool:
    return env_flag(VERBOSE_ENV)


def quiet_python_loggers() -> None:
    """Raises the level of the start-up loggers of TensorFlow, JAX and absl to ERROR."""
    if verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Keras' own torch code (the quantized embedding's output projection) calls `x.T` on a
    # 3-d tensor; torch warns about it once, and a user cannot act on it.
    warnings.filterwarnings("ignore", message=r"The use of `x\.T` on tensors", category=UserWarning)


def _stderr_is_fd2() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


@contextlib.contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Sends what C++ libraries write to fd 2 into a temporary file while the block runs.

    Python warnings raised meanwhile (tqdm's notebook probe, protobuf's
    version notes) are dropped too: in a notebook, fd 2 is not the page,
    but the warnings are.
    """
    quiet_python_loggers()
    with _lock:
        if verbose() or _active:
            yield
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _fd2_to_a_file():
                yield


@contextlib.contextmanager
def _fd2_to_a_file() -> Iterator[None]:
    global _active
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all (a daemon): nothing to protect
        yield
        return
    capture = tempfile.TemporaryFile()
    old_stderr = sys.stderr
    swap = _stderr_is_fd2()
    try:
        if swap:
            sys.stderr.flush()
        os.dup2(capture.fileno(), 2)
        if swap:
            sys.stderr = io.TextIOWrapper(
                os.fdopen(os.dup(saved), "wb", buffering=0), write_through=True, errors="backslashreplace"
            )
        _active = True
        yield
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (`Interrupted`): not a failure the logs explain
        _restore(saved, old_stderr, swap)
        raise
    except BaseException:
        _restore(saved, old_stderr, swap)
        capture.seek(0)
        os.write(saved, capture.read()[-20000:])  # the captured lines may explain the failure
        raise
    else:
        _restore(saved, old_stderr, swap)
    finally:
        _active = False
        os.close(saved)
        capture.close()


def _restore(saved: int, old_stderr, swapped: bool) -> None:
    if swapped and sys.stderr is not old_stderr:
        # Not closed: a thread (a progress spinner) may still hold it; it is
        # closed when the last reference goes.
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        sys.stderr = old_stderr
    os.dup2(saved, 2)
