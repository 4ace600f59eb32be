"""LoRA fine-tuning on tiny random models: training, freezing, resume, adapters, merge."""

from __future__ import annotations

import numpy as np
import pytest

import gemma_keras as gk
from gemma_keras.errors import FinetuneError
from gemma_keras.training.data import make_batch, tokenize_records
from gemma_keras.training.loop import scored_positions_model
from gemma_keras.training.lora import lora_layers
from tests.conftest import ARCHITECTURES

RECORDS = [{"prompt": f"question {i}", "response": f"answer number {i}"} for i in range(10)]
FAST = dict(lora_rank=4, batch_size=4, learning_rate=1e-2, sequence_length=64, verbose=False)


def _numpy(variable) -> np.ndarray:
    from keras import ops

    return np.array(ops.convert_to_numpy(variable))


@pytest.fixture
def fresh(tiny_gguf):
    """A new, untrained tiny model for each call (fine-tuning changes a model in place)."""

    def make(architecture: str = "gemma3"):
        path, _ = tiny_gguf(architecture)
        return gk.load(path)

    return make


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_scored_positions_give_the_causal_lm_cross_entropy(fresh, architecture):
    lm = fresh(architecture)
    examples, _ = tokenize_records(RECORDS[:3], lm.tokenizer, 64)
    x, y, w = make_batch(examples, 64, lm.tokenizer.pad_id)
    nll = _numpy(scored_positions_model(lm.backbone)(x))
    full = _numpy(lm.causal_lm({"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]}))
    logits = np.take_along_axis(full, x["positions"][:, :, None], axis=1).astype(np.float64)
    top = logits.max(axis=-1)
    expected = (
        top
        + np.log(np.exp(logits - top[..., None]).sum(-1))
        - np.take_along_axis(logits, y[..., None], -1)[..., 0]
    )
    assert w.sum() > 0
    np.testing.assert_allclose(nll[w > 0], expected[w > 0], atol=1e-4)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_training_lowers_the_loss_and_leaves_base_weights_alone(fresh, architecture):
    lm = fresh(architecture)
    before = {v.path: _numpy(v) for v in lm.backbone.weights}
    result = lm.finetune(RECORDS, epochs=4, validation_data=RECORDS[:4], **FAST)
    assert result.steps == 12 and len(result.history) == 12
    assert result.history[-1]["loss"] < result.history[0]["loss"] - 0.5
    assert result.val_loss is not None and np.isclose(result.val_perplexity, np.exp(result.val_loss))
    after = {v.path: _numpy(v) for v in lm.backbone.weights}
    assert all(np.array_equal(before[p], after[p]) for p in before), "a frozen base weight changed"
    trainable = {v.path.rsplit("/", 1)[1] for v in lm.causal_lm.trainable_variables}
    assert trainable == {"lora_kernel_a", "lora_kernel_b"}
    # Frozen at the variable level too (on torch: no gradient is computed for them).
    assert {v.path.rsplit("/", 1)[1] for v in lm.backbone.weights if v.trainable} == trainable
    moved = [p for p in after if p.endswith("lora_kernel_b") and np.abs(after[p]).max() > 0]
    assert len(moved) == 7 * lm.backbone.num_layers  # every target of every layer learned


def test_targets_choose_the_adapted_layers(fresh):
    lm = fresh()
    lm.finetune(RECORDS[:4], targets="attention", max_steps=1, **FAST)
    names = {layer.name for layer in lora_layers(lm.backbone)}
    assert names == {"query", "key", "value", "attention_output"}
    with pytest.raises(FinetuneError, match="already has LoRA adapters"):
        lm.finetune(RECORDS[:4], targets=["down"], max_steps=1, **FAST)


def test_same_seed_same_result_and_generation_uses_the_adapters(fresh):
    a, b = fresh(), fresh()
    ids = a.tokenizer.encode("question 1")
    base_logits = a.logits(ids)
    ra = a.finetune(RECORDS, epochs=2, seed=3, **FAST)
    rb = b.finetune(RECORDS, epochs=2, seed=3, **FAST)
    assert [h["loss"] for h in ra.history] == pytest.approx([h["loss"] for h in rb.history], rel=1e-6)
    # The decode engine runs the adapted model: its logits moved, and equal
    # the Keras model's own forward pass.
    assert not np.allclose(a.logits(ids), base_logits, atol=1e-3)
    np.testing.assert_allclose(a.logits(ids), a.score(ids)[-1], atol=1e-4)


def test_gradient_accumulation_counts_updates(fresh):
    lm = fresh()
    result = lm.finetune(RECORDS, epochs=2, **{**FAST, "batch_size": 2, "gradient_accumulation": 2})
    assert result.steps == 5  # 10 micro-batches per epoch * 2 epochs / 2


def _adapters(lm) -> dict[str, np.ndarray]:
    from gemma_keras.training.lora import adapter_arrays

    return adapter_arrays(lm.backbone)


def test_resume_reaches_the_same_adapters_as_an_uninterrupted_run(fresh, tmp_path):
    full = fresh()
    full.finetune(RECORDS, epochs=3, out_dir=tmp_path / "full", checkpoint_every=1, **FAST)

    first = fresh()
    first.finetune(RECORDS, epochs=3, out_dir=tmp_path / "split", checkpoint_every=2, stop_after=4, **FAST)
    assert not (tmp_path / "split" / "adapters.npz").exists()  # the run did not finish
    resumed = fresh()
    result = resumed.finetune(RECORDS, epochs=3, out_dir=tmp_path / "split", resume=True, **FAST)
    assert result.resumed_from == 4 and result.steps == 9
    expected, got = _adapters(full), _adapters(resumed)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], atol=1e-6, err_msg=key)
    assert (tmp_path / "split" / "adapters.npz").exists()


def test_resume_refuses_a_checkpoint_made_with_other_settings(fresh, tmp_path):
    fresh().finetune(RECORDS, max_steps=2, out_dir=tmp_path, **FAST)
    with pytest.raises(FinetuneError, match="learning_rate"):
        fresh().finetune(
            RECORDS, max_steps=2, out_dir=tmp_path, resume=True, **{**FAST, "learning_rate": 0.5}
        )


def test_save_load_and_merge_adapters(fresh, tmp_path):
    lm = fresh()
    lm.finetune(RECORDS, epochs=2, **FAST)
    ids = lm.tokenizer.encode("question 2")
    tuned = lm.logits(ids)
    path = lm.save_adapters(tmp_path / "adapters")
    assert path.name == "adapters.npz"

    other = fresh()
    assert not np.allclose(other.logits(ids), tuned, atol=1e-4)
    other.load_adapters(path)
    np.testing.assert_allclose(other.logits(ids), tuned, atol=1e-5)

    text = other.generate("question 2", max_new_tokens=6, stop_token_ids=())
    other.merge_adapters()
    assert not lora_layers(other.backbone)
    np.testing.assert_allclose(other.logits(ids), tuned, atol=1e-4)
    assert other.generate("question 2", max_new_tokens=6, stop_token_ids=()) == text
    with pytest.raises(FinetuneError, match="no LoRA adapters to merge"):
        other.merge_adapters()


def test_adapter_files_are_checked(fresh, tiny_gguf, tmp_path):
    lm = fresh()
    lm.finetune(RECORDS[:4], max_steps=1, **FAST)
    path = lm.save_adapters(tmp_path / "a.npz")
    path_other, _ = tiny_gguf("gemma3", hidden=48)
    with pytest.raises(FinetuneError, match="different model"):
        gk.load(path_other).load_adapters(path)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(path.read_bytes()[:100])
    with pytest.raises(FinetuneError, match="broken.npz.*corrupt"):
        fresh().load_adapters(broken)
    with pytest.raises(FinetuneError, match="does not exist"):
        fresh().load_adapters(tmp_path / "nope.npz")
    with pytest.raises(FinetuneError, match="no LoRA adapters to save"):
        fresh().save_adapters(tmp_path / "x.npz")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lora_rank": 0}, "lora_rank must be a positive integer"),
        ({"lora_alpha": -1.0}, "lora_alpha must be a positive number"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"max_steps": 1.5}, "max_steps must be a positive integer"),
        ({"learning_rate": 3}, "learning_rate must be a number in"),
        ({"decay": "step"}, "decay must be one of"),
        ({"targets": ["mlp"]}, "unknown LoRA target 'mlp'"),
        ({"pack": True}, "pack=True is not offered"),
        ({"resume": True}, "resume=True needs out_dir"),
        ({"warmup_steps": -2}, "warmup_steps must be an integer"),
        ({"on_error": "ignore"}, "on_error must be"),
    ],
)
def test_bad_arguments_fail_before_any_change(fresh, kwargs, message):
    lm = fresh()
    with pytest.raises(gk.GemmaKerasError, match=message):
        lm.finetune(RECORDS, **{**FAST, **kwargs})
    assert not lora_layers(lm.backbone)


def test_adapter_files_never_unpickle(fresh, tmp_path):
    """An .npz holding a pickled object array is refused, not loaded."""
    import json

    evil = tmp_path / "evil.npz"
    header = np.frombuffer(json.dumps({"format": "gemma_keras.lora/1"}).encode(), np.uint8)
    np.savez(evil, __header__=header, payload=np.array([object()], dtype=object))
    with pytest.raises(FinetuneError, match="evil.npz.*corrupt"):
        fresh().load_adapters(evil)


def test_a_finetune_config_is_shared_by_the_method_and_checked_first(fresh):
    lm = fresh()
    config = gk.FinetuneConfig(
        lora_rank=4, batch_size=4, learning_rate=1e-2, sequence_length=64, verbose=False
    )
    a = lm.finetune(RECORDS[:4], config, max_steps=1)
    assert a.steps == 1 and lm.backbone._gemma_keras_lora["rank"] == 4
    other = fresh()
    for bad in (
        {"lora_rank": 0},
        {"seed": -1},
        {"learning_rate": float("nan")},
        {"targets": []},
        {"nope": 1},
    ):
        with pytest.raises(FinetuneError):
            other.finetune(RECORDS[:4], config, **bad)
    assert lora_layers(other.backbone) == []  # nothing changed the model
    with pytest.raises(FinetuneError, match="lora_rank"):
        gk.FinetuneConfig(lora_rank=0)


def test_an_impossible_lora_rank_is_refused_before_anything_is_allocated(fresh):
    lm = fresh()
    for rank in (10**9, 2**40):
        with pytest.raises(FinetuneError, match=r"lora_rank \d+ is larger than the smallest adapted matrix"):
            lm.finetune(RECORDS[:4], **dict(FAST, lora_rank=rank, max_steps=1))
    assert lora_layers(lm.backbone) == []  # nothing was added
    # The largest rank that fits trains.
    head_dim = lm.backbone.head_dim
    lm.finetune(RECORDS[:4], **dict(FAST, lora_rank=head_dim, max_steps=1))
