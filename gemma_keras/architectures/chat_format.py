"""Chat formats: how a list of messages becomes prompt text, in one place.

Gemma 1, 2 and 3 share one turn format::

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
turn. `<bos>` comes once. Each architecture record names its format; newer
families (Gemma 3n, Gemma 4) add theirs here.

Generation renders the whole prompt with `render`; training tokenizes the
same text piece by piece with `segments`, so both see identical tokens.

Example:

>>> GEMMA_TURNS.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
'<bos><start_of_turn>user\\nBe brief.\\n\\nHi<end_of_turn>\\n<start_of_turn>model\\n'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gemma_keras.errors import GenerationArgumentError

Turn = dict[str, str]


@dataclass(frozen=True)
class TurnFormat:
    """A chat format of alternating user and model turns between two marker tokens."""

    name: str
    start: str
    end: str
    bos: str = "<bos>"
    roles: Mapping[str, str] = field(
        default_factory=lambda: {"user": "user", "model": "model", "assistant": "model", "system": "system"}
    )

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Control tokens that end a model turn (besides `<eos>`)."""
        return (self.end,)

    def normalize(self, messages: Sequence[Mapping[str, Any]]) -> list[Turn]:
        """Checks roles and contents; folds the system message into the first user turn."""
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise GenerationArgumentError("messages must be a list of {'role', 'content'} dicts.")
        system = None
        turns: list[Turn] = []
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
                raise GenerationArgumentError(
                    f"messages[{i}] must be a dict with 'role' and 'content', got {message!r}."
                )
            role = self.roles.get(str(message["role"]).lower())
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

    def segments(self, turns: Sequence[Turn]) -> list[tuple[str, bool]]:
        """The rendered turns (no `<bos>`) as `(text, is_model_reply)` pieces.

        A model turn's reply and its end marker form one piece, so training
        teaches the model to close its turn.
        """
        pieces: list[tuple[str, bool]] = []
        for turn in turns:
            pieces.append((f"{self.start}{turn['role']}\n", False))
            pieces.append((f"{turn['content']}{self.end}", turn["role"] == "model"))
            pieces.append(("\n", False))
        return pieces

    def generation_prompt(self) -> str:
        """The text that opens the model's turn."""
        return f"{self.start}model\n"

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """Renders messages to prompt text, `<bos>` included.

        With `add_generation_prompt`, the text ends with an open model turn,
        ready for generation; the last message must then be a user turn.
        """
        turns = self.normalize(messages)
        text = self.bos + "".join(piece for piece, _ in self.segments(turns))
        if add_generation_prompt:
            if turns and turns[-1]["role"] != "user":
                raise GenerationArgumentError("the last message must be a user turn to ask for a reply.")
            text += self.generation_prompt()
        return text


GEMMA_TURNS = TurnFormat(name="gemma", start="<start_of_turn>", end="<end_of_turn>")


def render_messages(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
    """Renders messages in the Gemma 1-3 turn format (see `TurnFormat.render`)."""
    return GEMMA_TURNS.render(messages, add_generation_prompt)
