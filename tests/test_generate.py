"""generate on tiny models: greedy, batching, stops, sampling, buckets."""

from __future__ import annotations

import numpy as np
import pytest

import gemma_keras as gk
from gemma_keras.backend.devices import capabilities
from gemma_keras.generation.decode import Batch, Request
from gemma_keras.generation.keras_runner import KerasRunner
from gemma_keras.generation.runner import make_runner
from gemma_keras.generation.torch_runner import TorchRunner
from tests.conftest import ARCHITECTURES, generate_ids


def _greedy_under_full_recompute(lm, ids: list[int], got: list[int]) -> list[int]:
    """What greedy decoding by full recomputation picks after each prefix of `ids + got`.

    One uncached forward pass over the whole sequence: in a causal model the
    logits at position p see only tokens up to p, so they are the logits a
    full recomputation of that prefix gives. `got` is greedy exactly when
    this returns `got`.
    """
    logits = lm.score(list(ids) + list(got))
    return [int(t) for t in np.argmax(logits[len(ids) - 1 : len(ids) - 1 + len(got)], axis=-1)]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cached_decoding_matches_full_recompute_past_the_window(tiny_model, arch):
    lm = tiny_model(arch)
    prompt = "the capital of France"
    ids = lm.tokenizer.encode(prompt)
    steps = 24  # prompt + steps is well past the sliding window of 8
    got = generate_ids(lm, [prompt], steps, gk.SamplingParams(), (), True)[0]
    assert len(got) == steps
    assert got == _greedy_under_full_recompute(lm, ids, got)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batch_of_different_lengths_matches_one_by_one(tiny_model, arch):
    lm = tiny_model(arch)
    prompts = ["hello", "the capital of France is Paris and", "model"]
    batched = lm.generate(prompts, max_new_tokens=12, stop_token_ids=())
    single = [lm.generate(p, max_new_tokens=12, stop_token_ids=()) for p in prompts]
    assert batched == single


def test_greedy_is_deterministic_and_returns_strings(tiny_model):
    lm = tiny_model("gemma3")
    a = lm.generate("hello world", max_new_tokens=10, stop_token_ids=())
    b = lm.generate("hello world", max_new_tokens=10, stop_token_ids=())
    assert isinstance(a, str) and a == b
    assert lm.generate(["hello world"], max_new_tokens=10, stop_token_ids=()) == [a]
    assert (
        lm.generate("hello world", max_new_tokens=10, stop_token_ids=(), include_prompt=True)
        == "hello world" + a
    )


def test_stop_token_ids_end_generation_and_are_not_returned(tiny_model):
    lm = tiny_model("gemma3")
    prompt = "hello world"
    free = generate_ids(lm, [prompt], 10, gk.SamplingParams(), (), True)[0]
    stop = free[3]
    stopped = generate_ids(lm, [prompt], 10, gk.SamplingParams(), [stop], True)[0]
    assert stopped == free[: free.index(stop)]


def test_seed_makes_sampling_reproducible(tiny_model):
    lm = tiny_model("gemma2")
    kwargs = dict(max_new_tokens=12, temperature=1.0, stop_token_ids=())
    a = lm.generate("hello", seed=7, **kwargs)
    assert a == lm.generate("hello", seed=7, **kwargs)
    others = {lm.generate("hello", seed=s, **kwargs) for s in range(8)}
    assert len(others) > 1  # the seed really changes the draw


def test_top_k_one_is_greedy(tiny_model):
    lm = tiny_model("gemma3")
    greedy = lm.generate("hello", max_new_tokens=8, stop_token_ids=())
    sampled = lm.generate("hello", max_new_tokens=8, stop_token_ids=(), temperature=5.0, top_k=1, seed=3)
    assert sampled == greedy


def test_new_lengths_in_a_bucket_reuse_compiled_functions(tiny_gguf):
    path, _ = tiny_gguf("gemma")
    lm = gk.load(path)
    lm.runner = make_runner(lm.causal_lm, lm.architecture, kind="keras")
    lm.generate("hello", max_new_tokens=5, stop_token_ids=())
    traces = lm.runner.trace_count
    assert traces > 0
    lm.generate("hello", max_new_tokens=9, stop_token_ids=())
    lm.generate("hello world and the model", max_new_tokens=20, stop_token_ids=())
    if not capabilities().compiles:
        assert lm.runner.trace_count > traces  # eager: every call runs the Python again
        pytest.skip("this backend runs Keras eagerly: there is nothing to retrace")
    assert lm.runner.trace_count == traces


@pytest.mark.parametrize("rows", [2, 8])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_torch_runner_matches_the_keras_layers(tiny_model, arch, rows):
    """On torch the factory picks the plain-torch runner; it must give KerasHub's numbers.

    8 rows take the output projection padded to 16 rows (`TorchRunner._logits`)."""
    lm = tiny_model(arch)
    if not capabilities().plain_torch:
        assert isinstance(lm.runner, KerasRunner)
        with pytest.raises(gk.GenerationArgumentError, match="needs the torch backend"):
            make_runner(lm.causal_lm, lm.architecture, kind="torch")
        pytest.skip("the plain-torch runner exists only on the torch backend")
    assert isinstance(lm.runner, TorchRunner)
    keras_runner = make_runner(lm.causal_lm, lm.architecture, kind="keras")
    texts = ("the capital of France is Paris and hello world", "model", "hello", "the sea and")
    requests = [Request(lm.tokenizer.encode(texts[i % len(texts)] * (1 + i // 4)), 16) for i in range(rows)]
    fast, fast_logits = Batch.prefill(lm.runner, requests)
    slow, slow_logits = Batch.prefill(keras_runner, requests)
    np.testing.assert_allclose(fast_logits, slow_logits, atol=1e-4)
    for token in ([5, 9], [17, 3], [40, 41]):  # past the sliding window of 8
        feed = np.resize(np.array(token, np.int32), rows)[:, None]
        a, fast.cache = lm.runner.forward(feed, fast._runner_mask(), fast.cache, fast.index)
        b, slow.cache = keras_runner.forward(feed, slow._runner_mask(), slow.cache, slow.index)
        fast.index += 1
        slow.index += 1
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_keras_runner_prefills_long_prompts_in_pieces(tiny_model, arch):
    """A 64-token feed in pieces of 16 (sliding window 8) gives the logits of one whole pass."""
    lm = tiny_model(arch)
    runner = make_runner(lm.causal_lm, lm.architecture, kind="keras")
    assert runner.prefill_chunk == capabilities().prefill_chunk
    ids = np.array(
        [lm.tokenizer.encode("the capital of France is Paris and hello world " * 9)[:64]], np.int32
    )
    assert ids.shape[1] == 64
    mask = runner.prepare_mask(np.ones((1, 96), np.int32))
    runner.prefill_chunk = None
    whole_all, _ = runner.forward_all(ids, mask, runner.new_cache(1, 96), 0)
    whole_last, whole_cache = runner.forward(ids, mask, runner.new_cache(1, 96), 0)
    traces = runner.trace_count
    runner.prefill_chunk = 16
    pieces_all, _ = runner.forward_all(ids, mask, runner.new_cache(1, 96), 0)
    pieces_last, pieces_cache = runner.forward(ids, mask, runner.new_cache(1, 96), 0)
    assert runner.trace_count > traces  # the pieces ran as their own calls
    np.testing.assert_allclose(pieces_all, whole_all, atol=1e-4)
    np.testing.assert_allclose(pieces_last, whole_last, atol=1e-4)
    # The cache the pieces wrote decodes the next token as the whole pass's does.
    feed = np.array([[7]], np.int32)
    a, _ = runner.forward(feed, mask, pieces_cache, 64)
    b, _ = runner.forward(feed, mask, whole_cache, 64)
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])  # both cache layouts: stacked and pair
def test_keras_runner_attends_over_a_span_of_a_long_cache(tiny_model, arch):
    """Calls that touch the first positions of a 512-position cache run over 128 of them, with the
    logits, picks and cache of calls over all 512."""
    from keras import ops, tree

    lm = tiny_model(arch)
    runner = make_runner(lm.causal_lm, lm.architecture, kind="keras")
    ids = np.array(
        [lm.tokenizer.encode("the capital of France is Paris and hello world " * 6)[:40]], np.int32
    )
    assert ids.shape[1] == 40
    mask = runner.prepare_mask(np.ones((1, 512), np.int32))
    results = {}
    for spans in (False, True):
        runner.spans = spans
        # Keys and values at 300-339 first (a call over all 512 positions): the spanned calls keep them.
        _, cache = runner.forward(ids, mask, runner.new_cache(1, 512), 300)
        logits, cache = runner.forward(ids, mask, cache, 0)
        picks, cache = runner.greedy_chunk(np.array([[7]], np.int32), mask, cache, 40)
        after, cache = runner.forward_at(np.array([[9, 0]], np.int32), mask, cache, 40 + runner.chunk, 0)
        results[spans] = (
            logits,
            picks,
            after,
            [np.asarray(ops.convert_to_numpy(x)) for x in tree.flatten(cache)],
        )
    assert {("forward", 128), ("greedy_chunk", 128), ("forward_at", 128)} <= set(runner._compiled)
    whole, spanned = results[False], results[True]
    np.testing.assert_allclose(spanned[0], whole[0], atol=1e-4)
    np.testing.assert_array_equal(spanned[1], whole[1])
    np.testing.assert_allclose(spanned[2], whole[2], atol=1e-4)
    for a, b in zip(spanned[3], whole[3], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)  # positions 300-339 too
        assert np.abs(np.take(a, range(300, 340), axis=a.ndim - 3)).max() > 0


def test_torch_runner_follows_norm_weights_changed_after_a_call(tiny_gguf):
    """The runner keeps each norm's `1 + w` between calls; a weight assigned later must still count."""
    if not capabilities().plain_torch:
        pytest.skip("the plain-torch runner exists only on the torch backend")
    lm = gk.load(tiny_gguf("gemma3")[0])  # its own copy: the weights change below (tiny_model's are shared)
    keras_runner = make_runner(lm.causal_lm, lm.architecture, kind="keras")
    requests = [Request(lm.tokenizer.encode("the capital of France is"), 4)]
    before = Batch.prefill(lm.runner, requests)[1]
    for block in lm.backbone.transformer_layers:
        for norm in (block.pre_attention_norm, block.attention.query_norm):
            norm.scale.assign(np.asarray(norm.scale.numpy()) + 0.5)
    after = Batch.prefill(lm.runner, requests)[1]
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(after, Batch.prefill(keras_runner, requests)[1], atol=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_torch_runner_prefills_long_prompts_in_chunks(tiny_model, arch, monkeypatch):
    """Chunks of 16 over a 70-token prompt (sliding window 8): each chunk's sliding layers read only the
    keys in their window; the logits at every position must still be KerasHub's."""
    lm = tiny_model(arch)
    if not capabilities().plain_torch:
        pytest.skip("the plain-torch runner exists only on the torch backend")
    from gemma_keras.generation import torch_runner

    keras_runner = make_runner(lm.causal_lm, lm.architecture, kind="keras")
    ids = np.array(
        [lm.tokenizer.encode("the capital of France is Paris and hello world " * 6)[:70]], np.int32
    )
    length = 128
    mask = np.zeros((1, length), np.int32)
    mask[0, : ids.shape[1]] = 1
    want, _ = keras_runner.forward_all(
        ids, keras_runner.prepare_mask(mask), keras_runner.new_cache(1, length), 0
    )
    monkeypatch.setattr(torch_runner, "PREFILL_CHUNK", 16)
    runner = lm.runner
    got, cache = runner.forward_all(ids, runner.prepare_mask(mask), runner.new_cache(1, length), 0)
    np.testing.assert_allclose(got, want, atol=1e-4)
    last, _ = runner.forward(ids, runner.prepare_mask(mask), runner.new_cache(1, length), 0)
    np.testing.assert_allclose(last, want[:, -1], atol=1e-4)
