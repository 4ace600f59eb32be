"""`Chat`: a multi-turn conversation in the model's chat format.

The format itself (turn markers, roles, the system message) belongs to the
architecture record (`architectures.chat_format`); a `Chat` keeps the
history, has it encoded (markers as control tokens, what is said as plain
text, so a message cannot forge a turn) and streams each reply through the
functions it is given. `Gemma.chat` gives it a `decode.KeptCache`, so each
reply prefills only the new turn; when the conversation and the reply no
longer fit the context, the oldest turns are dropped, with a
`TurnsDroppedWarning`.

Example:

>>> chat = lm.chat(system="Answer briefly.")  # doctest: +SKIP
>>> chat.send("What is the capital of France?")  # doctest: +SKIP
'Paris.'
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

from gemma_keras import checks
from gemma_keras.errors import GenerationArgumentError, TurnsDroppedWarning

# The generation arguments a chat accepts as defaults or per reply.
GENERATE_OPTIONS = frozenset(
    {
        "max_new_tokens",
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "repetition_penalty",
        "seed",
        "stop_token_ids",
        "stop",
    }
)


def check_options(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - GENERATE_OPTIONS)
    if unknown:
        raise GenerationArgumentError(
            f"unknown chat argument(s) {', '.join(map(repr, unknown))}; use any of "
            f"{', '.join(sorted(GENERATE_OPTIONS))}."
        )


class Chat:
    """A multi-turn conversation.

    Get one from `lm.chat(system=...)`. Generation arguments given there
    (`max_new_tokens`, `temperature`, ...) are defaults for every reply.

    Args:
        stream: `stream(prompt_ids, **options)` yielding text pieces, such as
            `Gemma.stream`.
        encode: messages -> prompt ids ending with an open model turn, such
            as `Gemma.encode_messages`.
        system: an optional system message.
        cache: the `decode.KeptCache` that `stream` decodes with, if any; it
            reports `reused_tokens`.
        context_length: the model's context; when the conversation plus
            `max_new_tokens` would pass it, the oldest turns are dropped.
        **defaults: generation arguments for every reply.

    Attributes:
        dropped: the messages dropped so far to fit the context, oldest first.
    """

    def __init__(
        self,
        stream: Callable[..., Iterator[str]],
        encode: Callable[[list[dict[str, str]]], list[int]],
        system: str | None = None,
        cache: Any = None,
        context_length: int | None = None,
        **defaults: Any,
    ):
        if system is not None:
            checks.text("system", system, GenerationArgumentError)
        check_options(defaults)
        self._stream = stream
        self._encode = encode
        self.system = system
        self.defaults = {"max_new_tokens": 256, **defaults}
        self.history: list[dict[str, str]] = []
        self.dropped: list[dict[str, str]] = []
        self._cache = cache
        self._context_length = context_length

    @property
    def reused_tokens(self) -> int:
        """How many tokens of the last reply's prompt came from the kept cache, not a new prefill."""
        return self._cache.reused if self._cache is not None else 0

    def reset(self) -> None:
        """Forgets every turn (the system prompt stays)."""
        self.history = []

    def messages(self) -> list[dict[str, str]]:
        return self._head() + [dict(m) for m in self.history]

    def _head(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def _prompt(self, text: str, max_new_tokens: Any) -> list[int]:
        if not isinstance(text, str) or not text.strip():
            raise GenerationArgumentError("the message is empty; say something.")
        checks.text("the message", text, GenerationArgumentError)
        turn = [{"role": "user", "content": text}]
        ids = self._encode(self.messages() + turn)
        if self._context_length is None or not isinstance(max_new_tokens, int):
            return ids  # a bad max_new_tokens is refused by stream
        dropped, whole = 0, ids
        while len(ids) + max_new_tokens > self._context_length and dropped < len(self.history):
            dropped += 2  # a user turn and the model's reply
            ids = self._encode(self._head() + self.history[dropped:] + turn)
        if len(ids) + max_new_tokens > self._context_length:
            return whole  # the new message alone is too long: stream says so, and nothing is dropped
        if dropped:
            self.dropped += self.history[:dropped]
            del self.history[:dropped]
            warnings.warn(
                TurnsDroppedWarning(
                    f"the conversation no longer fit the context of {self._context_length} tokens with "
                    f"max_new_tokens={max_new_tokens}: dropped its oldest {dropped} messages "
                    f"({len(self.dropped)} so far, in chat.dropped)."
                ),
                stacklevel=3,
            )
        return ids

    def stream(self, text: str, **kwargs: Any) -> Iterator[str]:
        """Streams the reply to `text`; the turn is recorded when it ends.

        If the consumer stops early (for example on Ctrl-C), the part of the
        reply produced so far is recorded, so the history stays alternating.
        """
        check_options(kwargs)
        options = {**self.defaults, **kwargs}
        prompt = self._prompt(text, options["max_new_tokens"])
        pieces: list[str] = []
        # An argument or context error raises before any piece: record nothing.
        record = False
        try:
            for piece in self._stream(prompt, **options):
                record = True
                pieces.append(piece)
                yield piece
            record = True
        finally:
            if record:
                self.history.append({"role": "user", "content": text})
                self.history.append({"role": "model", "content": "".join(pieces)})

    def send(self, text: str, **kwargs: Any) -> str:
        """Returns the model's reply to `text` and records both turns."""
        return "".join(self.stream(text, **kwargs))
