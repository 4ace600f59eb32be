"""Samplers are pure functions on logits."""

from __future__ import annotations

import numpy as np
import pytest

import gemma_keras as gk
from gemma_keras.generation import sampling
from gemma_keras.generation.sampling import SamplingParams, next_tokens


def _logits(batch=4, vocab=50, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, vocab)).astype(np.float32) * 3


def test_greedy_is_argmax():
    logits = _logits()
    assert (next_tokens(logits, SamplingParams(), np.random.default_rng(0)) == logits.argmax(-1)).all()


@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_k_never_leaves_the_top_k(k):
    logits = _logits()
    allowed = np.argsort(-logits, axis=-1)[:, :k]
    rng = np.random.default_rng(1)
    params = SamplingParams(temperature=2.0, top_k=k)
    for _ in range(200):
        picks = next_tokens(logits, params, rng)
        assert all(p in allowed[row] for row, p in enumerate(picks))


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], dtype=np.float32))
    kept = np.isfinite(sampling.top_p_filter(logits, 0.7))[0]
    assert kept.tolist() == [True, True, False, False]
    kept = np.isfinite(sampling.top_p_filter(logits, 0.5))[0]
    assert kept.tolist() == [True, False, False, False]
    assert np.isfinite(sampling.top_p_filter(logits, 1.0)).all()


def test_min_p_filters_relative_to_the_top_token():
    logits = np.log(np.array([[0.6, 0.3, 0.08, 0.02]], dtype=np.float32))
    kept = np.isfinite(sampling.min_p_filter(logits, 0.1))[0]  # threshold 0.06
    assert kept.tolist() == [True, True, True, False]


def test_repetition_penalty_lowers_seen_tokens():
    logits = np.array([[2.0, -1.0, 2.0, 0.5]], dtype=np.float32)
    seen = np.array([[True, True, False, False]])
    out = sampling.apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 2.0, 0.5]]


def test_sampling_follows_the_distribution():
    logits = np.log(np.array([[0.7, 0.2, 0.1]], dtype=np.float32))
    rng = np.random.default_rng(0)
    picks = [int(next_tokens(logits, SamplingParams(temperature=1.0), rng)[0]) for _ in range(4000)]
    freq = np.bincount(picks, minlength=3) / len(picks)
    np.testing.assert_allclose(freq, [0.7, 0.2, 0.1], atol=0.03)


def test_zero_probability_tokens_are_never_drawn():
    logits = np.array([[-np.inf, 0.0, -np.inf, 0.0, -np.inf]], dtype=np.float32)
    rng = np.random.default_rng(0)
    picks = {int(next_tokens(logits, SamplingParams(temperature=1.0), rng)[0]) for _ in range(500)}
    assert picks == {1, 3}


def test_seed_reproduces_draws():
    logits = _logits()
    params = SamplingParams(temperature=1.0, top_p=0.9)
    a = [next_tokens(logits, params, np.random.default_rng(5)).tolist() for _ in range(3)]
    assert a[0] == a[1] == a[2]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -1},
        {"top_k": 0},
        {"top_p": 0},
        {"top_p": 2},
        {"min_p": 1.5},
        {"repetition_penalty": -1},
        {"seed": "x"},
    ],
)
def test_invalid_values_are_rejected(kwargs):
    with pytest.raises(gk.GenerationArgumentError, match=next(iter(kwargs))):
        SamplingParams(**kwargs)
