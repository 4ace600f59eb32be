"""Progress on stderr while a model loads: a spinner on a terminal, one line per stage otherwise."""

from __future__ import annotations

import sys
import threading
import time


class Spinner:
    """A one-line progress indicator on stderr while a model loads."""

    frames = "|/-\\"

    def __init__(self, stream=None, enabled: bool | None = None):
        self._stream = stream
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.stage = "starting"
        self.fraction = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_printed = ""
        self.started = time.monotonic()

    @property
    def stream(self):
        # Looked up on each write: while native logs are silenced (backend.quiet),
        # `sys.stderr` is the terminal and fd 2 is not.
        return self._stream or sys.stderr

    def update(self, stage: str, fraction: float) -> None:
        self.stage, self.fraction = stage, fraction
        if not self.enabled and stage != self._last_printed and stage != "done":
            # Not a terminal: print each stage once, so logs stay readable.
            self._last_printed = stage
            print(f"[gemma-keras] {stage}...", file=self.stream, flush=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(0.1):
            elapsed = time.monotonic() - self.started
            line = f"\r{self.frames[i % 4]} {self.stage} {self.fraction:4.0%} ({elapsed:.0f}s)"
            self.stream.write(line.ljust(70))
            self.stream.flush()
            i += 1

    def __enter__(self) -> Spinner:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.stream.write("\r" + " " * 70 + "\r")
            self.stream.flush()
