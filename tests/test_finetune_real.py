"""The proof that fine-tuning teaches: made-up facts on the real Gemma 3 270M.

The base model cannot know them (it must get them wrong first); after a
bounded LoRA run greedy answers must start with the taught answer for at
least 90% of the questions. About 2-3 minutes per backend on 2 CPU cores.
"""

from __future__ import annotations

import pytest

import gemma_keras as gk
from gemma_keras.testing import made_up_fact_records, made_up_facts

pytestmark = pytest.mark.real
# 20 of the 30 facts, for CI time. Measured 2026-12-01 (keras 3.15.1) on 20: torch and JAX recalled
# all 20 after 10 epochs, torch 19 after 8. On all 30, torch needed 12 epochs, and JAX recalled at
# most 4 after 6 epochs (learning rate 2e-3 to 3e-3) and none at 4e-3 or more, which diverges.
FACTS = 20
EPOCHS = 10


def _right(lm, pairs) -> list[bool]:
    prompts = [lm.encode_messages([{"role": "user", "content": q}]) for q, _ in pairs]
    replies = lm.generate(prompts, max_new_tokens=8)
    return [r.strip().startswith(a.rstrip(".")) for r, (_, a) in zip(replies, pairs, strict=True)]


def test_lora_teaches_made_up_facts(tmp_path):
    lm = gk.load()  # its own copy: fine-tuning changes the model in place
    pairs = made_up_facts()[:FACTS]
    assert sum(_right(lm, pairs)) == 0, "the base model already knows a made-up fact"
    result = lm.finetune(
        made_up_fact_records()[:FACTS],
        lora_rank=8,
        lora_alpha=16,
        epochs=EPOCHS,
        batch_size=2,
        learning_rate=2e-3,
        sequence_length=64,
        out_dir=tmp_path,
        verbose=False,
    )
    print(
        f"fine-tuned {result.steps} steps at {result.tokens_per_second:.0f} tok/s, loss {result.train_loss:.4f}"
    )
    right = _right(lm, pairs)
    assert sum(right) >= 0.9 * len(pairs), [q for (q, _), ok in zip(pairs, right, strict=True) if not ok]
    # The adapters alone carry what was learned.
    fresh = gk.load().load_adapters(tmp_path / "adapters.npz")
    assert _right(fresh, pairs[:6]) == right[:6]
