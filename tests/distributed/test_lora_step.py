"""A LoRA training step on a mesh gives the loss and weights of one device."""

from __future__ import annotations

import numpy as np
import pytest

import gemma_keras as gk
from tests.distributed.lora_step import enable_lora, fixed_batch, train_step

pytestmark = pytest.mark.distributed

CASES = [
    ("gemma", 1, (2, 4)),
    ("gemma2", 4, (2, 4)),
    ("gemma3", 1, (2, 4)),
    ("gemma3", 4, (8, 1)),
]


@pytest.mark.parametrize(
    ("arch", "kv_heads", "mesh"), CASES, ids=[f"{a}-kv{k}-{m[0]}x{m[1]}" for a, k, m in CASES]
)
def test_lora_step_matches_one_device(tiny_gguf, arch, kv_heads, mesh):
    path, _ = tiny_gguf(arch, kv_heads=kv_heads)
    results = []
    for setting in (None, mesh):
        gk.distribute(None) if setting is None else gk.distribute(*setting)
        lm = gk.load(path)  # a fresh model each time: enable_lora changes it
        start = {v.path: np.asarray(v.value) for v in enable_lora(lm)}
        x, y, weight = fixed_batch(lm.tokenizer.vocabulary_size)
        loss, weights = train_step(lm, x, y, weight)
        results.append((start, loss, weights, lm))

    (start, loss, weights, _), (start_d, loss_d, weights_d, lm_d) = results
    assert np.isfinite(loss) and loss > 0
    assert loss_d == pytest.approx(loss, abs=1e-5)
    # KerasHub's default LoRA targets: query and value, an A and a B factor each, in 2 blocks.
    assert weights.keys() == weights_d.keys() and len(weights) == 2 * 2 * 2
    for name in weights:
        np.testing.assert_allclose(start_d[name], start[name], atol=0)
        assert not np.allclose(weights[name], start[name]), f"{name} did not train"
        np.testing.assert_allclose(weights_d[name], weights[name], atol=1e-5, rtol=0, err_msg=name)
    # The step ran on the mesh: the base weights stayed there, the LoRA factors too.
    for v in lm_d.backbone.weights:
        assert len(v.value.sharding.device_set) == 8, v.path


@pytest.mark.parametrize("mesh", [(2, 4), (8, 1)], ids=["2x4", "8x1"])
def test_finetune_on_a_mesh_matches_one_device(tiny_gguf, mesh):
    from gemma_keras.training.lora import adapter_arrays

    path, _ = tiny_gguf("gemma3", kv_heads=1)
    records = [{"prompt": f"question {i}", "response": f"answer number {i}"} for i in range(16)]
    options = dict(lora_rank=4, batch_size=8, epochs=2, learning_rate=1e-2, sequence_length=64, verbose=False)
    results = []
    for setting in (None, mesh):
        gk.distribute(None) if setting is None else gk.distribute(*setting)
        lm = gk.load(path)
        history = lm.finetune(records, **options).history
        results.append(([h["loss"] for h in history], adapter_arrays(lm.backbone), lm))
    gk.distribute(None)
    (losses, adapters, _), (losses_d, adapters_d, lm_d) = results
    assert losses_d == pytest.approx(losses, abs=1e-5)
    for name in adapters:
        np.testing.assert_allclose(adapters_d[name], adapters[name], atol=1e-5, rtol=0, err_msg=name)
    assert all(len(v.value.sharding.device_set) == 8 for v in lm_d.backbone.weights)
    # The tuned model generates on the mesh too.
    assert isinstance(lm_d.generate("question 3", max_new_tokens=4), str)
