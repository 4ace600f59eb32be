"""Gemma 4 (text) against transformers, on tiny random checkpoints that transformers itself saved.

Each variant is built as a `Gemma4ForCausalLM`, every weight perturbed,
saved with `save_pretrained` together with a tokenizer (transformers 5 writes
`tokenizer.json` only), and loaded with `gk.load(dir)` on the backend of
this session. Prompts are longer than the sliding window (8), so local and
global layers both matter.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import gemma_keras as gk
from gemma_keras.errors import GenerationArgumentError, SourceError, UnsupportedModelError
from tests.conftest import JAX_SESSION_ONLY, generate_ids
from tests.hf_reference import (
    GEMMA4_TOKENS,
    GEMMA4_VARIANTS,
    assert_plain_torch_matches_keras,
    assert_transformers_logits,
    finetune_tiny,
    save_tiny_tokenizer,
    tiny_proto,
    write_tiny_gemma4,
)

torch = pytest.importorskip("torch")
AutoModelForCausalLM = pytest.importorskip("transformers").AutoModelForCausalLM

PROMPTS = [
    "the capital of France is Paris and the model of the world",
    "hello world model user the of and is in to",
]


@pytest.fixture(scope="module")
def vocab_proto():
    """A tiny Gemma vocabulary with Gemma 4's turn tokens as control pieces."""
    return tiny_proto(GEMMA4_TOKENS)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, vocab_proto):
    """variant -> (directory, transformers model)."""
    import sentencepiece

    size = sentencepiece.SentencePieceProcessor(model_proto=vocab_proto).get_piece_size()
    root = tmp_path_factory.mktemp("gemma4")
    return {v: (root / v, write_tiny_gemma4(root / v, v, vocab_proto, size)) for v in GEMMA4_VARIANTS}


@pytest.fixture(scope="module")
def loaded(checkpoints):
    return {v: gk.load(path) for v, (path, _) in checkpoints.items()}


@pytest.mark.parametrize("variant", list(GEMMA4_VARIANTS))
def test_logits_match_transformers(variant, checkpoints, loaded):
    _, hf = checkpoints[variant]
    lm = loaded[variant]
    assert lm.info.architecture == "gemma4"
    for prompt in PROMPTS:
        ids = lm.tokenizer.encode(prompt)
        assert len(ids) > 8  # past the sliding window
        with torch.no_grad():
            want = hf(torch.tensor([ids])).logits[0, -1].numpy()
        got = lm.logits(ids)
        assert np.abs(got - want).max() < 1e-4, variant


@pytest.mark.parametrize("variant", list(GEMMA4_VARIANTS))
def test_greedy_tokens_match_transformers(variant, checkpoints, loaded):
    _, hf = checkpoints[variant]
    lm = loaded[variant]
    prompts = [lm.tokenizer.encode(p) for p in PROMPTS]
    want = []
    for ids in prompts:
        with torch.no_grad():
            out = hf.generate(
                torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        want.append(out[0, len(ids) :].tolist())
    # Batched (rows of different lengths) and through the greedy chunks.
    assert generate_ids(lm, prompts, 16) == want
    # And through the public API, text in and text out.
    text = lm.generate(PROMPTS[0], max_new_tokens=16, stop=[])
    assert text == lm.tokenizer.decode(want[0])


def test_kv_shared_layers_hold_no_cache(loaded):
    lm = loaded["kv_shared"]
    cache = lm.runner.new_cache(1, 32)
    layers = lm.backbone.transformer_layers
    assert sum(layer.is_kv_shared_layer for layer in layers) == 2
    assert len(cache) == len(layers) - 2
    # Global layers are wider than sliding ones: each cache has its own layer's shape. Row 0 of
    # either runner's entry (a Keras tensor, or the plain-torch runner's (keys, values)) ends so.
    assert {tuple(c[0].shape[-2:]) for c in cache} == {(2, 8), (2, 16)}


@pytest.mark.parametrize("variant", list(GEMMA4_VARIANTS))
def test_plain_torch_runner_matches_the_keras_layers(variant, loaded):
    """On torch, Gemma 4 runs on the plain-torch runner, and every call the decode loop makes gives the Keras layers' logits.

    Within 3e-5, not 1e-5: these tiny random models turn float32 rounding
    into logit differences of about 1e-5. Weights changed by 1e-7 (relative)
    move their logits by 3e-6 to 5e-6, and each runner in float32 strays up
    to 1.1e-5 from the same model in float64. Each misreading tried on
    purpose (norm scale as 1 + w, full RoPE on global layers, no window,
    window off by one, no value norm, no layer scalar or expert scale)
    moved them by 0.1 or more.
    """
    from gemma_keras.backend.devices import capabilities

    if not capabilities().plain_torch:
        pytest.skip("the plain-torch runner exists only on the torch backend")
    assert_plain_torch_matches_keras(loaded[variant], PROMPTS)


def test_tokenizer_json_tokenizes_like_tokenizers(checkpoints, loaded):
    from tokenizers import Tokenizer

    path, _ = checkpoints["dense"]
    assert not (path / "tokenizer.model").exists()
    reference = Tokenizer.from_file(str(path / "tokenizer.json"))
    lm = loaded["dense"]
    texts = PROMPTS + ["  spaces\n\ntabs\tand 12345", "Ünïcödé 🙂 日本", "the the the", "x" * 30]
    for text in texts:
        assert (
            lm.tokenizer.encode(text, add_bos=False) == reference.encode(text, add_special_tokens=False).ids
        )


def test_chat_uses_gemma4_turns(loaded):
    lm = loaded["dense"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    assert lm.architecture.chat_format.render(messages) == (
        "<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nhello<turn|>\n<|turn>model\n"
    )
    ids = lm.architecture.chat_format.encode(messages, lm.tokenizer)
    assert ids.count(lm.tokenizer.token_to_id("<|turn>")) == 3
    stops = lm.architecture.stop_token_ids(lm.tokenizer)
    assert (
        lm.tokenizer.token_to_id("<turn|>") in stops and lm.tokenizer.token_to_id("<|tool_response>") in stops
    )
    reply = lm.chat(system="Be brief.").send("hello", max_new_tokens=4)
    assert isinstance(reply, str)
    # Thinking and tools: every marker is one control token; the reply is split (random weights: any text).
    tool = {"name": "lookup", "description": "Look up", "parameters": {"type": "object", "properties": {}}}
    chat = lm.chat(thinking=True, tools=[tool], show_thinking=True)
    ids = lm.architecture.chat_format.encode(
        [{"role": "user", "content": "hello"}], lm.tokenizer, thinking=True, tools=[tool]
    )
    for marker in ("<|think|>", "<|tool>", "<tool|>", '<|"|>'):
        assert lm.tokenizer.token_to_id(marker) in ids
    assert isinstance(chat.send("hello", max_new_tokens=8), str)
    assert chat.last_reply is not None


def test_chat_refuses_a_vocabulary_without_turn_tokens(tmp_path, checkpoints):
    path, _ = checkpoints["dense"]
    plain = tmp_path / "plain"
    shutil.copytree(path, plain)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (plain / name).unlink()
    save_tiny_tokenizer(plain, tiny_proto([]))
    lm = gk.load(plain)
    assert len(lm.generate("hello", max_new_tokens=3, stop=[])) > 0
    with pytest.raises(GenerationArgumentError, match="<\\|turn>"):
        lm.chat().send("hello")


def test_bad_checkpoints_get_clear_errors(tmp_path, checkpoints):
    path, _ = checkpoints["dense"]

    def variant(name, edit):
        out = tmp_path / name
        shutil.copytree(path, out)
        config = json.loads((out / "config.json").read_text())
        edit(config, out)
        (out / "config.json").write_text(json.dumps(config))
        return out

    def widen_one(config, out):
        config["per_layer_config"] = {"2": {"head_dim": 16}, "5": {"head_dim": 32}}

    def no_tokenizer(config, out):
        (out / "tokenizer.json").unlink()

    def wrong_width(config, out):
        config["per_layer_config"] = {"2": {"head_dim": 32}, "5": {"head_dim": 32}}

    def huge(config, out):
        config["num_hidden_layers"] = 10**9

    with pytest.raises(UnsupportedModelError, match="head_dim differently"):
        gk.load(variant("widen", widen_one))
    with pytest.raises(SourceError, match="no tokenizer"):
        gk.load(variant("notok", no_tokenizer))
    with pytest.raises(SourceError, match="parameters|shape"):
        gk.load(variant("wrong", wrong_width))
    with pytest.raises(SourceError, match="num_hidden_layers"):
        gk.load(variant("huge", huge))


def test_finetune_save_reload_and_export(tmp_path, checkpoints):
    path, _ = checkpoints["kv_shared"]
    lm = gk.load(path)
    ids = lm.tokenizer.encode(PROMPTS[0])
    after = finetune_tiny(lm, ids)
    lm.save(tmp_path / "preset")
    again = gk.load(tmp_path / "preset")
    assert again.info.architecture == "gemma4"
    np.testing.assert_allclose(again.logits(ids), after, atol=1e-4)
    # The fine-tuned weights (LoRA merged) in transformers' layout: transformers computes the same logits.
    lm.export(tmp_path / "hf", format="safetensors")
    assert_transformers_logits(tmp_path / "hf", ids, after)
    # and as GGUF (float32: no rounding), which reloads with the same logits
    np.testing.assert_allclose(
        gk.load(lm.export(tmp_path / "m.gguf", dtype="f32")).logits(ids), after, atol=1e-4
    )


@pytest.mark.parametrize("variant", list(GEMMA4_VARIANTS))
def test_safetensors_export_reloads_in_transformers_and_here(variant, tmp_path, checkpoints, loaded):
    lm = loaded[variant]
    lm.export(tmp_path / "hf", format="safetensors")
    ids = lm.tokenizer.encode(PROMPTS[1])
    want = lm.logits(ids)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    with torch.no_grad():
        np.testing.assert_allclose(hf(torch.tensor([ids])).logits[0, -1].numpy(), want, atol=1e-4)
    np.testing.assert_allclose(gk.load(tmp_path / "hf").logits(ids), want, atol=1e-5)


@pytest.mark.real
@JAX_SESSION_ONLY
def test_tokenizer_json_of_the_real_vocabulary_matches_sentencepiece(tmp_path):
    """The real Gemma 3 vocabulary, saved by transformers as tokenizer.json, converted back."""
    import random

    import sentencepiece
    from tokenizers import Tokenizer

    from gemma_keras.formats.gguf_reader import read_gguf
    from gemma_keras.formats.hf_tokenizer import checkpoint_tokenizer
    from gemma_keras.sources.embedded import embedded_gguf

    proto = read_gguf(embedded_gguf()[0]).tokenizer_proto()
    save_tiny_tokenizer(tmp_path, proto)
    original = sentencepiece.SentencePieceProcessor(model_proto=proto)
    converted = sentencepiece.SentencePieceProcessor(model_proto=checkpoint_tokenizer(tmp_path))
    reference = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    rng = random.Random(0)
    alphabet = [*range(32, 127), *range(0x80, 0x300), *range(0x4E00, 0x4E50), 0x1F642, 10, 9, 32, 32]
    texts = PROMPTS + ["  x\n\n\ty 12345 3.14", "naïve café", "Привет мир", "def f(x):\n    return x**2"]
    texts += ["".join(chr(rng.choice(alphabet)) for _ in range(rng.randint(1, 60))) for _ in range(300)]
    for text in texts:
        want = original.encode(text)
        assert converted.encode(text) == want, text
        assert reference.encode(text, add_special_tokens=False).ids == want, text


def test_cli_chat_thinks_on_gemma4_and_refuses_thinking_elsewhere(checkpoints, tiny_gguf, capsys):
    import io

    from gemma_keras.cli import commands as cli

    path, _ = checkpoints["dense"]
    args = cli.build_parser().parse_args(
        ["chat", "--model", str(path), "--max-new-tokens", "4", "--thinking"]
    )
    stdout = io.StringIO()
    assert cli._cmd_chat(args, stdin=io.StringIO("hello\n/exit\n"), stdout=stdout) == 0
    assert "gemma> " in stdout.getvalue() and "(error" not in stdout.getvalue()
    gguf, _ = tiny_gguf("gemma3")
    assert cli.main(["chat", "--model", str(gguf), "--thinking"]) == 2
    assert "no thinking switch" in capsys.readouterr().err


def test_a_gemma4_model_drafts_for_another(loaded):
    """Speculative decoding across Gemma 4 variants sharing a vocabulary: the target's greedy tokens."""
    target, draft = loaded["kv_shared"], loaded["moe"]
    want = target.generate(PROMPTS[0], max_new_tokens=16, stop_token_ids=())
    assert target.generate(PROMPTS[0], max_new_tokens=16, stop_token_ids=(), draft=draft) == want
    assert target.last_draft_stats.proposed > 0


def test_the_context_is_the_checkpoints(loaded):
    assert loaded["dense"].info.context_length == 512  # max_position_embeddings of the tiny config


def test_finetuning_a_moe_model_says_its_experts_stay_frozen(checkpoints):
    from keras import ops

    from gemma_keras.testing import made_up_fact_records

    lm = gk.load(checkpoints["moe"][0])
    experts = {
        v.path: ops.convert_to_numpy(v.value).copy()
        for v in lm.backbone.weights
        if "moe_expert_bank" in v.path
    }
    with pytest.warns(gk.FrozenWeightsWarning, match="experts"):
        lm.finetune(
            made_up_fact_records()[:4],
            lora_rank=2,
            max_steps=1,
            batch_size=2,
            sequence_length=96,
            verbose=False,
        )
    for v in lm.backbone.weights:
        if v.path in experts:
            np.testing.assert_array_equal(ops.convert_to_numpy(v.value), experts[v.path])
