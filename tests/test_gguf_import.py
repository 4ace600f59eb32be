"""GGUF -> Keras: metadata, weights of every quant type, and logits against transformers."""

from __future__ import annotations

import numpy as np
import pytest

from gemma_keras.formats.gguf_reader import read_gguf
from gemma_keras.testing import TinyConfig, tiny_vocab
from tests.conftest import ARCHITECTURES
from tests.hf_reference import hf_from_gguf, hf_gemma1_from_tensors, hf_logits

# Quant types with a block size that divides the tiny rows (32): written by gguf-py.
BLOCK32 = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
# K-quants need rows of 256; the tiny writer crafts random blocks for them.
KQUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def _keras_weights(lm, arch: str) -> dict[str, np.ndarray]:
    """The backbone's weights mapped back to GGUF names and layout."""
    from keras import ops

    def np_(v):
        return np.asarray(ops.convert_to_numpy(v))

    bb = lm.backbone
    out = {"token_embd.weight": np_(bb.get_layer("token_embedding").embeddings)}
    out["output_norm.weight"] = np_(bb.get_layer("final_normalization").scale) + 1
    for i in range(bb.num_layers):
        blk = bb.get_layer(f"decoder_block_{i}")
        a = blk.attention
        q = np_(a.query_dense.kernel)  # (heads, hidden, dim)
        out[f"blk.{i}.attn_q.weight"] = q.transpose(0, 2, 1).reshape(-1, q.shape[1])
        for name, layer in (("attn_k", a.key_dense), ("attn_v", a.value_dense)):
            k = np_(layer.kernel)
            out[f"blk.{i}.{name}.weight"] = k.transpose(0, 2, 1).reshape(-1, k.shape[1])
        o = np_(a.output_dense.kernel)  # (heads, dim, hidden)
        out[f"blk.{i}.attn_output.weight"] = o.transpose(2, 0, 1).reshape(o.shape[2], -1)
        out[f"blk.{i}.ffn_gate.weight"] = np_(blk.gating_ffw.kernel).T
        out[f"blk.{i}.ffn_up.weight"] = np_(blk.gating_ffw_2.kernel).T
        out[f"blk.{i}.ffn_down.weight"] = np_(blk.ffw_linear.kernel).T
        out[f"blk.{i}.attn_norm.weight"] = np_(blk.pre_attention_norm.scale) + 1
        out[f"blk.{i}.ffn_norm.weight"] = np_(blk.pre_ffw_norm.scale) + 1
        if arch != "gemma":
            out[f"blk.{i}.post_attention_norm.weight"] = np_(blk.post_attention_norm.scale) + 1
            out[f"blk.{i}.post_ffw_norm.weight"] = np_(blk.post_ffw_norm.scale) + 1
        if arch == "gemma3":
            out[f"blk.{i}.attn_q_norm.weight"] = np_(a.query_norm.scale) + 1
            out[f"blk.{i}.attn_k_norm.weight"] = np_(a.key_norm.scale) + 1
    return out


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_metadata_becomes_backbone_config(tiny_gguf, arch):
    path, _ = tiny_gguf(arch)
    info = read_gguf(path)
    cfg = TinyConfig()
    assert info.architecture == arch
    c = info.backbone_config
    assert (
        c["num_layers"],
        c["hidden_dim"],
        c["num_query_heads"],
        c["num_key_value_heads"],
        c["head_dim"],
    ) == (
        cfg.num_layers,
        cfg.hidden,
        cfg.heads,
        cfg.kv_heads,
        cfg.head_dim,
    )
    assert c["vocabulary_size"] == len(tiny_vocab()[0])
    assert c["intermediate_dim"] == (cfg.ffn if arch == "gemma3" else 2 * cfg.ffn)
    assert info.context_length == cfg.context
    if arch == "gemma2":
        assert c["final_logit_soft_cap"] == 30.0 and c["attention_logit_soft_cap"] == 50.0
    if arch != "gemma":
        assert c["sliding_window_size"] == cfg.sliding_window


@pytest.mark.parametrize("qtype", BLOCK32 + KQUANTS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_weights_round_trip(tiny_gguf, tiny_model, arch, qtype):
    """Every tensor the file holds lands in the right Keras variable, dequantized."""
    config = {"ffn": 256} if qtype in KQUANTS else {}
    _, expected = tiny_gguf(arch, qtype, **config)
    lm = tiny_model(arch, qtype, **config)
    got = _keras_weights(lm, arch)
    assert set(got) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-6, err_msg=name)
    if qtype in KQUANTS:  # the quantized tensors really were quantized
        from gguf import GGUFReader

        path, _ = tiny_gguf(arch, qtype, **config)
        types = {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}
        assert types["blk.0.ffn_down.weight"] == qtype


@pytest.mark.parity
@pytest.mark.parametrize("qtype", ["F32", "Q8_0", "Q4_K"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_logits_match_transformers(tiny_gguf, tiny_model, arch, qtype):
    config = {"ffn": 256} if qtype == "Q4_K" else {}
    path, tensors = tiny_gguf(arch, qtype, **config)
    lm = tiny_model(arch, qtype, **config)
    cfg = TinyConfig(**config)
    if arch == "gemma":
        ref_model = hf_gemma1_from_tensors(tensors, cfg, len(tiny_vocab()[0]))
    else:
        ref_model = hf_from_gguf(path, head_dim=cfg.head_dim)
    # Longer than the sliding window (8), so the windowed layers are exercised.
    ids = lm.tokenizer.encode("the capital of France is Paris and hello world of the model")
    assert len(ids) > cfg.sliding_window
    ref = hf_logits(ref_model, ids)
    np.testing.assert_allclose(lm.score(ids), ref, rtol=0, atol=1e-4)
    # The cached decode path gives the same last-position logits.
    np.testing.assert_allclose(lm.logits(ids), ref[-1], rtol=0, atol=1e-4)
