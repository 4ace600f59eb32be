"""Chat prefix reuse: each reply prefills only the new turn, and says the same as a fresh prefill."""

from __future__ import annotations

import pytest

import gemma_keras as gk
from gemma_keras.buckets import bucket
from gemma_keras.generation.decode import KeptCache, Request, decode
from tests.conftest import ARCHITECTURES

# Messages of different lengths, so the new part of each prompt is fed in several pieces.
MESSAGES = ["hello", "what is the capital of France, and why", "tell me more about it please", "ok"]


def _fresh(lm, messages, **options):
    """The reply a one-off generation gives for the conversation so far."""
    return lm.generate(lm.encode_messages(messages), **options)


@pytest.mark.parametrize(
    ("arch", "options"),
    [(arch, {}) for arch in ARCHITECTURES] + [("gemma3", {"temperature": 0.9, "seed": 5})],
    ids=[f"{arch}-greedy" for arch in ARCHITECTURES] + ["gemma3-sampled"],
)
def test_replies_match_a_fresh_prefill_and_reuse_the_conversation(tiny_model, arch, options):
    lm = tiny_model(arch)
    options = {"max_new_tokens": 10, "stop_token_ids": (), **options}
    chat = lm.chat(system="Be brief.", **options)
    previous = 0
    for i, text in enumerate(MESSAGES):
        expected = _fresh(lm, chat.messages() + [{"role": "user", "content": text}], **options)
        prompt = lm.encode_messages(chat.messages() + [{"role": "user", "content": text}])
        assert chat.send(text) == expected, (i, text)
        if i == 0:
            assert chat.reused_tokens == 0
        else:
            # Everything up to the previous prompt's end at least; never the last token (its logits pick).
            assert previous <= chat.reused_tokens < len(prompt), (i, chat.reused_tokens)
        previous = len(prompt)


def test_a_stream_closed_early_keeps_a_valid_cache(tiny_model):
    lm = tiny_model("gemma3")
    chat = lm.chat(max_new_tokens=12, stop_token_ids=())
    stream = chat.stream("hello")
    next(stream)
    stream.close()
    expected = _fresh(
        lm, chat.messages() + [{"role": "user", "content": "and then"}], max_new_tokens=12, stop_token_ids=()
    )
    assert chat.send("and then") == expected
    assert chat.reused_tokens > 0


def test_a_new_runner_starts_a_new_cache(tiny_model):
    lm = tiny_model("gemma2")
    chat = lm.chat(max_new_tokens=6, stop_token_ids=())
    chat.send("hello")
    lm._new_runner()  # what finetune, load_adapters, merge_adapters and quantize do
    assert chat.send("again") == _fresh(lm, chat.messages()[:-1], max_new_tokens=6, stop_token_ids=())
    assert chat.reused_tokens == 0


def test_oldest_turns_are_dropped_with_a_warning_when_the_context_is_full(tiny_model):
    lm = tiny_model("gemma3")  # context 512
    options = {"max_new_tokens": 300, "stop_token_ids": ()}
    chat = lm.chat(**options)
    long = "the capital of France is Paris " * 4
    with pytest.warns(gk.TurnsDroppedWarning, match="dropped its oldest 2 messages"):
        for _ in range(4):
            before = list(chat.history)
            reply = chat.send(long)
    assert chat.dropped == before[:2] or chat.dropped[-2:] == before[:2]
    assert chat.history[0] != before[0] or len(chat.dropped) > 2
    assert reply == _fresh(lm, chat.messages()[:-1], **options)
    assert len(lm.encode_messages(chat.messages()[:-1])) + 300 <= 512


def test_a_message_too_long_alone_is_an_error_and_drops_nothing(tiny_model):
    lm = tiny_model("gemma3")
    chat = lm.chat(max_new_tokens=8)
    chat.send("hello")
    with pytest.raises(gk.GenerationArgumentError, match="context"):
        chat.send("hello " * 600)
    assert chat.dropped == [] and len(chat.history) == 2


def test_kept_cache_continues_any_prefix_exactly(tiny_model):
    lm = tiny_model("gemma")
    runner, ids = lm.runner, lm.tokenizer.encode("the capital of France is Paris and the")
    kept = KeptCache(runner, lm.tokenizer.pad_id)
    first = [e.token for e in kept.decode(Request(ids, 7)) if e.token is not None]
    length = kept._batch.length
    # Longer prompts that share all of the kept tokens (the second one past the
    # cache's length, so it is lengthened), some, or only the first.
    grown = 0
    for prompt in (
        kept.ids + ids[: 37 - len(kept.ids) % 37],
        kept.ids + ids * 12,
        ids[:5] + ids,
        ids[:1] + [7, 8, 9],
    ):
        shared = next(
            (i for i, (a, b) in enumerate(zip(kept.ids, prompt, strict=False)) if a != b), len(kept.ids)
        )
        got = [e.token for e in kept.decode(Request(prompt, 7)) if e.token is not None]
        alone = [e.token for e in decode(runner, [Request(prompt, 7)]) if e.token is not None]
        assert got == alone, (len(prompt), kept.reused)
        assert kept.reused == min(shared, len(prompt) - 1)
        grown = max(grown, kept._batch.length)
    assert first and kept.ids[: len(prompt)] == prompt
    assert grown > length  # the long prompt lengthened the kept cache instead of starting a new one


class _Counting:
    """The model's runner, with the widths of the prefill calls it was given, and `compiles` as asked."""

    def __init__(self, runner, compiles: bool):
        self._runner, self.compiles, self.widths = runner, compiles, []

    def forward_at(self, token_ids, *args, **kwargs):
        self.widths.append(token_ids.shape[1])
        return self._runner.forward_at(token_ids, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._runner, name)


@pytest.mark.parametrize("compiles", [True, False])
def test_the_new_turn_is_fed_in_one_call_padded_where_shapes_compile(tiny_model, compiles):
    lm = tiny_model("gemma3")
    runner = _Counting(lm.runner, compiles)
    kept = KeptCache(runner)
    first = lm.tokenizer.encode("hello there")
    list(kept.decode(Request(first, 3)))
    prompt = kept.ids + lm.tokenizer.encode("what is the capital of France, and why", add_bos=False)
    runner.widths.clear()
    events = list(kept.decode(Request(prompt, 2)))
    rest = len(prompt) - kept.reused
    assert runner.widths == [bucket(rest, 1) if compiles else rest], (runner.widths, rest)
    assert rest & (rest - 1)  # not a power of two: padding was needed
    assert events
