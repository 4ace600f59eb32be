"""generate on a mesh gives the tokens and logits of one device."""

from __future__ import annotations

import numpy as np
import pytest

import gemma_keras as gk
from gemma_keras.generation.decode import Batch, Request
from tests.conftest import ARCHITECTURES, generate_ids

pytestmark = pytest.mark.distributed

# Three prompts: not a multiple of either mesh's batch axis, so padding is exercised.
PROMPTS = ["hello world", "the capital of France is", "Paris"]
STEPS = 20  # past the sliding window of 8, and over a chunk boundary
MESHES = [(8, 1), (2, 4)]


def _run(lm):
    requests = [Request(lm.tokenizer.encode(p), STEPS) for p in PROMPTS]
    state = Batch.prefill(lm.runner, requests)
    greedy = generate_ids(lm, PROMPTS, STEPS, gk.SamplingParams(), (), True)
    # A repetition penalty decodes on the host one step at a time (no chunks).
    stepped = generate_ids(lm, PROMPTS, 6, gk.SamplingParams(repetition_penalty=1.3), (), True)
    return state, greedy, stepped


@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: f"{m[0]}x{m[1]}")
@pytest.mark.parametrize("kv_heads", [1, 4])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sharded_generate_matches_one_device(tiny_gguf, reference_model, arch, kv_heads, mesh):
    ref_state, ref_greedy, ref_stepped = _run(reference_model(arch, kv_heads))

    path, _ = tiny_gguf(arch, kv_heads=kv_heads)
    dist = gk.distribute(*mesh)
    lm = gk.load(path)
    state, greedy, stepped = _run(lm)

    assert len(lm.backbone.weights[0].value.sharding.device_set) == 8
    # The batch was padded to the batch axis and split over it.
    batch, logits = state
    first = batch.cache[0][0] if isinstance(batch.cache[0], tuple) else batch.cache[0]
    assert first.shape[0] % mesh[0] == 0
    assert first.sharding.spec[0] == dist.batch_dim_name
    rows = len(PROMPTS)
    assert logits.shape[1] == ref_state[1].shape[1] == lm.tokenizer.vocabulary_size
    np.testing.assert_allclose(logits[:rows], ref_state[1][:rows], atol=1e-4, rtol=0)
    assert greedy == ref_greedy
    assert all(len(row) == STEPS for row in greedy)
    assert stepped == ref_stepped


def test_rows_that_join_a_sharded_batch_decode_as_on_one_device(tiny_gguf, reference_model):
    """`Batch.join_all` on a mesh: the joined rows' cache lands in the sharded cache's rows."""

    def joined(lm):
        encode = lm.tokenizer.encode
        batch, _ = Batch.start(lm.runner, [Request(encode(PROMPTS[1]), STEPS)], rows=4, reserve=16)
        batch.step()
        rows, _ = batch.join_all([Request(encode(p), 8) for p in (PROMPTS[0], PROMPTS[2])])
        while not batch.done:
            batch.step()
        return [batch.ids(row) for row in [0, *rows]]

    expected = joined(reference_model("gemma3", 1))
    path, _ = tiny_gguf("gemma3", kv_heads=1)
    gk.distribute(2, 4)
    assert joined(gk.load(path)) == expected
