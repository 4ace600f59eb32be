"""Gemma 4 GGUF files that llama.cpp's own converter wrote, against transformers on the same checkpoint.

`tests/data/converted/` holds two tiny random Gemma 4 checkpoints (per-layer inputs
with KV-shared layers; MoE with keys reused as values), as transformers
saved them, and the GGUF `convert_hf_to_gguf.py` made of each
(`tests/data/converted/make.py` says how). They are committed because
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

DATA = Path(__file__).parent / "data" / "converted"
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


@pytest.mark.parametrize("variant", VARIANTS)
def test_gguf_export_writes_what_llama_cpp_converter_writes(variant, tmp_path, pairs):
    """Our GGUF export of each model has the converter's tensors (name, type, shape) and `gemma4.*` keys
    (value and type), and reloads with the same logits and tokens."""
    import gguf

    lm, _ = pairs[variant]
    out = lm.export(tmp_path / "model.gguf")
    ref, mine = gguf.GGUFReader(DATA / f"{variant}.gguf"), gguf.GGUFReader(out)

    def tensors(reader):
        return {t.name: (t.tensor_type.name, [int(n) for n in t.shape]) for t in reader.tensors}

    def keys(reader):
        return {
            k: (f.contents(), [int(t) for t in f.types])
            for k, f in reader.fields.items()
            if k.startswith("gemma4.")
        }

    assert tensors(mine) == tensors(ref)
    assert keys(mine) == keys(ref)
    again = gk.load(out)
    ids = lm.tokenizer.encode(PROMPT)
    assert again.tokenizer.encode(PROMPT) == ids
    np.testing.assert_allclose(again.logits(ids), lm.logits(ids), atol=1e-5)  # both float16 weights
    types = dict(
        zip(
            mine.fields["tokenizer.ggml.tokens"].contents(),
            mine.fields["tokenizer.ggml.token_type"].contents(),
            strict=True,
        )
    )
    assert (
        types["<|tool_call>"] == 4 and types["<|turn>"] == 3
    )  # user-defined as the converter has it; control


def test_gguf_export_q8_0_of_gemma4(tmp_path, pairs):
    """Every weight within Q8_0's rounding (half a step of its block's largest value / 127).

    Logits are not the check: in a tiny random MoE, rounding flips expert choices.
    """
    import gguf

    from gemma_keras.formats.layer_tables import TABLES, read_table

    lm, _ = pairs["moe"]
    out = lm.export(tmp_path / "model.gguf", dtype="q8_0")
    kinds = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert kinds["blk.0.attn_q.weight"] == kinds["blk.0.ffn_gate_up_exps.weight"] == "Q8_0"
    assert kinds["blk.0.ffn_gate_inp.weight"] == "F32"  # the router, as the converter keeps it
    want = dict(read_table(lm.backbone, TABLES["gemma4"]))
    got = dict(read_table(gk.load(out).backbone, TABLES["gemma4"]))
    assert set(got) == set(want)
    errors = {k: np.abs(got[k] - want[k]).max() / np.abs(want[k]).max() for k in want}
    assert max(errors.values()) < 1 / 200
    assert errors["layers.0.self_attn.q_proj.weight"] > 0  # it was quantized
