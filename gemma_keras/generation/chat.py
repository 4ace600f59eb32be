"""`Chat`: a multi-turn conversation in the model's chat format.

The format itself (turn markers, roles, the system message) belongs to the
architecture record (`architectures.chat_format`); a `Chat` keeps the
history, has it encoded (markers as control tokens, what is said as plain
text, so a message cannot forge a turn) and streams each reply through the
functions it is given.

Example:

>>> chat = lm.chat(system="Answer briefly.")  # doctest: +SKIP
>>> chat.send("What is the capital of France?")  # doctest: +SKIP
'Paris.'
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from gemma_keras import checks
from gemma_keras.errors import GenerationArgumentError

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
        **defaults: generation arguments for every reply.
    """

    def __init__(
        self,
        stream: Callable[..., Iterator[str]],
        encode: Callable[[list[dict[str, str]]], list[int]],
        system: str | None = None,
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

    def reset(self) -> None:
        """Forgets every turn (the system prompt stays)."""
        self.history = []

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self.history]

    def _prompt(self, text: str) -> list[int]:
        if not isinstance(text, str) or not text.strip():
            raise GenerationArgumentError("the message is empty; say something.")
        checks.text("the message", text, GenerationArgumentError)
        return self._encode(self.messages() + [{"role": "user", "content": text}])

    def stream(self, text: str, **kwargs: Any) -> Iterator[str]:
        """Streams the reply to `text`; the turn is recorded when it ends.

        If the consumer stops early (for example on Ctrl-C), the part of the
        reply produced so far is recorded, so the history stays alternating.
        """
        check_options(kwargs)
        prompt = self._prompt(text)
        options = {**self.defaults, **kwargs}
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
