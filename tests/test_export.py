"""Exports: Keras presets, transformers checkpoints and GGUF files, on tiny models.

Every export is read back (by us, by KerasHub, by transformers) and its
logits compared with the live model's. Tolerances for f16 and q8_0 GGUF are
measured on these tiny models (logits of magnitude ~3) with headroom; see
docs/export.md for the numbers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import gemma_keras as gk
from gemma_keras.formats import keras_preset as export_mod
from tests.conftest import ARCHITECTURES, BACKEND, generate_ids

TEXT = "the capital of France is Paris and hello world of the model"
# Measured max |logit diff| on the tiny models: f16 <= 0.0026, q8_0 <= 0.048.
GGUF_TOL = {"f32": 1e-5, "f16": 1e-2, "q8_0": 0.1}
KERAS_CLASS = {"gemma": "GemmaCausalLM", "gemma2": "GemmaCausalLM", "gemma3": "Gemma3CausalLM"}


def fresh(tiny_gguf, arch="gemma3", **config):
    """A model of its own (the `tiny_model` fixture is shared; these tests mutate)."""
    path, _ = tiny_gguf(arch, **config)
    return gk.load(path)


def ids_of(lm):
    ids = lm.tokenizer.encode(TEXT)
    assert len(ids) > 8  # past the tiny sliding window
    return ids


def leftovers(directory, name):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(f".{name}."))


# --- Keras preset -------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_is_a_keras_hub_preset(tiny_model, tmp_path, arch):
    import keras_hub
    from keras import ops

    lm = tiny_model(arch)
    ids = ids_of(lm)
    dest = lm.save(tmp_path / "preset")
    assert not leftovers(tmp_path, "preset")
    hub = getattr(keras_hub.models, KERAS_CLASS[arch]).from_preset(str(dest))
    x = np.asarray([ids], dtype=np.int32)
    out = ops.convert_to_numpy(hub({"token_ids": x, "padding_mask": np.ones_like(x)}))[0]
    np.testing.assert_allclose(out, lm.score(ids), rtol=0, atol=1e-6)
    again = gk.load(dest)
    assert again.info.architecture == arch
    assert again.info.context_length == lm.info.context_length
    np.testing.assert_allclose(again.logits(ids), lm.logits(ids), rtol=0, atol=1e-6)


# --- GGUF -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_gguf_reads_back(tiny_gguf, tiny_model, tmp_path, arch, dtype):
    from gguf import GGUFReader

    from gemma_keras.formats.gguf_reader import read_gguf

    lm = tiny_model(arch)
    ids = ids_of(lm)
    dest = lm.export(tmp_path / "m.gguf", dtype=dtype)
    types = {t.name: t.tensor_type.name for t in GGUFReader(dest).tensors}
    matrix = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[dtype]
    assert types["blk.0.ffn_down.weight"] == types["token_embd.weight"] == matrix
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    # Same metadata and vocabulary as the file the model came from.
    original, exported = read_gguf(tiny_gguf(arch)[0]), read_gguf(dest)
    assert exported.backbone_config == original.backbone_config
    assert exported.context_length == original.context_length
    assert exported.special_ids == original.special_ids
    assert exported.tokenizer_proto() == original.tokenizer_proto()
    again = gk.load(dest)
    diff = np.abs(again.score(ids) - lm.score(ids)).max()
    assert diff <= GGUF_TOL[dtype], diff
    if dtype != "f32":
        assert diff > 0  # the weights really were rounded


def test_gguf_metadata_keys(tiny_model, tmp_path):
    from gguf import GGUFReader

    lm = tiny_model("gemma2")
    fields = GGUFReader(lm.export(tmp_path / "m.gguf")).fields
    value = {k: f.contents() for k, f in fields.items() if not k.startswith("tokenizer.ggml.t")}
    assert value["general.architecture"] == "gemma2"
    assert value["gemma2.feed_forward_length"] == 64  # not KerasHub's doubled 128
    assert value["gemma2.attention.key_length"] == value["gemma2.attention.value_length"] == 8
    assert value["gemma2.attention.sliding_window"] == 8
    assert value["gemma2.attn_logit_softcapping"] == 50.0
    assert value["gemma2.final_logit_softcapping"] == 30.0
    assert value["gemma2.rope.freq_base"] == 10_000.0
    assert value["tokenizer.ggml.model"] == "llama"
    assert value["tokenizer.ggml.add_bos_token"] is True
    assert value["general.file_type"] == 1  # MOSTLY_F16, the default


def test_q8_0_falls_back_to_f16_for_short_rows(tiny_gguf, tmp_path):
    from gguf import GGUFReader

    # Two heads of 8: attn_output's rows are 16 long, too short for Q8_0 blocks of 32.
    lm = fresh(tiny_gguf, "gemma3", heads=2)
    dest = lm.export(tmp_path / "m.gguf", dtype="q8_0")
    types = {t.name: t.tensor_type.name for t in GGUFReader(dest).tensors}
    assert types["blk.0.attn_output.weight"] == "F16"
    assert types["blk.0.attn_q.weight"] == types["blk.1.ffn_down.weight"] == "Q8_0"
    ids = ids_of(lm)
    assert np.abs(gk.load(dest).score(ids) - lm.score(ids)).max() <= GGUF_TOL["q8_0"]


@pytest.mark.parity
@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_gguf_reads_in_transformers(tiny_model, tmp_path, arch):
    import torch
    from transformers import AutoTokenizer

    from tests.hf_reference import hf_from_gguf, hf_logits

    lm = tiny_model(arch)
    ids = ids_of(lm)
    dest = lm.export(tmp_path / "m.gguf", dtype="f32")
    model = hf_from_gguf(dest, head_dim=8)
    np.testing.assert_allclose(hf_logits(model, ids), lm.score(ids), rtol=0, atol=1e-4)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=dest.name)
    assert tokenizer.encode(TEXT) == ids
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, min_new_tokens=12, do_sample=False)
    theirs = [int(t) for t in out[0, len(ids) :]]
    ours = generate_ids(lm, [TEXT], 12, gk.SamplingParams(), (), True)[0]
    assert ours == theirs
    assert lm.tokenizer.decode(ours) == tokenizer.decode(theirs, skip_special_tokens=True)


# --- transformers safetensors ------------------------------------------------------------
@pytest.mark.parity
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_safetensors_loads_in_transformers(tiny_model, tmp_path, arch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.hf_reference import hf_logits

    lm = tiny_model(arch)
    ids = ids_of(lm)
    dest = lm.export(tmp_path / "hf", format="safetensors")
    config = json.loads((dest / "config.json").read_text())
    assert config["architectures"] == [
        {"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM"}.get(arch, "Gemma3ForCausalLM")
    ]
    model = AutoModelForCausalLM.from_pretrained(str(dest), dtype=torch.float32).eval()
    np.testing.assert_allclose(hf_logits(model, ids), lm.score(ids), rtol=0, atol=1e-4)
    tokenizer = AutoTokenizer.from_pretrained(str(dest))
    for text in [TEXT, " lead", "two  spaces\n\nand\ttabs", "<start_of_turn>user\nhi<end_of_turn>", "é😀 42"]:
        assert tokenizer.encode(text) == lm.tokenizer.encode(text, special=True), text
    half = lm.export(tmp_path / "hf16", format="safetensors", dtype="f16")
    model16 = AutoModelForCausalLM.from_pretrained(str(half), dtype=torch.float32).eval()
    diff = np.abs(hf_logits(model16, ids) - lm.score(ids)).max()
    assert 0 < diff <= GGUF_TOL["f16"], diff


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_safetensors_reads_back_in_gemma_keras(tiny_model, tmp_path, arch):
    # gk.load hands a transformers checkpoint to KerasHub's own converter.
    lm = tiny_model(arch)
    ids = ids_of(lm)
    again = gk.load(lm.export(tmp_path / "hf", format="safetensors"))
    assert again.info.architecture == arch
    np.testing.assert_allclose(again.score(ids), lm.score(ids), rtol=0, atol=1e-5)
    assert again.tokenizer.encode(TEXT) == ids


@pytest.mark.parity
def test_gemma3_rope_scaling_is_carried(tiny_gguf, tmp_path):
    # Gemma 3 4B and larger scale the RoPE positions of their global layers
    # (every sixth) by 8; six tiny layers give one global layer.
    import torch
    from transformers import AutoModelForCausalLM

    from gemma_keras.sources.resolve import _wrap
    from tests.hf_reference import hf_logits

    plain = fresh(tiny_gguf, "gemma3", num_layers=6)
    causal_lm = export_mod.rebuild(plain.causal_lm, global_rope_scaling_factor=8.0)
    lm = _wrap(causal_lm, {"context_length": 512}, "scaled", plain.info.dtype)
    ids = ids_of(lm)
    ours = lm.score(ids)
    assert np.abs(ours - plain.score(ids)).max() > 1e-3  # the scaling matters here
    again = gk.load(lm.export(tmp_path / "m.gguf", dtype="f32"))
    assert again.backbone.global_rope_scaling_factor == 8.0
    np.testing.assert_allclose(again.score(ids), ours, rtol=0, atol=1e-5)
    dest = lm.export(tmp_path / "hf", format="safetensors")
    model = AutoModelForCausalLM.from_pretrained(str(dest), dtype=torch.float32).eval()
    np.testing.assert_allclose(hf_logits(model, ids), ours, rtol=0, atol=1e-4)


# --- LoRA -----------------------------------------------------------------------------------
@pytest.mark.parametrize("format", ["keras", "gguf", "safetensors"])
def test_exports_merge_lora_and_leave_the_live_model_alone(tiny_gguf, tmp_path, format):
    from keras import ops

    lm = fresh(tiny_gguf, "gemma3")
    ids = ids_of(lm)
    base = lm.score(ids)
    lm.backbone.enable_lora(4)
    rng = np.random.default_rng(0)
    lora = [v for v in lm.backbone.weights if "lora_kernel_b" in v.path]
    assert lora
    for variable in lora:
        variable.assign(rng.normal(0, 0.5, size=variable.shape).astype("float32"))
    live = lm.score(ids)
    assert np.abs(live - base).max() > 0.1  # the adapters matter
    before = {v.path: ops.convert_to_numpy(v) for v in lm.backbone.weights}

    if format == "keras":
        again = gk.load(lm.save(tmp_path / "preset"))
        assert not any("lora" in v.path for v in again.backbone.weights)
        got = again.score(ids)
    elif format == "gguf":
        got = gk.load(lm.export(tmp_path / "m.gguf", dtype="f32")).score(ids)
    else:
        import torch
        from transformers import AutoModelForCausalLM

        from tests.hf_reference import hf_logits

        dest = lm.export(tmp_path / "hf", format="safetensors")
        got = hf_logits(AutoModelForCausalLM.from_pretrained(str(dest), dtype=torch.float32), ids)
    np.testing.assert_allclose(got, live, rtol=0, atol=1e-4)
    after = {v.path: ops.convert_to_numpy(v) for v in lm.backbone.weights}
    assert before.keys() == after.keys()
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)
    np.testing.assert_allclose(lm.score(ids), live, rtol=0, atol=1e-6)


def test_gemma_import_does_not_import_keras():
    import subprocess
    import sys

    code = "import sys, gemma_keras, gemma_keras.formats.export; print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", (BACKEND, out.stderr[-2000:])


# --- command line -------------------------------------------------------------------------------
def test_cli_export(tiny_gguf, tiny_model, tmp_path, capsys):
    from gemma_keras.cli import commands as cli

    path, _ = tiny_gguf("gemma2")
    dest = tmp_path / "out.gguf"
    assert cli.main(["export", str(path), "--to", str(dest), "--dtype", "f32", "--backend", BACKEND]) == 0
    assert capsys.readouterr().out.strip() == str(dest)
    ids = ids_of(tiny_model("gemma2"))
    np.testing.assert_allclose(gk.load(dest).logits(ids), tiny_model("gemma2").logits(ids), rtol=0, atol=1e-5)
    # An existing destination: one-line error, exit code 2, nothing replaced.
    before = dest.read_bytes()
    assert cli.main(["export", str(path), "--to", str(dest)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and str(dest) in err
    assert dest.read_bytes() == before
    assert cli.main(["export", str(path), "--to", str(dest), "--overwrite"]) == 0
    assert dest.read_bytes() != before  # now f16, the default
    # A directory destination needs --format; the error comes before any loading.
    assert cli.main(["export", str(path), "--to", str(tmp_path / "hf")]) == 2
    assert "--format" in capsys.readouterr().err
    assert cli.main(["export", str(path), "--to", str(tmp_path / "hf"), "--format", "safetensors"]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()
