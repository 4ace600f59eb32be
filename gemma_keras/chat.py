"""Gemma's chat format, in one place, and a multi-turn conversation.

The format (Gemma 1, 2 and 3)::

    <bos><start_of_turn>user
    {system}

    {user}<end_of_turn>
    <start_of_turn>model
    {reply}<end_of_turn>
    <start_of_turn>user
    ...<end_of_turn>
    <start_of_turn>model

Roles are `user` and `model` and alternate; `assistant` means `model`. Gemma
has no system turn, so a system message is put at the top of the first user
turn. `<bos>` comes once.

Example:

>>> render_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
'<bos><start_of_turn>user\\nBe brief.\\n\\nHi<end_of_turn>\\n<start_of_turn>model\\n'
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gemma_keras.errors import GenerationArgumentError

if TYPE_CHECKING:
    from gemma_keras.model import Gemma

START, END = "<start_of_turn>", "<end_of_turn>"
_ROLES = {"user": "user", "model": "model", "assistant": "model", "system": "system"}


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Checks roles and contents; folds the system message into the first user turn."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise GenerationArgumentError("messages must be a list of {'role', 'content'} dicts.")
    system = None
    turns: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise GenerationArgumentError(
                f"messages[{i}] must be a dict with 'role' and 'content', got {message!r}."
            )
        role = _ROLES.get(str(message["role"]).lower())
        content = message["content"]
        if role is None:
            raise GenerationArgumentError(
                f"messages[{i}] has role {message['role']!r}; use 'system', 'user', 'model' or 'assistant'."
            )
        if not isinstance(content, str):
            raise GenerationArgumentError(f"messages[{i}]['content'] must be a string.")
        if role == "system":
            if i != 0:
                raise GenerationArgumentError("a system message must come first.")
            system = content
            continue
        expected = "user" if not turns or turns[-1]["role"] == "model" else "model"
        if role != expected:
            raise GenerationArgumentError(
                f"messages[{i}] is a {role!r} turn but a {expected!r} turn was expected: "
                "user and model turns must alternate, starting with user."
            )
        turns.append({"role": role, "content": content})
    if system is not None:
        if not turns:
            turns.append({"role": "user", "content": system})
        else:
            turns[0]["content"] = f"{system}\n\n{turns[0]['content']}"
    return turns


def render_messages(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
    """Renders messages to Gemma's prompt text, `<bos>` included.

    With `add_generation_prompt`, the text ends with an open model turn, ready
    for generation; it requires the last message to be a user turn.
    """
    turns = normalize_messages(messages)
    parts = ["<bos>"]
    for turn in turns:
        parts.append(f"{START}{turn['role']}\n{turn['content']}{END}\n")
    if add_generation_prompt:
        if turns and turns[-1]["role"] != "user":
            raise GenerationArgumentError("the last message must be a user turn to ask for a reply.")
        parts.append(f"{START}model\n")
    return "".join(parts)


class Chat:
    """A multi-turn conversation with a `Gemma` model.

    Get one from `lm.chat(system=...)`. Generation arguments given here
    (`max_new_tokens`, `temperature`, ...) are defaults for every reply.

    Example:

    >>> chat = lm.chat(system="Answer briefly.")  # doctest: +SKIP
    >>> chat.send("What is the capital of France?")  # doctest: +SKIP
    'Paris.'
    """

    def __init__(self, lm: Gemma, system: str | None = None, **generate_kwargs: Any):
        if system is not None and not isinstance(system, str):
            raise GenerationArgumentError("system must be a string or None.")
        self.lm = lm
        self.system = system
        self.defaults = {"max_new_tokens": 256, **generate_kwargs}
        self.history: list[dict[str, str]] = []

    def reset(self) -> None:
        """Forgets every turn (the system prompt stays)."""
        self.history = []

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self.history]

    def _prompt(self, text: str) -> str:
        if not isinstance(text, str) or not text.strip():
            raise GenerationArgumentError("the message is empty; say something.")
        return render_messages(self.messages() + [{"role": "user", "content": text}])

    def stream(self, text: str, **kwargs: Any) -> Iterator[str]:
        """Streams the reply to `text`; the turn is recorded when it ends.

        If the consumer stops early (for example on Ctrl-C), the part of the
        reply produced so far is recorded, so the history stays alternating.
        """
        prompt = self._prompt(text)
        options = {**self.defaults, **kwargs}
        pieces: list[str] = []
        # An argument or context error raises before any piece: record nothing.
        record = False
        try:
            for piece in self.lm.stream(prompt, add_bos=False, **options):
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
