"""Gemma 4's tool syntax: declarations, calls and results, written and read.

Gemma 4 does not use JSON for tools. Its chat template writes values with
bare keys, sorted, no spaces, and strings between `<|"|>` tokens::

    <|tool>declaration:get_weather{description:<|"|>Weather<|"|>,parameters:{properties:{city:{type:<|"|>STRING<|"|>}},required:[<|"|>city<|"|>],type:<|"|>OBJECT<|"|>}}<tool|>
    <|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:2}<tool_call|>
    <|tool_response>response:get_weather{temp:20}<tool_response|>

`segments` writes a value as `(text, literal)` runs: the `<|"|>` marks are
control tokens, what is between them is plain text, so a string cannot
forge a marker. `parse_call` reads what the model wrote; it also accepts
JSON strings and `null`, as llama.cpp's grammar does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gemma_keras.errors import GenerationArgumentError

QUOTE = '<|"|>'
# The control tokens the tool syntax writes.
TOKENS = ("<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", QUOTE)
Segment = tuple[str, bool]  # (text, literal)


@dataclass(frozen=True)
class ToolCall:
    """A function call the model wrote: its name and its arguments."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


def segments(value: Any) -> list[Segment]:
    """`value` in Gemma 4's syntax, as runs of marker text and literal text."""
    if isinstance(value, str):
        return [(QUOTE, False), (value, True), (QUOTE, False)]
    if isinstance(value, bool):
        return [("true" if value else "false", False)]
    if value is None:
        return [("null", False)]
    if isinstance(value, (int, float)):
        return [(json.dumps(value), False)]
    if isinstance(value, Mapping):
        out: list[Segment] = [("{", False)]
        for i, key in enumerate(sorted(value, key=str)):
            out += [(("," if i else "") + str(key) + ":", False), *segments(value[key])]
        return out + [("}", False)]
    if isinstance(value, Sequence):
        out = [("[", False)]
        for i, item in enumerate(value):
            out += [(",", False)] * bool(i) + segments(item)
        return out + [("]", False)]
    raise GenerationArgumentError(f"cannot write a {type(value).__name__} in a Gemma 4 tool call: {value!r}.")


def text(runs: list[Segment]) -> str:
    return "".join(t for t, _ in runs)


# The order the chat template writes a schema's keys in; types are upper case.
_SCHEMA_ORDER = ("description", "enum", "items", "nullable", "properties", "required", "type")


def _schema(schema: Mapping[str, Any]) -> list[Segment]:
    out: list[Segment] = [("{", False)]
    for key in (k for k in _SCHEMA_ORDER if k in schema):
        value = schema[key]
        if key == "type":
            runs = segments(str(value).upper())
        elif key == "items":
            runs = _schema(value)
        elif key == "properties":
            runs = [("{", False)]
            for i, name in enumerate(sorted(value)):
                runs += [(("," if i else "") + name + ":", False), *_schema(value[name])]
            runs.append(("}", False))
        else:
            runs = segments(value)
        out += [(("," if len(out) > 1 else "") + key + ":", False), *runs]
    return out + [("}", False)]


def declaration(tool: Mapping[str, Any]) -> list[Segment]:
    """`<|tool>declaration:NAME{...}<tool|>` for an OpenAI-style tool (or its `function` part)."""
    function = tool.get("function", tool) if isinstance(tool, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise GenerationArgumentError(
            f"a tool must be {{'type': 'function', 'function': {{'name': ..., 'parameters': ...}}}}, got {tool!r}."
        )
    out: list[Segment] = [("<|tool>declaration:" + function["name"] + "{", False)]
    if function.get("description"):
        out += [("description:", False), *segments(str(function["description"]))]
    if function.get("parameters"):
        out += [(("," if len(out) > 1 else "") + "parameters:", False), *_schema(function["parameters"])]
    return out + [("}<tool|>", False)]


def response(name: str, result: Any) -> list[Segment]:
    """`<|tool_response>response:NAME{...}<tool_response|>`; a non-mapping result becomes `{value:...}`."""
    value = result if isinstance(result, Mapping) else {"value": result}
    return [("<|tool_response>response:" + name, False), *segments(value), ("<tool_response|>", False)]


def call(tool_call: ToolCall) -> list[Segment]:
    """How a call is written back into a model turn of the history."""
    return [
        ("<|tool_call>call:" + tool_call.name, False),
        *segments(tool_call.arguments),
        ("<tool_call|>", False),
    ]


_SCALAR = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?|true|false|null|None")
_WORDS = {"true": True, "false": False, "null": None, "None": None}


class _Reader:
    def __init__(self, source: str):
        self.s, self.i = source, 0

    def space(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
            self.i += 1

    def take(self, token: str) -> bool:
        self.space()
        if self.s.startswith(token, self.i):
            self.i += len(token)
            return True
        return False

    def value(self) -> Any:
        self.space()
        if self.take(QUOTE):
            end = self.s.find(QUOTE, self.i)
            if end < 0:
                raise ValueError('unterminated <|"|> string')
            out, self.i = self.s[self.i : end], end + len(QUOTE)
            return out
        if self.s.startswith('"', self.i):
            out, self.i = json.JSONDecoder().raw_decode(self.s, self.i)
            return out
        if self.take("{"):
            out: dict[str, Any] = {}
            while not self.take("}"):
                if out and not self.take(","):
                    raise ValueError(f"expected ',' or '}}' at {self.i}")
                self.space()
                if self.s.startswith((QUOTE, '"'), self.i):
                    key = str(self.value())
                else:
                    end = self.s.find(":", self.i)
                    if end < 0:
                        raise ValueError("a key without ':'")
                    key, self.i = self.s[self.i : end].strip(), end
                if not self.take(":"):
                    raise ValueError(f"expected ':' after key {key!r}")
                out[key] = self.value()
            return out
        if self.take("["):
            items: list[Any] = []
            while not self.take("]"):
                if items and not self.take(","):
                    raise ValueError(f"expected ',' or ']' at {self.i}")
                items.append(self.value())
            return items
        match = _SCALAR.match(self.s, self.i)
        if not match:
            raise ValueError(f"unexpected {self.s[self.i : self.i + 10]!r}")
        self.i = match.end()
        word = match.group(0)
        return _WORDS[word] if word in _WORDS else json.loads(word)


def parse_call(body: str) -> ToolCall:
    """A `call:NAME{...}` body (between `<|tool_call>` and `<tool_call|>`) as a `ToolCall`.

    Raises ValueError when the model wrote something else.
    """
    match = re.match(r"\s*call:([\w.\-]+)", body)
    if not match:
        raise ValueError(f"not a call: {body[:40]!r}")
    reader = _Reader(body)
    reader.i = match.end()
    arguments = reader.value()
    reader.space()
    if not isinstance(arguments, dict) or reader.i != len(body):
        raise ValueError(f"the arguments of {match.group(1)} are not one {{...}} map")
    return ToolCall(match.group(1), arguments)
