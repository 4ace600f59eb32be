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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gemma_keras import checks
from gemma_keras.architectures.chat_format import ReplySyntax
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


@dataclass
class Reply:
    """One model turn, split: the answer, the thinking before it, and the tool calls it made.

    `unparsed` holds tool-call blocks the model wrote that do not parse.
    """

    content: str = ""
    thinking: str | None = None
    tool_calls: list = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)


class ReplySplitter:
    """Splits a model turn streamed as text (its markers kept) into answer, thought and tool calls.

    `feed` returns the `(kind, text)` runs ready to show, kind "content" or
    "thinking"; text that may be the start of a marker is held back until the
    next piece settles it. Tool calls are parsed when their block closes.
    """

    def __init__(self, syntax: ReplySyntax):
        self.syntax = syntax
        self.reply = Reply()
        self._mode = "content"
        self._buffer = ""
        self._call: list[str] = []
        self._thought: list[str] | None = None
        self._fresh = False  # a thought block just opened: its channel name comes first

    def _awaited(self) -> dict[str, str]:
        """The markers that end the current mode, each with the mode it leads to."""
        open_thought, close_thought = self.syntax.thought
        open_call, close_call = self.syntax.tool_call
        if self._mode == "content":
            return {open_thought: "thinking", open_call: "call"}
        return {close_thought: "content"} if self._mode == "thinking" else {close_call: "content"}

    def _emit(self, text: str, out: list[tuple[str, str]]) -> None:
        if not text:
            return
        if self._mode == "call":
            self._call.append(text)
            return
        if self._mode == "thinking":
            self._thought.append(text)
        else:
            self.reply.content += text
        out.append((self._mode, text))

    def _switch(self, mode: str) -> None:
        if self._mode == "call":
            body = "".join(self._call)
            self._call = []
            try:
                self.reply.tool_calls.append(self.syntax.parse_call(body))
            except ValueError:
                self.reply.unparsed.append(body)
        if mode == "thinking":
            self._thought = self._thought if self._thought is not None else []
            self._fresh = True
        self._mode = mode

    def feed(self, text: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        self._buffer += text
        while True:
            if self._mode == "thinking" and self._fresh:
                name = self.syntax.channel
                if len(self._buffer) <= len(name) and name.startswith(self._buffer):
                    break  # the channel name may still be arriving
                if self._buffer.startswith(name):
                    self._buffer = self._buffer[len(name) :].removeprefix("\n")
                self._fresh = False
            awaited = self._awaited()
            found = [(self._buffer.find(m), m) for m in awaited if m in self._buffer]
            if found:
                index, marker = min(found)
                self._emit(self._buffer[:index], out)
                self._buffer = self._buffer[index + len(marker) :]
                self._switch(awaited[marker])
                continue
            hold = max(
                (k for m in awaited for k in range(1, len(m)) if self._buffer.endswith(m[:k])), default=0
            )
            self._emit(self._buffer[: len(self._buffer) - hold], out)
            self._buffer = self._buffer[len(self._buffer) - hold :]
            return out
        return out

    def finish(self) -> list[tuple[str, str]]:
        """Flushes what is held back; returns its runs. `reply` is complete afterwards."""
        out: list[tuple[str, str]] = []
        self._emit(self._buffer, out)
        self._buffer = ""
        if self._mode == "call":  # the turn ended inside a call block
            self.reply.unparsed.append("".join(self._call))
        if self._thought is not None:
            self.reply.thinking = "".join(self._thought)
        return out


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
        syntax: the format's `ReplySyntax` when replies may hold thinking and
            tool calls (Gemma 4); `stream` then yields text with those
            markers kept, and the chat splits it.
        show_thinking: also yield the thinking text from `stream` (it is
            always kept in `last_reply.thinking`).
        **defaults: generation arguments for every reply.

    Attributes:
        dropped: the messages dropped so far to fit the context, oldest first.
        last_reply: the last model turn as a `Reply` (answer, thinking, tool calls).
    """

    def __init__(
        self,
        stream: Callable[..., Iterator[str]],
        encode: Callable[[list[dict[str, str]]], list[int]],
        system: str | None = None,
        cache: Any = None,
        context_length: int | None = None,
        syntax: ReplySyntax | None = None,
        show_thinking: bool = False,
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
        self._syntax = syntax
        self.show_thinking = bool(show_thinking)
        self.last_reply: Reply | None = None

    @property
    def reused_tokens(self) -> int:
        """How many tokens of the last reply's prompt came from the kept cache, not a new prefill."""
        return self._cache.reused if self._cache is not None else 0

    def reset(self) -> None:
        """Forgets every turn (the system prompt stays)."""
        self.history = []

    def messages(self) -> list[dict[str, Any]]:
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
        """Streams the answer to `text`; the turn is recorded when it ends.

        If the consumer stops early (for example on Ctrl-C), the part of the
        reply produced so far is recorded, so the history stays alternating.
        Thinking is yielded only with `show_thinking`; tool calls never are
        (see `last_reply`).
        """
        check_options(kwargs)
        options = {**self.defaults, **kwargs}
        prompt = self._prompt(text, options["max_new_tokens"])
        yield from self._reply(prompt, options, {"role": "user", "content": text})

    def send_tool_results(self, results: Mapping[str, Any] | Sequence[tuple[str, Any]], **kwargs: Any) -> str:
        """Gives the results of the last reply's tool calls back; returns the answer that follows.

        `results` maps a tool name to its result (any JSON-like value), or is
        a list of `(name, result)` pairs. The model goes on in the same turn;
        `last_reply` then holds what it wrote after the results.
        """
        check_options(kwargs)
        last = self.history[-1] if self.history else None
        rounds = (last or {}).get("tool_rounds") or [{}]
        if self._syntax is None or not rounds[-1].get("calls") or rounds[-1].get("results"):
            raise GenerationArgumentError(
                "the last reply made no tool calls, so there are no results to send."
            )
        pairs = list(results.items()) if isinstance(results, Mapping) else [tuple(r) for r in results]
        if not pairs or not all(len(p) == 2 and isinstance(p[0], str) for p in pairs):
            raise GenerationArgumentError(
                "results must map tool names to results, or be (name, result) pairs."
            )
        turn = dict(self.history.pop(), tool_rounds=[*rounds[:-1], dict(rounds[-1], results=pairs)])
        prompt = self._encode(self.messages() + [turn])
        return "".join(self._reply(prompt, {**self.defaults, **kwargs}, None, continued=turn))

    def _reply(self, prompt: list[int], options: dict, user: dict | None, continued: dict | None = None):
        """Streams one model turn and records it (after `user`, or as the rest of `continued`)."""
        splitter = ReplySplitter(self._syntax) if self._syntax is not None else None
        answer: list[str] = []
        # An argument or context error raises before any piece: record nothing.
        record = finished = False
        try:
            for piece in self._stream(prompt, **options):
                record = True
                yield from self._show(splitter.feed(piece) if splitter else [("content", piece)], answer)
            record = finished = True
            if splitter is not None:
                yield from self._show(splitter.finish(), answer)
        finally:
            if splitter is not None and not finished:
                splitter.finish()
            if record:
                self._record(splitter.reply if splitter else Reply(content="".join(answer)), user, continued)
            elif continued is not None:
                self.history.append(continued)

    def _show(self, runs: list[tuple[str, str]], answer: list[str]) -> Iterator[str]:
        for kind, run in runs:
            if kind == "content":
                answer.append(run)
            if kind == "content" or self.show_thinking:
                yield run

    def _record(self, reply: Reply, user: dict | None, continued: dict | None) -> None:
        self.last_reply = reply
        turn = dict(continued or {"role": "model", "content": ""})
        turn["content"] += reply.content
        if reply.tool_calls:
            turn["tool_rounds"] = [*turn.get("tool_rounds", ()), {"calls": list(reply.tool_calls)}]
        if user is not None:
            self.history.append(user)
        self.history.append(turn)

    def send(self, text: str, **kwargs: Any) -> str:
        """Returns the model's reply to `text` and records both turns."""
        return "".join(self.stream(text, **kwargs))
