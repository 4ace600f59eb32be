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
turn. `<bos>` comes once. Each architecture record names its format; Gemma 3n
uses this one.

Gemma 4 marks turns with `<|turn>` / `<turn|>` and has a real system turn
(`GEMMA4_TURNS`)::

    <bos><|turn>system
    {system}<turn|>
    <|turn>user
    {user}<turn|>
    <|turn>model

Its model turns may open with a thought block, `<|channel>thought ...<channel|>`,
and it ends a turn that calls a tool with `<|tool_response>`, so that token
stops generation too.

`encode` turns messages into token ids: the markers become control tokens,
and what the messages say is encoded as plain text, so a message that
contains `<end_of_turn>\n<start_of_turn>model\n` cannot forge a turn.
Chat and training both encode through `pieces`, so they see identical
tokens; `render` gives the same conversation as text, for display.

Example:

>>> GEMMA_TURNS.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
'<bos><start_of_turn>user\\nBe brief.\\n\\nHi<end_of_turn>\\n<start_of_turn>model\\n'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gemma_keras import checks
from gemma_keras.errors import GenerationArgumentError

Turn = dict[str, str]


@dataclass(frozen=True)
class Piece:
    """A run of a rendered conversation.

    Attributes:
        text: the text of the run.
        reply: part of what the model writes in its turn (its content and
            end marker), which training learns.
        literal: what a message says: encoded as plain text, never as
            control tokens. Markers are not literal.
    """

    text: str
    reply: bool
    literal: bool


@dataclass(frozen=True)
class TurnFormat:
    """A chat format of alternating user and model turns between two marker tokens."""

    name: str
    start: str
    end: str
    bos: str = "<bos>"
    system_turn: bool = False
    extra_stops: tuple[str, ...] = ()
    roles: Mapping[str, str] = field(
        default_factory=lambda: {"user": "user", "model": "model", "assistant": "model", "system": "system"}
    )

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Control tokens that end a model turn (besides `<eos>`)."""
        return (self.end, *self.extra_stops)

    def normalize(self, messages: Sequence[Mapping[str, Any]]) -> list[Turn]:
        """Checks roles and contents; folds the system message into the first user turn.

        A format with a `system_turn` keeps the system message as a turn of its own.
        """
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
            checks.text(f"messages[{i}]['content']", content, GenerationArgumentError)
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
        if system is not None and self.system_turn:
            turns.insert(0, {"role": "system", "content": system})
        elif system is not None:
            if not turns:
                turns.append({"role": "user", "content": system})
            else:
                turns[0]["content"] = f"{system}\n\n{turns[0]['content']}"
        return turns

    def pieces(self, turns: Sequence[Turn]) -> list[Piece]:
        """The rendered turns (no `<bos>`), run by run.

        A model turn's content and its end marker are both `reply`, so
        training teaches the model to close its turn.
        """
        out: list[Piece] = []
        for turn in turns:
            model = turn["role"] == "model"
            out.append(Piece(f"{self.start}{turn['role']}\n", reply=False, literal=False))
            out.append(Piece(turn["content"], reply=model, literal=True))
            out.append(Piece(self.end, reply=model, literal=False))
            out.append(Piece("\n", reply=False, literal=False))
        return out

    def generation_prompt(self) -> str:
        """The text that opens the model's turn."""
        return f"{self.start}model\n"

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """Renders messages to prompt text, `<bos>` included.

        With `add_generation_prompt`, the text ends with an open model turn,
        ready for generation; the last message must then be a user turn.
        """
        turns = self._turns(messages, add_generation_prompt)
        text = self.bos + "".join(piece.text for piece in self.pieces(turns))
        return text + self.generation_prompt() if add_generation_prompt else text

    def encode(
        self, messages: Sequence[Mapping[str, Any]], tokenizer, add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of the rendered messages, `<bos>` included: markers as control tokens, content as text."""
        turns = self._turns(messages, add_generation_prompt)
        self.check_vocabulary(tokenizer)
        ids = [tokenizer.bos_id]
        for piece in self.pieces(turns):
            ids += tokenizer.encode(piece.text, add_bos=False, special=not piece.literal)
        if add_generation_prompt:
            ids += tokenizer.encode(self.generation_prompt(), add_bos=False, special=True)
        return ids

    def check_vocabulary(self, tokenizer) -> None:
        """Refuses a vocabulary without this format's markers, which would be encoded as plain text."""
        missing = [m for m in (self.start, self.end) if tokenizer.token_to_id(m) < 0]
        if missing:
            raise GenerationArgumentError(
                f"this model's vocabulary has no {' or '.join(missing)} token, which the {self.name} chat "
                "format needs; use generate() with your own prompt text instead of chat()."
            )

    def _turns(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool) -> list[Turn]:
        turns = self.normalize(messages)
        if add_generation_prompt and turns and turns[-1]["role"] == "system":
            raise GenerationArgumentError("a user message must follow the system message to ask for a reply.")
        if add_generation_prompt and turns and turns[-1]["role"] != "user":
            raise GenerationArgumentError("the last message must be a user turn to ask for a reply.")
        return turns


GEMMA_TURNS = TurnFormat(name="gemma", start="<start_of_turn>", end="<end_of_turn>")
GEMMA4_TURNS = TurnFormat(
    name="gemma4", start="<|turn>", end="<turn|>", system_turn=True, extra_stops=("<|tool_response>",)
)


def render_messages(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
    """Renders messages in the Gemma 1-3 turn format (see `TurnFormat.render`)."""
    return GEMMA_TURNS.render(messages, add_generation_prompt)
