"""Gemma 3n (text) against transformers, on a tiny random checkpoint transformers itself saved.

The checkpoint has every part of Gemma 3n's text model: four AltUp
streams, LAuReL, per-layer inputs, activation sparsity in its first two
layers and two KV-shared layers; prompts run past its sliding window.
"""

from __future__ import annotations

import numpy as np
import pytest

import gemma_keras as gk
from tests.conftest import generate_ids
from tests.hf_reference import (
    GEMMA3N_TOKENS,
    assert_plain_torch_matches_keras,
    assert_transformers_logits,
    finetune_tiny,
    tiny_proto,
    write_tiny_gemma3n,
)

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

PROMPTS = [
    "the capital of France is Paris and the model of the world",
    "hello world model user the of and is in to",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import sentencepiece

    root = tmp_path_factory.mktemp("gemma3n")
    proto = tiny_proto(GEMMA3N_TOKENS)
    size = sentencepiece.SentencePieceProcessor(model_proto=proto).get_piece_size()
    model = write_tiny_gemma3n(root / "ckpt", proto, size)
    return root / "ckpt", model


@pytest.fixture(scope="module")
def lm(checkpoint):
    return gk.load(checkpoint[0])


def test_logits_and_greedy_tokens_match_transformers(checkpoint, lm):
    _, hf = checkpoint
    assert lm.info.architecture == "gemma3n" and lm.info.context_length == 512
    prompts = [lm.tokenizer.encode(p) for p in PROMPTS]
    want = []
    for ids in prompts:
        assert len(ids) > 8  # past the sliding window
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, -1].numpy()
            out = hf.generate(
                torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        assert np.abs(lm.logits(ids) - logits).max() < 1e-4
        assert np.abs(lm.score(ids)[-1] - logits).max() < 1e-4  # the whole-sequence pass too
        want.append(out[0, len(ids) :].tolist())
    assert generate_ids(lm, prompts, 16) == want  # batched, rows of different lengths


def test_gguf_from_llama_cpp_converter_matches_transformers():
    """`tests/data/converted/gemma3n.gguf`: what llama.cpp's converter wrote from the checkpoint beside it
    (stacked AltUp projections, activation sparsity stored as normal quantiles, LAuReL rank from a shape)."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    data = Path(__file__).parent / "data" / "converted"
    lm = gk.load(data / "gemma3n.gguf")
    assert lm.info.architecture == "gemma3n"
    hf = AutoModelForCausalLM.from_pretrained(str(data / "gemma3n"), dtype=torch.float32).eval()
    assert lm.backbone.get_config()["activation_sparsity_pattern"] == [0.95, 0.95, 0.0, 0.0, 0.0, 0.0]
    prompts = [lm.tokenizer.encode(p) for p in PROMPTS]
    want = []
    for ids in prompts:
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, -1].numpy()
            out = hf.generate(
                torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        assert np.abs(lm.logits(ids) - logits).max() < 1e-4
        want.append(out[0, len(ids) :].tolist())
    assert generate_ids(lm, prompts, 16) == want


def test_gguf_export_writes_what_llama_cpp_converter_writes(tmp_path):
    """Our export of the checkpoint the converter read: the same tensors (name, type, shape) and
    `gemma3n.*` keys (value and type), and it reloads with the same logits."""
    from pathlib import Path

    import gguf

    data = Path(__file__).parent / "data" / "converted"
    lm = gk.load(data / "gemma3n")
    out = lm.export(tmp_path / "model.gguf")
    ref, mine = gguf.GGUFReader(data / "gemma3n.gguf"), gguf.GGUFReader(out)

    def tensors(reader):
        return {t.name: (t.tensor_type.name, [int(n) for n in t.shape]) for t in reader.tensors}

    def keys(reader):
        return {
            k: (
                np.asarray(f.contents(), dtype=float).round(5).tolist() if "sparsity" in k else f.contents(),
                [int(t) for t in f.types],
            )
            for k, f in reader.fields.items()
            if k.startswith("gemma3n.")
        }

    assert tensors(mine) == tensors(ref)
    assert keys(mine) == keys(ref)
    ids = lm.tokenizer.encode(PROMPTS[0])
    np.testing.assert_allclose(gk.load(out).logits(ids), lm.logits(ids), atol=1e-5)  # float16 both


def test_a_gemma3n_gguf_with_a_missing_tensor_is_refused(tmp_path):
    """The tensors must hold what the metadata implies; one tensor less is a named error, not a crash."""
    from pathlib import Path

    import gguf

    from gemma_keras.errors import GGUFError

    source = gguf.GGUFReader(Path(__file__).parent / "data" / "converted" / "gemma3n.gguf")
    writer = gguf.GGUFWriter(str(tmp_path / "short.gguf"), "gemma3n")
    for key, field in source.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), kind, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), kind)
    for tensor in source.tensors:
        if tensor.name != "blk.0.laurel_r.weight":
            writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFError, match="parameters"):
        gk.load(tmp_path / "short.gguf")


def test_kv_shared_layers_hold_no_cache(lm):
    from gemma_keras.generation.runner import make_runner

    cache = make_runner(lm.causal_lm, lm.architecture, kind="keras").new_cache(1, 32)
    assert len(cache) == 6 - 2
    assert tuple(cache[0].shape) == (1, 2, 2, 32, 8)  # heads before positions, as KerasHub's Gemma 3n has it
    if type(lm.runner).__name__ == "TorchRunner":  # one (keys, values) pair per owning layer
        cache = lm.runner.new_cache(1, 32)
        assert len(cache) == 6 - 2 and tuple(cache[0][0].shape) == (1, 32, 2, 8)


def test_plain_torch_runner_matches_the_keras_layers(lm):
    """On torch, Gemma 3n runs on the plain-torch runner, and every call the decode loop makes gives the Keras layers' logits.

    Within 3e-5, as Gemma 4's: float32 rounding on these tiny random models.
    """
    from gemma_keras.backend.devices import capabilities

    if not capabilities().plain_torch:
        pytest.skip("the plain-torch runner exists only on the torch backend")
    assert_plain_torch_matches_keras(lm, PROMPTS)


def test_chat_uses_gemma_turns(lm):
    assert lm.architecture.chat_format.name == "gemma"
    assert isinstance(lm.chat(system="Be brief.").send("hello", max_new_tokens=4), str)


def test_save_reload_and_safetensors_export(tmp_path, lm):
    from transformers import AutoConfig

    ids = lm.tokenizer.encode(PROMPTS[0])
    want = lm.logits(ids)
    lm.save(tmp_path / "preset")
    again = gk.load(tmp_path / "preset")
    assert again.info.architecture == "gemma3n"
    np.testing.assert_allclose(again.logits(ids), want, atol=1e-5)
    lm.export(tmp_path / "hf", format="safetensors")
    assert AutoConfig.from_pretrained(str(tmp_path / "hf")).architectures == ["Gemma3nForCausalLM"]
    assert_transformers_logits(tmp_path / "hf", ids, want)
    np.testing.assert_allclose(gk.load(tmp_path / "hf").logits(ids), want, atol=1e-5)


def test_finetune_then_export_reloads_in_transformers(tmp_path, checkpoint):
    """LoRA on every projection of the text model; the merged weights give transformers the same logits."""
    from gemma_keras.training.lora import lora_layers

    lm = gk.load(checkpoint[0])
    ids = lm.tokenizer.encode(PROMPTS[1])
    after = finetune_tiny(lm, ids, out_dir=tmp_path / "run")
    # 7 projections on 4 layers, 5 on the 2 KV-shared ones (their key/value projections never run)
    assert len(lora_layers(lm.backbone)) == 7 * 4 + 5 * 2
    fresh = gk.load(checkpoint[0]).load_adapters(tmp_path / "run" / "adapters.npz")
    np.testing.assert_allclose(fresh.logits(ids), after, atol=1e-4)
    lm.export(tmp_path / "hf", format="safetensors")
    assert_transformers_logits(tmp_path / "hf", ids, after)
    # and as GGUF (float32: no rounding), which reloads with the same logits
    np.testing.assert_allclose(
        gk.load(lm.export(tmp_path / "m.gguf", dtype="f32")).logits(ids), after, atol=1e-4
    )
