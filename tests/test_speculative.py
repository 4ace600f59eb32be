"""Speculative decoding gives the model's own greedy tokens, whatever the draft proposes."""

from __future__ import annotations

import numpy as np
import pytest

import gemma_keras as gk
from gemma_keras.errors import GenerationArgumentError
from gemma_keras.generation.decode import Request
from gemma_keras.generation.speculative import DraftStats, speculative_decode
from tests.conftest import generate_ids

PROMPTS = ["hello world", "the capital of France is", "model user the"]


@pytest.fixture(scope="module")
def models(tiny_gguf):
    """A tiny Gemma 3 and an unrelated one (another seed) with the same vocabulary."""
    target, _ = tiny_gguf("gemma3", seed=0)
    draft, _ = tiny_gguf("gemma3", seed=1)
    return gk.load(target), gk.load(draft)


def _ids(lm, text):
    return lm.tokenizer.encode(text)


@pytest.mark.parametrize("lookahead", [1, 3, 8])
def test_output_is_the_models_own_greedy_output(models, lookahead):
    lm, draft = models
    for prompt in PROMPTS:
        want = lm.generate(prompt, max_new_tokens=24, stop_token_ids=())
        got = lm.generate(prompt, max_new_tokens=24, stop_token_ids=(), draft=draft, lookahead=lookahead)
        assert got == want
        stats = lm.last_draft_stats
        assert stats.tokens == 24 and stats.proposed > 0
    # The unrelated draft is mostly wrong, so most proposals were checked and refused.
    assert stats.acceptance_rate < 1.0


def test_a_draft_equal_to_the_model_is_always_accepted(models):
    lm, _ = models
    want = lm.generate(PROMPTS[0], max_new_tokens=20, stop_token_ids=())
    assert lm.generate(PROMPTS[0], max_new_tokens=20, stop_token_ids=(), draft=lm, lookahead=4) == want
    stats = lm.last_draft_stats
    assert stats.acceptance_rate == 1.0
    assert stats.target_passes < 20 and stats.tokens_per_pass > 4  # 5 tokens a pass, bar the last


class _Liar:
    """A draft runner that always proposes one token, whatever the text says."""

    def __init__(self, runner, token: int):
        self.runner, self.token = runner, token
        self.vocab_size, self.chunk, self.batch_multiple = (
            runner.vocab_size,
            runner.chunk,
            runner.batch_multiple,
        )

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def forward(self, token_ids, mask, cache, index):
        logits, cache = self.runner.forward(token_ids, mask, cache, index)
        logits = np.full_like(logits, -1.0)
        logits[:, self.token] = 1.0
        return logits, cache


def test_unverified_proposals_would_change_the_output(models):
    """Proposals the model would not pick never get through: the liar's token appears only where greedy has it."""
    lm, _ = models
    ids = _ids(lm, PROMPTS[1])
    want = generate_ids(lm, [ids], 16)[0]
    liar_token = next(t for t in range(10, lm.tokenizer.vocabulary_size) if t not in want)
    stats = DraftStats()
    events = speculative_decode(
        lm.runner, _Liar(lm.runner, liar_token), Request(ids, 16), lookahead=4, stats=stats
    )
    got = [e.token for e in events if e.token is not None]
    assert got == want
    assert stats.accepted == 0 and stats.proposed > 0


def test_stream_with_a_draft_joins_to_generate(models):
    lm, draft = models
    want = lm.generate(PROMPTS[2], max_new_tokens=12, stop_token_ids=())
    assert "".join(lm.stream(PROMPTS[2], max_new_tokens=12, stop_token_ids=(), draft=draft)) == want


def test_stops_and_budgets_hold(models):
    lm, draft = models
    want = lm.generate(PROMPTS[0], max_new_tokens=30)  # default stop ids
    assert lm.generate(PROMPTS[0], max_new_tokens=30, draft=draft) == want
    want = lm.generate(PROMPTS[0], max_new_tokens=7, stop_token_ids=())
    assert lm.generate(PROMPTS[0], max_new_tokens=7, stop_token_ids=(), draft=draft, lookahead=5) == want
    assert lm.last_draft_stats.tokens == 7


def test_what_speculation_cannot_do_is_refused(models, tiny_gguf):
    lm, draft = models
    with pytest.raises(GenerationArgumentError, match="greedily"):
        lm.generate("hi", temperature=0.7, draft=draft)
    with pytest.raises(GenerationArgumentError, match="lookahead"):
        lm.generate("hi", draft=draft, lookahead=0)
    with pytest.raises(GenerationArgumentError, match="loaded model"):
        lm.generate("hi", draft="gemma3_1b")
    other_vocab, _ = tiny_gguf("gemma")  # Gemma 1's tiny vocabulary has no image tokens
    other = gk.load(other_vocab)
    if other.tokenizer.proto != lm.tokenizer.proto:
        with pytest.raises(GenerationArgumentError, match="tokenizer"):
            lm.generate("hi", draft=other)
