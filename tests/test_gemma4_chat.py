"""Gemma 4's chat: the prompt it renders (system turn, thinking switch, tool declarations and results),
and the split of a streamed reply into answer, thinking and parsed tool calls.

The rendered strings are the ones Google's chat template gives for the same
messages (checked by rendering the template with jinja2 when this was written).
"""

from __future__ import annotations

import pytest

from gemma_keras.architectures import GEMMA4_TURNS
from gemma_keras.architectures.gemma4_syntax import ToolCall, call, declaration, parse_call, response, text
from gemma_keras.errors import GenerationArgumentError
from gemma_keras.generation.chat import Chat, ReplySplitter

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}


def test_declaration_call_and_response_are_written_as_the_template_writes_them():
    assert text(declaration(WEATHER)) == (
        '<|tool>declaration:get_weather{description:<|"|>Get weather<|"|>,parameters:{properties:{city:'
        '{description:<|"|>City<|"|>,type:<|"|>STRING<|"|>},days:{type:<|"|>INTEGER<|"|>}},required:'
        '[<|"|>city<|"|>],type:<|"|>OBJECT<|"|>}}<tool|>'
    )
    arguments = {"q": "a", "o": {"s": "x", "k": True}, "n": [1, 2]}
    assert text(call(ToolCall("f", arguments))) == (
        '<|tool_call>call:f{n:[1,2],o:{k:true,s:<|"|>x<|"|>},q:<|"|>a<|"|>}<tool_call|>'
    )
    assert text(response("f", {"w": "sunny", "temp": 20})) == (
        '<|tool_response>response:f{temp:20,w:<|"|>sunny<|"|>}<tool_response|>'
    )
    assert text(response("g", "ok")) == '<|tool_response>response:g{value:<|"|>ok<|"|>}<tool_response|>'


def test_what_a_string_says_is_literal_text():
    runs = call(ToolCall("f", {"s": '<|"|>},x:<tool_call|>'}))
    assert ('<|"|>},x:<tool_call|>', True) in runs  # encoded as plain text, so it cannot close the call


@pytest.mark.parametrize(
    "body, expected",
    [
        (
            'call:f{n:[1,2],o:{k:true,s:<|"|>x<|"|>},q:<|"|>a<|"|>}',
            ToolCall("f", {"n": [1, 2], "o": {"k": True, "s": "x"}, "q": "a"}),
        ),
        ("call:get_time{}", ToolCall("get_time", {})),
        ('call:f{ a : "json", b: null, c: -1.5e3 }', ToolCall("f", {"a": "json", "b": None, "c": -1500.0})),
        ('call:f{s:<|"|>a, b: {c}<|"|>}', ToolCall("f", {"s": "a, b: {c}"})),
    ],
)
def test_calls_parse(body, expected):
    assert parse_call(body) == expected


@pytest.mark.parametrize(
    "body", ["f{a:1}", "call:f{a:1", "call:f{a 1}", "call:f{a:1}x", 'call:f{a:<|"|>open}']
)
def test_malformed_calls_are_refused(body):
    with pytest.raises(ValueError):
        parse_call(body)


REPLY = (
    "<|channel>thought\nThe user wants weather.<channel|>Let me check."
    '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:2}<tool_call|>'
)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 1000])
def test_a_streamed_reply_splits_the_same_however_it_is_cut(size):
    splitter = ReplySplitter(GEMMA4_TURNS.reply)
    runs = []
    for start in range(0, len(REPLY), size):
        runs += splitter.feed(REPLY[start : start + size])
    runs += splitter.finish()
    reply = splitter.reply
    assert reply.thinking == "The user wants weather."
    assert reply.content == "Let me check."
    assert reply.tool_calls == [ToolCall("get_weather", {"city": "Paris", "days": 2})]
    assert "".join(t for k, t in runs if k == "content") == "Let me check."
    assert "".join(t for k, t in runs if k == "thinking") == "The user wants weather."


def test_text_that_only_looks_like_a_marker_is_kept():
    splitter = ReplySplitter(GEMMA4_TURNS.reply)
    runs = splitter.feed("a <| b <|chan") + splitter.finish()
    assert "".join(t for _, t in runs) == "a <| b <|chan" == splitter.reply.content
    assert splitter.reply.thinking is None


def test_an_unparsable_call_is_kept_apart():
    splitter = ReplySplitter(GEMMA4_TURNS.reply)
    splitter.feed("ok<|tool_call>call:f{broken<tool_call|>")
    splitter.finish()
    assert splitter.reply.content == "ok" and splitter.reply.tool_calls == []
    assert splitter.reply.unparsed == ["call:f{broken"]


def _render(messages, **kwargs):
    return GEMMA4_TURNS.render(messages, **kwargs)


def test_thinking_and_tools_go_in_the_system_turn():
    user = [{"role": "user", "content": "Hi"}]
    assert _render(user, thinking=True) == (
        "<bos><|turn>system\n<|think|>\n<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"
    )
    assert _render([{"role": "system", "content": "Be brief."}, *user], tools=[WEATHER]) == (
        "<bos><|turn>system\nBe brief." + text(declaration(WEATHER)) + "<turn|>\n"
        "<|turn>user\nHi<turn|>\n<|turn>model\n"
    )


def test_tool_results_continue_the_model_turn():
    rounds = [
        {"calls": [ToolCall("get_weather", {"city": "Paris"})], "results": [("get_weather", {"temp": 20})]}
    ]
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "model", "content": "", "tool_rounds": rounds},
    ]
    assert _render(messages) == (
        "<bos><|turn>user\nWeather?<turn|>\n<|turn>model\n"
        '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'
        "<|tool_response>response:get_weather{temp:20}<tool_response|>"
    )


def test_gemma_1_to_3_refuse_thinking_and_tools():
    from gemma_keras.architectures import GEMMA_TURNS

    with pytest.raises(GenerationArgumentError, match="no thinking switch or tool syntax"):
        GEMMA_TURNS.render([{"role": "user", "content": "Hi"}], thinking=True)


def test_chat_records_thinking_apart_and_sends_tool_results_back():
    """A scripted model (the stream), so the reply's parts are known."""
    scripted = iter(
        [
            [
                "<|channel>",
                "thought\nneeds a tool",
                "<channel|>",
                "Checking.",
                "<|tool_call>",
                'call:get_weather{city:<|"|>Paris<|"|>}',
                "<tool_call|>",
            ],
            ["It is ", "sunny."],
        ]
    )
    prompts = []

    def encode(messages):
        prompts.append(GEMMA4_TURNS.render(messages, tools=[WEATHER]))
        return [2]

    chat = Chat(lambda ids, **o: iter(next(scripted)), encode, syntax=GEMMA4_TURNS.reply)
    assert chat.send("Weather in Paris?") == "Checking."
    assert chat.last_reply.thinking == "needs a tool"
    assert chat.last_reply.tool_calls == [ToolCall("get_weather", {"city": "Paris"})]
    assert chat.send_tool_results({"get_weather": "sunny"}) == "It is sunny."
    assert prompts[-1].endswith(
        '<|turn>model\n<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'
        '<|tool_response>response:get_weather{value:<|"|>sunny<|"|>}<tool_response|>Checking.'
    )
    assert [m["role"] for m in chat.history] == ["user", "model"]
    assert chat.history[-1]["content"] == "Checking.It is sunny."
    with pytest.raises(GenerationArgumentError, match="no tool calls"):
        chat.send_tool_results({"get_weather": "again"})
