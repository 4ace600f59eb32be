"""Token ids to text, piece by piece, with stop strings.

`TextCollector` turns one row's generated ids into text as they arrive. It
holds back what is not yet safe to show:

- a trailing U+FFFD, which means a multi-byte character split over byte
  fallback tokens is not complete yet;
- a tail that could be the start of a stop string.

`generate` and `stream` both go through it, so the pieces `stream` yields
join to exactly the string `generate` returns.

Example:

>>> c = TextCollector(decode=lambda ids: "".join(chr(i) for i in ids), stop=["\\n\\n"])
>>> c.feed(ord("a")), c.feed(ord("\\n")), c.feed(ord("\\n")), c.stopped
('a', '', '', True)
>>> c.text
'a'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from gemma_keras import checks
from gemma_keras.errors import GenerationArgumentError

REPLACEMENT = "\ufffd"


def check_stop_strings(stop: str | Iterable[str] | None) -> tuple[str, ...]:
    """`stop` as a tuple of non-empty strings (any iterable of them), or `GenerationArgumentError`."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, (bytes, Mapping)) or not isinstance(stop, Iterable):
        raise GenerationArgumentError(f"stop must be a string or a list of strings, got {stop!r}.")
    stop = tuple(stop)
    if not all(isinstance(s, str) for s in stop):
        raise GenerationArgumentError(f"stop must be a string or a list of strings, got {stop!r}.")
    if any(s == "" for s in stop):
        raise GenerationArgumentError("stop strings must not be empty.")
    for i, s in enumerate(stop):
        checks.text(f"stop[{i}]", s, GenerationArgumentError)
    return stop


class TextCollector:
    """Accumulates one sequence's tokens and releases text that is final.

    Decoding is incremental: each token decodes only a short window of
    recent ids (the last token already shown, for SentencePiece's context,
    and the ids since), so a long generation costs time linear in its
    length, not quadratic.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()):
        self._decode = decode
        self._stop = tuple(stop)
        self.ids: list[int] = []
        self.emitted = 0  # characters of `text` already released
        self.text = ""  # the text so far, cut before any stop string
        self.stopped = False
        self._decoded = ""  # every complete character decoded so far
        # ids[_prefix:_read] decoded to `_window_head`, which is already in `_decoded`.
        self._prefix = 0
        self._read = 0
        self._window_head = ""

    def _held_back(self, text: str) -> int:
        """How many trailing characters may still change or start a stop string."""
        hold = 0
        if text.endswith(REPLACEMENT):
            hold = len(text) - len(text.rstrip(REPLACEMENT))
        for s in self._stop:
            for k in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:k]):
                    hold = k
                    break
        return hold

    def _decode_new(self) -> str:
        """The text of every id so far; complete characters are decoded only once."""
        window = self._decode(self.ids[self._prefix :])
        if window.startswith(self._window_head):
            new = window[len(self._window_head) :]
        else:  # a tokenizer that rewrote the head: fall back to a full decode
            new = self._decode(self.ids)[len(self._decoded) :]
        if new.endswith(REPLACEMENT):
            # A character whose bytes have not all arrived: keep its ids in the
            # window, and commit nothing until they have.
            return self._decoded + new
        self._decoded += new
        self._prefix, self._read = self._read, len(self.ids)
        self._window_head = self._decode(self.ids[self._prefix : self._read])
        return self._decoded

    def feed(self, token: int) -> str:
        """Adds a token; returns the newly final text (possibly empty)."""
        if self.stopped:
            return ""
        self.ids.append(int(token))
        text = self._decode_new()
        cut = min(
            (i for i in (text.find(s, max(self.emitted - len(s), 0)) for s in self._stop) if i >= 0),
            default=-1,
        )
        if cut >= 0:
            self.stopped = True
            self.text = text[:cut]
        else:
            self.text = text
            text = text[: len(text) - self._held_back(text)]
            if len(text) < self.emitted:  # never take back what was shown
                text = self.text[: self.emitted]
            piece, self.emitted = text[self.emitted :], max(self.emitted, len(text))
            return piece
        piece = self.text[self.emitted :]
        self.emitted = len(self.text)
        return piece

    def finish(self) -> str:
        """Releases whatever was held back once generation ends."""
        piece = self.text[self.emitted :]
        self.emitted = len(self.text)
        return piece
