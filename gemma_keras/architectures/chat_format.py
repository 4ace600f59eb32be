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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gemma_keras import checks
from gemma_keras.architectures import gemma4_syntax
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


Runs = list[tuple[str, bool]]  # (text, literal)


@dataclass(frozen=True)
class ReplySyntax:
    """What a model turn may hold besides its answer, and how tools are written (Gemma 4).

    Attributes:
        think: the control token that, at the top of the system turn, turns thinking on.
        thought: the markers around a thought block; `channel` follows the first.
        tool_call: the markers around one tool call.
        declare, write_call, write_response: a tool, a call, a result as runs of text.
        parse_call: the text between the tool-call markers as a `ToolCall` (ValueError if not one).
    """

    think: str
    thought: tuple[str, str]
    channel: str
    tool_call: tuple[str, str]
    declare: Callable[[Mapping[str, Any]], Runs]
    write_call: Callable[[Any], Runs]
    write_response: Callable[[str, Any], Runs]
    parse_call: Callable[[str], Any]
    tool_tokens: tuple[str, ...] = ()

    @property
    def markers(self) -> tuple[str, ...]:
        """The control tokens a reply must keep in its text to be split."""
        return (*self.thought, *self.tool_call)


@dataclass(frozen=True)
class TurnFormat:
    """A chat format of alternating user and model turns between two marker tokens."""

    name: str
    start: str
    end: str
    bos: str = "<bos>"
    system_turn: bool = False
    extra_stops: tuple[str, ...] = ()
    reply: ReplySyntax | None = None
    roles: Mapping[str, str] = field(
        default_factory=lambda: {"user": "user", "model": "model", "assistant": "model", "system": "system"}
    )

    @property
    def marker_pieces(self) -> tuple[str, ...]:
        """Every control token this format writes or reads."""
        reply = self.reply
        extra = (reply.think, *reply.markers, *reply.tool_tokens) if reply is not None else ()
        return (self.start, self.end, *self.extra_stops, *extra)

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
            turn = {"role": role, "content": content}
            if message.get("tool_rounds"):
                if self.reply is None or role != "model":
                    raise GenerationArgumentError(
                        f"messages[{i}] has tool_rounds, which only model turns of a format with tools carry."
                    )
                turn["tool_rounds"] = [dict(r) for r in message["tool_rounds"]]
            turns.append(turn)
        if system is not None and self.system_turn:
            turns.insert(0, {"role": "system", "content": system})
        elif system is not None:
            if not turns:
                turns.append({"role": "user", "content": system})
            else:
                turns[0]["content"] = f"{system}\n\n{turns[0]['content']}"
        return turns

    def pieces(
        self,
        turns: Sequence[Turn],
        thinking: bool = False,
        tools: Sequence[Mapping[str, Any]] = (),
        open_last: bool = False,
    ) -> list[Piece]:
        """The rendered turns (no `<bos>`), run by run.

        A model turn's content and its end marker are both `reply`, so
        training teaches the model to close its turn. With a `reply` syntax,
        the system turn may open with the thinking switch and end with tool
        declarations, and a model turn writes its tool calls and their
        results before its answer (`tool_rounds`: `[{"calls": [...],
        "results": [(name, result), ...]}, ...]`). `open_last` leaves the last
        turn open, for the model to go on after tool results.
        """
        out: list[Piece] = []
        for n, turn in enumerate(turns):
            model = turn["role"] == "model"
            out.append(Piece(f"{self.start}{turn['role']}\n", reply=False, literal=False))
            if turn["role"] == "system" and thinking:
                out.append(Piece(self.reply.think + "\n", reply=False, literal=False))
            for rnd in turn.get("tool_rounds", ()):  # each: the calls the model made, then their results
                for call in rnd.get("calls", ()):
                    out += [Piece(t, reply=True, literal=lit) for t, lit in self.reply.write_call(call)]
                for name, result in rnd.get("results", ()):
                    out += [
                        Piece(t, reply=False, literal=lit)
                        for t, lit in self.reply.write_response(name, result)
                    ]
            out.append(Piece(turn["content"], reply=model, literal=True))
            if turn["role"] == "system":
                for tool in tools:
                    out += [Piece(t, reply=False, literal=lit) for t, lit in self.reply.declare(tool)]
            if open_last and n == len(turns) - 1:
                break
            out.append(Piece(self.end, reply=model, literal=False))
            out.append(Piece("\n", reply=False, literal=False))
        return out

    def generation_prompt(self) -> str:
        """The text that opens the model's turn."""
        return f"{self.start}model\n"

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        thinking: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """Renders messages to prompt text, `<bos>` included.

        With `add_generation_prompt`, the text ends with an open model turn,
        ready for generation; the last message must then be a user turn, or a
        model turn with tool results, which is left open. `thinking` and
        `tools` need a format with a `reply` syntax (Gemma 4).
        """
        pieces, prompt = self._pieces(messages, add_generation_prompt, thinking, tools)
        return self.bos + "".join(piece.text for piece in pieces) + prompt

    def encode(
        self,
        messages: Sequence[Mapping[str, Any]],
        tokenizer,
        add_generation_prompt: bool = True,
        thinking: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        """Token ids of the rendered messages, `<bos>` included: markers as control tokens, content as text."""
        pieces, prompt = self._pieces(messages, add_generation_prompt, thinking, tools)
        self.check_vocabulary(tokenizer, thinking, bool(tools))
        ids = [tokenizer.bos_id]
        for piece in pieces:
            ids += tokenizer.encode(piece.text, add_bos=False, special=not piece.literal)
        return ids + (tokenizer.encode(prompt, add_bos=False, special=True) if prompt else [])

    def _pieces(
        self, messages, add_generation_prompt: bool, thinking: bool, tools
    ) -> tuple[list[Piece], str]:
        """The pieces of a conversation and the generation prompt that follows them."""
        tools = list(tools or ())
        if (thinking or tools) and self.reply is None:
            raise GenerationArgumentError(
                f"the {self.name} chat format has no thinking switch or tool syntax."
            )
        turns = self._turns(messages, add_generation_prompt)
        if (thinking or tools) and (not turns or turns[0]["role"] != "system"):
            turns.insert(0, {"role": "system", "content": ""})
        open_last = add_generation_prompt and bool(turns) and turns[-1]["role"] == "model"
        pieces = self.pieces(turns, thinking, tools, open_last)
        return pieces, (self.generation_prompt() if add_generation_prompt and not open_last else "")

    def check_vocabulary(self, tokenizer, thinking: bool = False, tools: bool = False) -> None:
        """Refuses a vocabulary without the markers a prompt needs, which would be encoded as plain text."""
        needed = [self.start, self.end]
        if thinking:
            needed.append(self.reply.think)
        if tools:
            needed += self.reply.tool_tokens
        missing = [m for m in needed if tokenizer.token_to_id(m) < 0]
        if missing:
            raise GenerationArgumentError(
                f"this model's vocabulary has no {' or '.join(missing)} token, which the {self.name} chat "
                "format needs; use generate() with your own prompt text instead of chat()."
            )

    def _turns(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool) -> list[Turn]:
        turns = self.normalize(messages)
        if add_generation_prompt and turns and turns[-1]["role"] == "system":
            raise GenerationArgumentError("a user message must follow the system message to ask for a reply.")
        if add_generation_prompt and turns and turns[-1]["role"] == "model" and turns[-1].get("tool_rounds"):
            return turns  # the model goes on in the same turn, after the tool results
        if add_generation_prompt and turns and turns[-1]["role"] != "user":
            raise GenerationArgumentError("the last message must be a user turn to ask for a reply.")
        return turns


GEMMA_TURNS = TurnFormat(name="gemma", start="<start_of_turn>", end="<end_of_turn>")
GEMMA4_TURNS = TurnFormat(
    name="gemma4",
    start="<|turn>",
    end="<turn|>",
    system_turn=True,
    extra_stops=("<|tool_response>",),
    reply=ReplySyntax(
        think="<|think|>",
        thought=("<|channel>", "<channel|>"),
        channel="thought",
        tool_call=("<|tool_call>", "<tool_call|>"),
        declare=gemma4_syntax.declaration,
        write_call=gemma4_syntax.call,
        write_response=gemma4_syntax.response,
        parse_call=gemma4_syntax.parse_call,
        tool_tokens=gemma4_syntax.TOKENS,
    ),
)


def render_messages(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
    """Renders messages in the Gemma 1-3 turn format (see `TurnFormat.render`)."""
    return GEMMA_TURNS.render(messages, add_generation_prompt)
