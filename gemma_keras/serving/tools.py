"""Tool calling for Gemma 1-3, which have no tool tokens of their own.

Tools are described to the model in the system text, and a call is a fenced
block the model writes in its reply::

    ```tool_call
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    ```

A tool's result goes back as a user turn holding a fenced `tool_output`
block. `tool_choice="auto"` leaves it to the model and parses any blocks it
writes; `"required"` or a named function constrains the reply with a JSON
schema (structured output), so the call always parses and names a real
function with arguments of the declared shape.

OpenAI messages (`system`, `developer`, `user`, `assistant` with
`tool_calls`, `tool`) become Gemma's alternating user/model turns here.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gemma_keras.serving.errors import APIError

_CALL = re.compile(r"```tool_call[ \t]*\n(.*?)\n?```", re.DOTALL)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict


def parse_tools(tools: Any) -> list[Tool]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise APIError("'tools' must be a list of {'type': 'function', 'function': {...}} objects.", "tools")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(tool.get("function"), dict)
        ):
            raise APIError(f"'{where}' must be {{'type': 'function', 'function': {{'name': ...}}}}.", where)
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise APIError(f"'{where}.function.name' must be 1-64 letters, digits, '_', '.' or '-'.", where)
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise APIError(f"'{where}.function.parameters' must be a JSON schema object.", where)
        description = fn.get("description") or ""
        if not isinstance(description, str):
            raise APIError(f"'{where}.function.description' must be a string.", where)
        out.append(Tool(name, description, params))
    if len({t.name for t in out}) != len(out):
        raise APIError("'tools' names a function twice.", "tools")
    return out


def parse_tool_choice(choice: Any, tools: list[Tool]) -> str | Tool:
    """`"none"`, `"auto"`, `"required"`, or the one `Tool` the reply must call."""
    if choice is None:
        return "auto" if tools else "none"
    if choice in ("none", "auto", "required"):
        if choice != "none" and not tools:
            raise APIError(f"tool_choice {choice!r} needs 'tools'.", "tool_choice")
        return choice
    if (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
    ):
        name = choice["function"].get("name")
        for tool in tools:
            if tool.name == name:
                return tool
        raise APIError(f"tool_choice names function {name!r}, which is not in 'tools'.", "tool_choice")
    raise APIError(
        "tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}.",
        "tool_choice",
    )


def system_text(tools: list[Tool]) -> str:
    listing = "\n".join(
        json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters}) for t in tools
    )
    return (
        "You can call these functions:\n"
        f"{listing}\n\n"
        "To call one, reply with only a ```tool_call block holding a JSON object with the function's "
        '"name" and its "arguments", for example:\n'
        '```tool_call\n{"name": "' + tools[0].name + '", "arguments": {}}\n```\n'
        "Results come back in a ```tool_output block."
    )


def call_schema(choice: str | Tool, tools: list[Tool]) -> dict:
    """The JSON schema a forced call must match: one of the functions with its own arguments."""
    chosen = [choice] if isinstance(choice, Tool) else tools
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": t.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in chosen
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def _content(message: Mapping, i: int) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise APIError(
                    f"messages[{i}].content[{j}] is of type {kind!r}; only text parts are supported "
                    "(image and audio input is not).",
                    f"messages[{i}].content",
                )
            parts.append(part["text"])
        return "".join(parts)
    raise APIError(
        f"messages[{i}].content must be a string or a list of text parts.", f"messages[{i}].content"
    )


def _render_calls(calls: Any, i: int) -> str:
    if not isinstance(calls, list):
        raise APIError(f"messages[{i}].tool_calls must be a list.", f"messages[{i}].tool_calls")
    blocks = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise APIError(
                f"messages[{i}].tool_calls holds a call without a function name.", f"messages[{i}]"
            )
        arguments = fn.get("arguments", "{}")
        try:
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        except json.JSONDecodeError:
            raise APIError(
                f"messages[{i}].tool_calls: the arguments of {fn['name']!r} are not valid JSON.",
                f"messages[{i}]",
            ) from None
        blocks.append("```tool_call\n" + json.dumps({"name": fn["name"], "arguments": arguments}) + "\n```")
    return "\n".join(blocks)


def to_turns(messages: Any, tools: list[Tool]) -> list[dict[str, str]]:
    """OpenAI chat messages as Gemma turns: `system` first, then alternating `user` and `model`."""
    if not isinstance(messages, list) or not messages:
        raise APIError("'messages' must be a non-empty list of messages.", "messages")
    system: list[str] = []
    turns: list[dict[str, str]] = []

    def add(role: str, text: str) -> None:
        if turns and turns[-1]["role"] == role:  # OpenAI allows two user messages in a row; Gemma does not
            turns[-1]["content"] += "\n\n" + text
        else:
            turns.append({"role": role, "content": text})

    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise APIError(f"messages[{i}] must be an object with a 'role'.", f"messages[{i}]")
        role = message.get("role")
        if role in ("system", "developer"):
            if turns:
                raise APIError(
                    f"messages[{i}]: a {role} message must come before the conversation.", f"messages[{i}]"
                )
            system.append(_content(message, i))
        elif role == "user":
            add("user", _content(message, i))
        elif role == "assistant":
            text = _content(message, i)
            if message.get("tool_calls"):
                text = (text + "\n" if text else "") + _render_calls(message["tool_calls"], i)
            add("model", text)
        elif role == "tool":
            name = message.get("name") or message.get("tool_call_id") or "tool"
            add("user", f"```tool_output\n{json.dumps({'name': name, 'content': _content(message, i)})}\n```")
        else:
            raise APIError(
                f"messages[{i}] has role {role!r}; use system, developer, user, assistant or tool.",
                f"messages[{i}].role",
            )
    if tools:
        system.append(system_text(tools))
    if not turns or turns[0]["role"] != "user":
        raise APIError("the conversation must start with a user message.", "messages")
    if turns[-1]["role"] != "user":
        raise APIError("the last message must be a user or tool message, to ask for a reply.", "messages")
    head = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    return head + turns


def _tool_call(obj: Any, tools: Sequence[Tool]) -> dict | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("arguments", {}), dict):
        return None
    if obj.get("name") not in {t.name for t in tools}:
        return None
    return {
        "id": "call_" + uuid.uuid4().hex[:24],
        "type": "function",
        "function": {"name": obj["name"], "arguments": json.dumps(obj.get("arguments", {}))},
    }


def parse_reply(text: str, tools: Sequence[Tool], forced: bool) -> tuple[str | None, list[dict]]:
    """(content, tool_calls) of a reply: forced replies are one JSON call; others may hold ```tool_call blocks."""
    if forced:
        try:
            call = _tool_call(json.loads(text), tools)
        except json.JSONDecodeError:
            call = None
        return (None, [call]) if call else (text, [])
    calls = []
    for block in _CALL.findall(text):
        try:
            call = _tool_call(json.loads(block), tools)
        except json.JSONDecodeError:
            call = None
        if call is None:
            return text, []  # a malformed block: the reply stays text
        calls.append(call)
    if not calls:
        return text, []
    rest = _CALL.sub("", text).strip()
    return (rest or None), calls
