"""Perplexity of the real Gemma 3 270M in each quantization mode. Run with `-m real`.

Measured on the CPU, float32 activations, on the Zen of Python (the text of
benchmarks/quantize.py), 2026-11-30, JAX: float32 7.85, int8 weight-only 8.10
(+3.2%: the embedding alone costs +0.9%, the projections alone +3.0%; each
projection's output moves by about 1% with per-channel int8), int4 weight-only
(groups of 128) 29.7, Keras' int8 with activations 12.84 (TensorFlow 14.51,
torch 14.92 in the earlier benchmark: the backends quantize activations with
their own rounding). The issue's target,
int8 within 1% of float32, is not met with Keras' per-channel int8; the bounds
below are the measured values with a little room, so that a regression fails.

bfloat16 (`gk.load(dtype="bfloat16")`, weights and activations), 2026-12-01:
through the runner, 16 tokens a call as benchmarks/quantize.py feeds it,
torch 7.81, JAX 7.78, TensorFlow 7.99 (float32 7.85 on each); through
`score` (the whole text in one pass, as below) 1.007x, 1.035x and 1.004x
float32's. Rounding to bfloat16 moves it by a few percent either way.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import math

import numpy as np
import pytest

import gemma_keras as gk
from tests.conftest import BACKEND

pytestmark = pytest.mark.real
# Upper bound on perplexity / float32 perplexity (measured on JAX: 1.032).
MAX_RATIO = {"int8": 1.05}
# bfloat16 / float32 perplexity: measured 1.004-1.035 through `score` across the backends.
BFLOAT16_RATIO = (0.95, 1.06)


def zen_of_python() -> str:
    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints it
        import this
    return codecs.decode(this.s, "rot13")


def perplexity(lm, text: str) -> float:
    ids = lm.tokenizer.encode(text)
    logits = lm.score(ids)[:-1].astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    logprobs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return math.exp(-logprobs[np.arange(len(ids) - 1), ids[1:]].mean())


@pytest.fixture(scope="module")
def float32_perplexity(real_model):
    value = perplexity(real_model, zen_of_python())
    assert 7.7 < value < 8.0  # 7.85, as transformers computes for the same GGUF
    return value


def test_weight_only_int8_perplexity(float32_perplexity):
    """int8 weight-only within its measured bound. (int4, 3.78x, and Keras' int8 with activations,
    1.64x-1.90x, were measured by benchmarks/quantize.py; they are left out here to keep CI in budget.)"""
    lm = gk.load(quantize="int8")  # its own copy: quantize changes the model in place
    ratio = perplexity(lm, zen_of_python()) / float32_perplexity
    assert 1.0 < ratio < MAX_RATIO["int8"], ratio
    if BACKEND == "jax":
        # The decode loop converts the int8 weights where it multiplies by them. Hoisted out of the
        # loop, their float32 copies took 1,667 MB of temporaries (the embedding alone is 671 MB);
        # kept in it, 390 MB, measured 2026-12-01.
        assert _greedy_chunk_temporaries(lm) < 600 * 2**20


def _greedy_chunk_temporaries(lm) -> int:
    """Bytes of temporaries that the runner's compiled greedy chunk over a 512-position cache holds."""
    runner = lm.runner
    tokens, mask = np.zeros((1, 1), np.int32), runner.prepare_mask(np.ones((1, 512), np.int32))
    _, cache = runner.greedy_chunk(tokens, mask, runner.new_cache(1, 512), 0)
    (chunk,) = [fn for (name, _), fn in runner._compiled.items() if name == "greedy_chunk"]
    return chunk.lower(tokens, mask, cache, np.int32(0)).compile().memory_analysis().temp_size_in_bytes


def test_bfloat16_perplexity(float32_perplexity):
    """bfloat16 on the CPU keeps perplexity within a few percent of float32's on every backend."""
    lm = gk.load(dtype="bfloat16")
    assert lm.info.dtype == "bfloat16"
    ratio = perplexity(lm, zen_of_python()) / float32_perplexity
    print(f"bfloat16 / float32 perplexity: {ratio:.4f}")  # shown with -s
    assert BFLOAT16_RATIO[0] < ratio < BFLOAT16_RATIO[1], ratio
