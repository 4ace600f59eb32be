"""The decode loop on its own: rows that join and leave, per-row sampling, linear detokenization."""

from __future__ import annotations

import numpy as np
import pytest

import gemma_keras as gk
from gemma_keras.generation.decode import (
    Batch,
    Request,
    cache_bucket,
    generate_ids,
    next_token_logits,
    prompt_bucket,
)
from gemma_keras.generation.streaming import TextCollector
from tests.conftest import ARCHITECTURES

GREEDY = gk.SamplingParams()


def _alone(lm, prompt: list[int], steps: int) -> list[int]:
    return generate_ids(lm.runner, [prompt], steps)[0]


def _count_forward_calls(runner, monkeypatch):
    """Counts `runner.forward` calls until the test ends; returns a function that says how many so far."""
    calls = []
    forward = runner.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    monkeypatch.setattr(runner, "forward", counted)
    return lambda: len(calls)


def _run_to_end(batch: Batch) -> None:
    while not batch.done:
        batch.step()


def test_long_prompts_and_caches_grow_by_steps_not_by_doubling():
    # Short ones stay powers of two: few compiled shapes.
    assert [prompt_bucket(n) for n in (1, 16, 17, 300, 512)] == [16, 16, 32, 512, 512]
    assert [cache_bucket(n) for n in (1, 129, 600, 1024)] == [128, 256, 1024, 1024]
    # Long ones by 512 (a prefill piece) and 1,024 positions.
    assert [prompt_bucket(n) for n in (513, 1025, 2049, 8192)] == [1024, 1536, 2560, 8192]
    assert [cache_bucket(n) for n in (1025, 2065, 8209)] == [2048, 3072, 9216]


def test_a_long_prompt_gets_a_cache_only_as_long_as_it_needs(tiny_model):
    lm = tiny_model("gemma3")
    prompt = (lm.tokenizer.encode("the capital of France is Paris and hello world " * 40) * 8)[:1100]
    batch, _ = Batch.start(lm.runner, [Request(prompt, 4)])
    assert batch.index == 1536  # the prompt's bucket, where decoding starts
    assert batch.length == 2048  # 1,536 + 4 + a chunk, by 1,024s: not 4,096


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_row_that_joins_a_running_batch_decodes_as_if_alone(tiny_model, arch):
    lm = tiny_model(arch)
    first = lm.tokenizer.encode("the capital of France is Paris and the model")
    late = lm.tokenizer.encode("hello world")
    batch, _ = Batch.start(lm.runner, [Request(first, 60)], rows=2)
    assert batch.free_rows() == [1]
    for _ in range(2):
        batch.step()
    assert batch.index >= 16  # past the joining prompt's bucket
    request = Request(late, 12)
    assert batch.can_join(request)
    row, _ = batch.join(request)
    assert row == 1
    _run_to_end(batch)
    assert batch.ids(row) == _alone(lm, late, 12)
    assert batch.ids(0) == _alone(lm, first, 60)  # the running row was not disturbed


def test_a_row_that_leaves_frees_its_slot_for_another(tiny_model):
    lm = tiny_model("gemma3")
    a, b, c = (lm.tokenizer.encode(t) for t in ("hello world", "the model", "Paris is the capital"))
    batch, _ = Batch.start(lm.runner, [Request(a, 40), Request(c, 30)])
    batch.step()
    batch.leave(0)
    assert batch.free_rows() == [0] and batch.rows[0].finish_reason == "cancelled"
    for _ in range(2):
        batch.step()
    row, _ = batch.join(Request(b, 10))
    assert row == 0
    _run_to_end(batch)
    assert batch.ids(0) == _alone(lm, b, 10)
    assert batch.ids(1) == _alone(lm, c, 30)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_resizing_and_a_reserve_change_no_row(tiny_model, arch):
    """Rows moved into a bigger and then a smaller cache, after prompts placed at a reserved column."""
    lm = tiny_model(arch)
    prompts = [lm.tokenizer.encode(t) for t in ("hello world", "the model of", "Paris is the capital")]
    budgets = [48, 20, 40]  # each longer than one greedy chunk
    batch, _ = Batch.start(
        lm.runner, [Request(p, n) for p, n in zip(prompts, budgets, strict=True)], reserve=64
    )
    assert batch.index == 64 and batch.size == 3
    batch.step()
    moved = batch.resize(8)
    assert batch.size == 8 and moved == {0: 0, 1: 1, 2: 2} and len(batch.free_rows()) == 5
    row, _ = batch.join(Request(lm.tokenizer.encode("and the"), 30))
    while batch.rows[1].finish_reason is None:
        batch.step()
    moved = batch.resize(2)  # row 1 ended: rows 0, 2 and the joined row move down
    assert batch.size == 3 and moved == {0: 0, 2: 1, row: 2}
    _run_to_end(batch)
    assert batch.ids(0) == _alone(lm, prompts[0], 48)
    assert batch.ids(1) == _alone(lm, prompts[2], 40)
    assert batch.ids(2) == _alone(lm, lm.tokenizer.encode("and the"), 30)


def test_join_refuses_what_does_not_fit(tiny_model):
    lm = tiny_model("gemma3")
    batch, _ = Batch.start(lm.runner, [Request(lm.tokenizer.encode("hello"), 4)])
    long_prompt = lm.tokenizer.encode("the capital of France is Paris " * 8)
    assert not batch.can_join(Request(long_prompt, 4))  # no free row, and the prompt is too long
    with pytest.raises(gk.GenerationArgumentError, match="cannot join"):
        batch.join(Request(long_prompt, 4))


def test_each_row_has_its_own_seeded_draw(tiny_model):
    lm = tiny_model("gemma2")
    kwargs = dict(max_new_tokens=12, temperature=1.0, seed=5, stop_token_ids=())
    rows = lm.generate(["hello", "hello", "hello"], **kwargs)
    assert rows[0] == lm.generate("hello", **kwargs)  # row 0 samples like the prompt alone
    assert len(set(rows)) > 1  # and the rows of one call differ
    assert rows == lm.generate(["hello", "hello", "hello"], **kwargs)


def test_greedy_and_sampled_rows_share_a_batch(tiny_model):
    lm = tiny_model("gemma3")
    p, q = lm.tokenizer.encode("hello world"), lm.tokenizer.encode("the model")
    sampled = gk.SamplingParams(temperature=1.0, seed=2)
    batch, _ = Batch.start(lm.runner, [Request(p, 20), Request(q, 20, sampled)])
    _run_to_end(batch)
    assert batch.ids(0) == _alone(lm, p, 20)
    assert batch.ids(1) == generate_ids(lm.runner, [q], 20, sampled)[0]


def test_next_token_logits_match_the_first_generated_token(tiny_model):
    lm = tiny_model("gemma")
    ids = lm.tokenizer.encode("hello world")
    logits = next_token_logits(lm.runner, ids)
    assert logits.shape == (lm.tokenizer.vocabulary_size,)
    np.testing.assert_array_equal(logits, lm.logits(ids))
    assert int(np.argmax(logits)) == _alone(lm, ids, 1)[0]


def test_requests_are_checked_against_the_vocabulary(tiny_model):
    lm = tiny_model("gemma3")
    vocab = lm.tokenizer.vocabulary_size
    with pytest.raises(gk.GenerationArgumentError, match="outside the vocabulary"):
        generate_ids(lm.runner, [[2, vocab]], 3)
    with pytest.raises(gk.GenerationArgumentError, match="outside the vocabulary"):
        generate_ids(lm.runner, [[2, -1]], 3)
    with pytest.raises(gk.GenerationArgumentError, match="stop_token_ids"):
        generate_ids(lm.runner, [[2, 5]], 3, stop_ids=[vocab + 3])
    with pytest.raises(gk.GenerationArgumentError, match="max_new_tokens"):
        generate_ids(lm.runner, [[2, 5]], 0)
    with pytest.raises(gk.GenerationArgumentError, match="encodes to no tokens"):
        generate_ids(lm.runner, [[]], 3)


def test_incremental_detokenization_equals_a_full_decode(tiny_model):
    tok = tiny_model("gemma3").tokenizer
    rng = np.random.default_rng(0)
    ids = rng.integers(0, tok.vocabulary_size, size=400).tolist()
    c = TextCollector(tok.decode)
    pieces = [c.feed(i) for i in ids] + [c.finish()]
    assert c.text == "".join(pieces) == tok.decode(ids)


def test_detokenization_is_linear_in_length():
    decoded = [0]

    def decode(ids):
        decoded[0] += len(ids)
        return "".join(chr(97 + i % 26) for i in ids)

    c = TextCollector(decode, stop=["zzz"])
    n = 3000
    for i in range(n):
        c.feed(i)
    # A full decode per token would touch n * (n + 1) / 2 = 4.5 million ids.
    assert decoded[0] < 5 * n


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_rows_that_join_together_decode_as_if_alone(tiny_model, arch, monkeypatch):
    """Three prompts of different buckets prefilled in one call and copied into a running batch."""
    lm = tiny_model(arch)
    first = lm.tokenizer.encode("the capital of France is Paris and the model")
    late = [lm.tokenizer.encode(t) for t in ("hello", "the model of the sea and", "Paris " * 12)]
    batch, _ = Batch.start(lm.runner, [Request(first, 70)], rows=4, reserve=32)
    batch.step()
    calls = _count_forward_calls(lm.runner, monkeypatch)
    rows, events = batch.join_all([Request(p, 12) for p in late])
    assert calls() == 1  # one prefill for the three
    assert rows == [1, 2, 3] and sorted({e.row for e in events}) == rows
    _run_to_end(batch)
    for row, prompt in zip(rows, late, strict=True):
        assert batch.ids(row) == _alone(lm, prompt, 12)
    assert batch.ids(0) == _alone(lm, first, 70)


def test_join_all_refuses_more_requests_than_free_rows(tiny_model):
    lm = tiny_model("gemma3")
    batch, _ = Batch.start(lm.runner, [Request(lm.tokenizer.encode("hello"), 40)], rows=2, reserve=32)
    with pytest.raises(gk.GenerationArgumentError, match="free rows: 1 for 2 requests"):
        batch.join_all([Request(lm.tokenizer.encode("the"), 4)] * 2)
    assert batch.free_rows() == [1]  # nothing was placed
