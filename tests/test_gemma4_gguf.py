"""Gemma 4 GGUF files that llama.cpp's own converter wrote, against transformers on the same checkpoint.

`tests/data/gemma4/` holds two tiny random checkpoints (per-layer inputs
with KV-shared layers; MoE with keys reused as values), as transformers
saved them, and the GGUF `convert_hf_to_gguf.py` made of each
(`tests/data/gemma4/make.py` says how). They are committed because
llama.cpp's converter is not a dependency: CI reads what it wrote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import gemma_keras as gk
from gemma_keras.errors import GGUFError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

DATA = Path(__file__).parent / "data" / "gemma4"
VARIANTS = ("kv_shared", "moe")
PROMPT = "the capital of France is Paris and the model of the world"


@pytest.fixture(scope="module")
def pairs():
    """variant -> (model from the GGUF, transformers model from the checkpoint)."""
    out = {}
    for variant in VARIANTS:
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(DATA / variant), dtype=torch.float32)
        out[variant] = (gk.load(DATA / f"{variant}.gguf"), hf.eval())
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_gguf_logits_and_greedy_tokens_match_transformers(variant, pairs):
    lm, hf = pairs[variant]
    assert lm.info.architecture == "gemma4"
    reference = transformers.AutoTokenizer.from_pretrained(str(DATA / variant))
    ids = lm.tokenizer.encode(PROMPT)
    assert ids == reference(PROMPT)["input_ids"] or ids[1:] == reference(PROMPT)["input_ids"]
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits[0, -1].numpy()
        out = hf.generate(
            torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    assert np.abs(lm.logits(ids) - want).max() < 1e-4
    assert lm.generate(ids, max_new_tokens=16, stop_token_ids=()) == lm.tokenizer.decode(
        out[0, len(ids) :].tolist()
    )


def test_the_config_read_from_metadata_is_the_checkpoints(pairs):
    import json

    from gemma_keras.architectures.gemma4 import hf_backbone_config

    for variant in VARIANTS:
        lm, _ = pairs[variant]
        want = hf_backbone_config(json.loads((DATA / variant / "config.json").read_text()))
        got = lm.backbone.get_config()
        for name, value in want.items():
            if name == "layer_norm_epsilon":  # GGUF stores it as a float32
                assert got[name] == pytest.approx(value), variant
            elif name not in ("vocab_size_per_layer_input", "attention_logit_soft_cap"):
                assert got[name] == value, (variant, name)


def test_chat_markers_are_control_tokens(pairs):
    """llama.cpp stores some markers as user-defined pieces; typed in a message they must stay text."""
    lm, _ = pairs["moe"]
    marker = lm.tokenizer.token_to_id("<|tool_call>")
    assert marker >= 0
    assert marker not in lm.tokenizer.encode("say <|tool_call> please", add_bos=False)
    assert marker in lm.tokenizer.encode("<|tool_call>", add_bos=False, special=True)


def test_a_truncated_gemma4_gguf_is_refused(tmp_path):
    data = (DATA / "moe.gguf").read_bytes()
    bad = tmp_path / "short.gguf"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(GGUFError):
        gk.load(bad)
