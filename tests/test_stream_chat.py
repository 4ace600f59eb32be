"""stream, stop strings and chat, on tiny models."""

from __future__ import annotations

import pytest

import gemma_keras as gk
from gemma_keras.architectures.chat_format import render_messages
from gemma_keras.generation.streaming import TextCollector
from tests.conftest import ARCHITECTURES, generate_ids


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_stream_pieces_join_to_generate(tiny_model, arch):
    lm = tiny_model(arch)
    for kwargs in ({}, {"temperature": 1.0, "seed": 3}, {"stop": ["e", "xx"]}):
        pieces = list(lm.stream("hello world", max_new_tokens=20, stop_token_ids=(), **kwargs))
        assert "".join(pieces) == lm.generate("hello world", max_new_tokens=20, stop_token_ids=(), **kwargs)


def test_stop_string_across_token_boundaries(tiny_model):
    lm = tiny_model("gemma3")
    # Sampled (seeded), so the text varies more than the tiny model's greedy loop.
    sample = dict(max_new_tokens=24, stop_token_ids=(), temperature=1.0, seed=1)
    free = lm.generate("the model", **sample)
    ids = generate_ids(lm, ["the model"], 24, gk.SamplingParams(temperature=1.0, seed=1), (), True)[0]
    assert len(set(ids)) > 5
    pieces = [lm.tokenizer.decode(ids[: i + 1]) for i in range(len(ids))]
    # A stop string that starts inside one token and ends inside a later one.
    boundary = len(pieces[2])
    stop = free[boundary - 1 : boundary + 2]
    assert len(stop) == 3
    got = lm.generate("the model", stop=stop, **sample)
    assert got == free[: free.find(stop)]
    assert stop not in got
    # Several stop strings: the one found earliest in the text wins.
    other = free[boundary + 4 : boundary + 6]
    first = min(free.find(other), free.find(stop))
    assert lm.generate("the model", stop=[other, stop], **sample) == free[:first]


def test_collector_never_shows_a_broken_character():
    text = "é😀"
    raw = text.encode("utf-8")

    def decode(ids):
        return bytes(ids).decode("utf-8", errors="replace")

    c = TextCollector(decode)
    pieces = [c.feed(b) for b in raw] + [c.finish()]
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) == text
    assert [p for p in pieces if p] == ["é", "😀"]


def test_collector_holds_back_a_possible_stop_prefix():
    c = TextCollector(lambda ids: "".join(chr(i) for i in ids), stop=["END"])
    out = [c.feed(ord(ch)) for ch in "abEN"]
    assert "".join(out) == "ab"  # "EN" could still become "END"
    assert c.feed(ord("D")) == "" and c.stopped and c.text == "ab"


def test_stream_of_multibyte_text_is_never_broken(tiny_model):
    """Sampling wanders into byte-fallback pieces; no piece may show half a character."""
    lm = tiny_model("gemma2")
    multibyte = 0
    for seed in range(6):
        kwargs = dict(max_new_tokens=24, stop_token_ids=(), temperature=3.0, seed=seed)
        pieces = list(lm.stream("中", **kwargs))
        final = lm.generate("中", **kwargs)
        # Pieces are never taken back, so a broken character would show up as
        # a U+FFFD in the join that the final text does not have.
        assert "".join(pieces) == final
        multibyte += sum(len(ch.encode("utf-8")) > 1 and ch != "\ufffd" for ch in final)
    assert multibyte > 0, "the test never produced a multi-byte character"


def test_closing_a_stream_early_is_clean(tiny_model):
    lm = tiny_model("gemma3")
    stream = lm.stream("hello", max_new_tokens=50, stop_token_ids=())
    first = next(stream)
    stream.close()
    assert isinstance(first, str)


def test_chat_template_character_for_character():
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    assert render_messages(messages) == (
        "<bos><start_of_turn>user\nAnswer briefly.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert render_messages(messages[1:3], add_generation_prompt=False) == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
    )


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "model", "content": "first"}],
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}],
        [{"role": "robot", "content": "a"}],
        [{"content": "a"}],
        "just a string",
    ],
)
def test_bad_messages_are_rejected(messages):
    with pytest.raises(gk.GenerationArgumentError):
        render_messages(messages)


def test_chat_keeps_multi_turn_history(tiny_model):
    lm = tiny_model("gemma3")
    chat = lm.chat(system="Be brief.", max_new_tokens=6)
    first = chat.send("hello")
    assert chat.history == [{"role": "user", "content": "hello"}, {"role": "model", "content": first}]
    second = "".join(chat.stream("world"))
    assert [m["role"] for m in chat.history] == ["user", "model", "user", "model"]
    assert chat.history[-1]["content"] == second
    # The second prompt holds the first exchange, in the template, BOS once.
    expected_prompt = render_messages(chat.messages()[:-1])
    assert expected_prompt.count("<bos>") == 1 and "Be brief.\n\nhello" in expected_prompt
    ids = lm.encode_messages(chat.messages()[:-1])
    assert ids == lm.tokenizer.encode(expected_prompt, add_bos=False, special=True)
    assert ids.count(lm.tokenizer.bos_id) == 1
    reply = lm.generate(ids, max_new_tokens=6)
    assert reply == second
    chat.reset()
    assert chat.history == []


def test_chat_reply_ends_at_the_default_stop_tokens(tiny_model, monkeypatch):
    lm = tiny_model("gemma3")
    end_of_turn = lm.tokenizer.token_to_id("<end_of_turn>")
    assert end_of_turn in lm.default_stop_ids and lm.tokenizer.eos_id in lm.default_stop_ids
    # The tiny model never picks <end_of_turn>, so make one token it does pick
    # a default stop, and check the chat reply ends right before it.
    prompt = lm.encode_messages([{"role": "user", "content": "hello"}])
    ids = generate_ids(lm, [prompt], 8, gk.SamplingParams(), ())[0]
    monkeypatch.setattr(lm, "default_stop_ids", (ids[3],))
    reply = lm.chat(max_new_tokens=8).send("hello")
    assert reply == lm.tokenizer.decode(ids[: ids.index(ids[3])])


def test_chat_stream_closed_early_records_the_partial_reply(tiny_model):
    lm = tiny_model("gemma3")
    chat = lm.chat(max_new_tokens=12, stop_token_ids=())
    stream = chat.stream("hello")
    first = next(stream)
    stream.close()
    assert chat.history == [{"role": "user", "content": "hello"}, {"role": "model", "content": first}]


def test_chat_over_the_context_is_an_error_and_records_nothing(tiny_model):
    lm = tiny_model("gemma3")
    chat = lm.chat(max_new_tokens=8)
    with pytest.raises(gk.GenerationArgumentError, match="context"):
        chat.send("hello " * 600)
    assert chat.history == []


def test_chat_warns_on_a_pretrained_model_and_checks_its_arguments(tiny_model, tiny_gguf):
    lm = tiny_model("gemma3")
    assert lm.info.instruction_tuned is False  # a GGUF whose name has no -it / instruct marker
    with pytest.warns(gk.NotInstructionTunedWarning, match="pretrained model"):
        lm.chat()
    with pytest.raises(gk.GenerationArgumentError, match="unknown chat argument"):
        lm.chat(foo=1)  # refused when made, not at the first send


def test_chat_format_comes_from_the_architecture_record(tiny_model):
    for arch in ARCHITECTURES:
        lm = tiny_model(arch)
        assert lm.architecture.chat_format.render([{"role": "user", "content": "hi"}]) == render_messages(
            [{"role": "user", "content": "hi"}]
        )
        end = lm.tokenizer.token_to_id(lm.architecture.chat_format.end)
        assert set(lm.default_stop_ids) == {lm.tokenizer.eos_id, end}
