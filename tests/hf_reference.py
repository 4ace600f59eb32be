"""Hugging Face transformers models as an independent reference.

transformers reads Gemma 2 and Gemma 3 GGUF files itself. It has no GGUF
reader for Gemma 1, so for that one the reference is built from the same
float tensors by hand, with transformers' own weight names.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np


def shared_reference(name: str, key: dict, compute: Callable[[], dict]) -> dict:
    """`compute()`, kept in the test cache under `name` and `key` for the other backend sessions.

    transformers' outputs on a given file do not depend on our backend, and loading the real
    model's GGUF in transformers costs over a minute, so the three sessions of one run share
    them. `key` must name everything the outputs depend on (the file's sha256, the prompts);
    the transformers and torch versions are added here. Each session still compares its own
    backend's outputs against them.
    """
    import torch
    import transformers

    key = {**key, "transformers": transformers.__version__, "torch": torch.__version__}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = Path(os.environ["GEMMA_KERAS_TEST_CACHE"]) / "hf-reference" / f"{name}-{digest}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_bytes(pickle.dumps(value))
    partial.replace(path)  # a session killed mid-write leaves no half file behind
    return value


def hf_from_gguf(path: Path, head_dim: int | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.eval()
    if head_dim is not None:
        # transformers' GGUF config leaves query_pre_attn_scalar at 256;
        # llama.cpp (and we) scale by 1/sqrt(head_dim). Real Gemma 2/3 models
        # below 27B have head_dim 256, so both agree there.
        for layer in model.model.layers:
            layer.self_attn.scaling = head_dim**-0.5
    return model


def hf_gemma1_from_tensors(tensors: dict[str, np.ndarray], cfg, vocab_size: int):
    import torch
    from transformers import GemmaConfig, GemmaForCausalLM

    config = GemmaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.ffn,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        rms_norm_eps=1e-6,
        max_position_embeddings=cfg.context,
        hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True,
    )
    model = GemmaForCausalLM(config).eval()
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    for i in range(cfg.num_layers):
        for hf_name, gguf_name in {
            "input_layernorm": "attn_norm",
            "post_attention_layernorm": "ffn_norm",
            "self_attn.q_proj": "attn_q",
            "self_attn.k_proj": "attn_k",
            "self_attn.v_proj": "attn_v",
            "self_attn.o_proj": "attn_output",
            "mlp.gate_proj": "ffn_gate",
            "mlp.up_proj": "ffn_up",
            "mlp.down_proj": "ffn_down",
        }.items():
            names[f"model.layers.{i}.{hf_name}.weight"] = f"blk.{i}.{gguf_name}.weight"
    state = {}
    for hf_name, gguf_name in names.items():
        value = tensors[gguf_name]
        if value.ndim == 1:  # llama.cpp's 1 + w back to transformers' w
            value = value - 1.0
        state[hf_name] = torch.tensor(value)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return model


def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def hf_greedy(model, ids: list[int], steps: int) -> tuple[list[int], np.ndarray]:
    """transformers' greedy continuation of `ids`: its `steps` tokens and the logits before each."""
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    logits = torch.stack(out.logits)[:, 0].float().numpy()
    return [int(t) for t in out.sequences[0, len(ids) :]], logits


def gguf_reference(path: Path, prompts: list[str], steps: int, texts: list[str] = ()) -> dict:
    """transformers reading the GGUF at `path` itself: its greedy path from each of `prompts`
    (`greedy_path`), and its token ids of each of `texts`."""
    from transformers import AutoTokenizer

    model = hf_from_gguf(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return {
        "paths": {prompt: greedy_path(model, tokenizer, prompt, steps) for prompt in prompts},
        "ids": {text: tokenizer.encode(text) for text in texts},
    }


def greedy_path(model, tokenizer, prompt: str, steps: int) -> dict:
    """transformers' greedy path from `prompt`: its ids, tokens and text, the logits after the
    prompt, and the top-1/top-2 logit margin at each step (where a float32 reimplementation may flip)."""
    ids = tokenizer.encode(prompt)
    tokens, logits = hf_greedy(model, ids, steps)
    top2 = np.sort(logits, axis=-1)[:, -2:]
    return {
        "ids": ids,
        "tokens": tokens,
        "text": tokenizer.decode(tokens, skip_special_tokens=True),
        "first_logits": logits[0],
        "margins": top2[:, 1] - top2[:, 0],
    }


# --- tiny transformers checkpoints of architectures we convert ourselves -----
GEMMA4_BASE = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    global_head_dim=16,
    sliding_window=8,
    layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
    hidden_size_per_layer_input=0,
    final_logit_softcapping=30.0,
    max_position_embeddings=512,
)
GEMMA4_VARIANTS = {
    "dense": {},
    # E2B/E4B-style: per-layer inputs, and the last two layers read earlier layers' keys and values.
    # As in the real models, the last layer with a cache is global and the one before slides:
    # llama.cpp assumes that order when it maps shared layers to their source.
    "kv_shared": dict(
        hidden_size_per_layer_input=4,
        num_kv_shared_layers=2,
        layer_types=["sliding_attention"] * 3 + ["full_attention", "sliding_attention", "full_attention"],
    ),
    # 26B-A4B-style: a mixture of experts beside the dense MLP; global layers reuse keys as values.
    "moe": dict(
        enable_moe_block=True,
        num_experts=4,
        top_k_experts=2,
        moe_intermediate_size=16,
        attention_k_eq_v=True,
        num_global_key_value_heads=1,
    ),
}


def tiny_proto(controls: list[str]) -> bytes:
    """The tiny test vocabulary's SentencePiece model, with `controls` added as control pieces."""
    import tempfile

    from gemma_keras.formats.gguf_reader import read_gguf
    from gemma_keras.testing import tiny_vocab, write_tiny_gguf

    tokens, types = tiny_vocab()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.gguf"
        write_tiny_gguf(path, "gemma3", vocab=(tokens + controls, types + [3] * len(controls)))
        return read_gguf(path).tokenizer_proto()


def save_tiny_tokenizer(out_dir: Path, proto: bytes) -> None:
    """The SentencePiece model saved by transformers' own `GemmaTokenizer.save_pretrained` (tokenizer.json)."""
    import tempfile

    from transformers import GemmaTokenizer

    with tempfile.TemporaryDirectory() as spm_dir:
        (Path(spm_dir) / "tokenizer.model").write_bytes(proto)
        GemmaTokenizer.from_pretrained(spm_dir).save_pretrained(str(out_dir))


GEMMA4_TOKENS = [
    "<|turn>",
    "<turn|>",
    "<|channel>",
    "<channel|>",
    "<|think|>",
    "<|tool>",
    "<tool|>",
    "<|tool_call>",
    "<tool_call|>",
    "<|tool_response>",
    "<tool_response|>",
    '<|"|>',
]


def write_tiny_gemma4(out_dir: Path, variant: str, proto: bytes, vocab_size: int, seed: int = 0, dtype=None):
    """A random `Gemma4ForCausalLM` saved with `save_pretrained`, with the tokenizer; returns the model.

    Every weight is perturbed (norms and layer scalars included), so a
    weight read in the wrong place or convention changes the logits.
    """
    import torch
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    config = Gemma4TextConfig(
        vocab_size=vocab_size,
        vocab_size_per_layer_input=vocab_size,
        **{**GEMMA4_BASE, **GEMMA4_VARIANTS[variant]},
    )
    torch.manual_seed(seed)
    return _save_perturbed(Gemma4ForCausalLM(config).eval(), out_dir, proto, dtype)


def write_tiny_gemma4_assistant(out_dir: Path, vocab_size: int, ordered: bool = False, seed: int = 1):
    """A random `Gemma4AssistantForCausalLM` for the tiny Gemma 4 targets (hidden 32; a sliding and a
    global layer reading the target's keys and values), saved; every weight perturbed. Returns the model.

    `ordered`: the centroid-routed output head, over 7 clusters of the vocabulary in a random order.
    """
    import torch
    from transformers import Gemma4AssistantConfig, Gemma4AssistantForCausalLM

    text = dict(
        model_type="gemma4_text",
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=GEMMA4_BASE["num_key_value_heads"],
        head_dim=GEMMA4_BASE["head_dim"],
        global_head_dim=GEMMA4_BASE["global_head_dim"],
        sliding_window=GEMMA4_BASE["sliding_window"],
        layer_types=["sliding_attention", "full_attention"],
        hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=0,
        num_kv_shared_layers=2,
        final_logit_softcapping=30.0,
    )
    config = Gemma4AssistantConfig(
        text_config=text,
        backbone_hidden_size=GEMMA4_BASE["hidden_size"],
        use_ordered_embeddings=ordered,
        num_centroids=7,
        centroid_intermediate_top_k=2,
    )
    torch.manual_seed(seed)
    model = Gemma4AssistantForCausalLM(config).eval()
    with torch.no_grad():
        for _, parameter in model.named_parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
        if ordered:
            model.masked_embedding.token_ordering.copy_(torch.randperm(vocab_size))
    model.save_pretrained(str(out_dir))
    return model


def _save_perturbed(model, out_dir: Path, proto: bytes, dtype=None):
    """Perturbs every weight (and Gemma 4's layer scalars), saves the model and the tokenizer; returns the model."""
    import torch

    with torch.no_grad():
        for _, parameter in model.named_parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
        for name, buffer in model.named_buffers():
            if name.endswith("layer_scalar"):
                buffer.add_(torch.randn_like(buffer) * 0.1)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(str(out_dir))
    save_tiny_tokenizer(out_dir, proto)
    return model


GEMMA3N_TOKENS = ["<image_soft_token>", "<audio_soft_token>", "<start_of_audio>", "<end_of_audio>"]


def write_tiny_gemma3n(out_dir: Path, proto: bytes, vocab_size: int, seed: int = 0, dtype=None):
    """A random `Gemma3nForCausalLM` (AltUp, LAuReL, per-layer inputs, activation sparsity, two KV-shared
    layers) saved with `save_pretrained`, with the tokenizer; every weight perturbed. Returns the model."""
    import torch
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

    config = Gemma3nTextConfig(
        vocab_size=vocab_size,
        vocab_size_per_layer_input=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
        hidden_size_per_layer_input=4,
        num_kv_shared_layers=2,
        laurel_rank=4,
        altup_num_inputs=4,
        activation_sparsity_pattern=[0.95, 0.95, 0.0, 0.0, 0.0, 0.0],
        final_logit_softcapping=30.0,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    return _save_perturbed(Gemma3nForCausalLM(config).eval(), out_dir, proto, dtype)


def finetune_tiny(lm, ids: list[int], **settings):
    """LoRA-fine-tunes a tiny model on a few invented facts; checks the loss fell and the logits after
    `ids` moved. Returns those logits."""
    import numpy as np

    from gemma_keras.testing import made_up_fact_records

    before = lm.logits(ids)
    result = lm.finetune(
        made_up_fact_records()[:8],
        lora_rank=4,
        epochs=3,
        batch_size=4,
        sequence_length=48,
        learning_rate=1e-2,
        verbose=False,
        **settings,
    )
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    after = lm.logits(ids)
    assert np.abs(after - before).max() > 1e-3  # the adapters changed the model
    return after


def assert_transformers_logits(checkpoint: Path, ids: list[int], want, atol: float = 1e-4) -> None:
    """transformers, loading `checkpoint`, computes `want` as the next-token logits after `ids`."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.tensor([ids])).logits[0, -1].numpy(), want, atol=atol)


def assert_plain_torch_matches_keras(lm, prompts: list[str], atol: float = 3e-5) -> None:
    """`lm` runs on the plain-torch runner, and every call the decode loop makes gives the Keras layers'
    logits: a batched prefill of rows of different lengths (`prompts[0]` past the tiny models' sliding
    window of 8), single steps, `select_rows` (an empty row), `copy_rows`, `lengthen`, `forward_all`."""
    import numpy as np

    from gemma_keras.generation.decode import Batch, Request
    from gemma_keras.generation.runner import make_runner

    assert type(lm.runner).__name__ == "TorchRunner"
    keras_runner = make_runner(lm.causal_lm, lm.architecture, kind="keras")
    assert type(keras_runner).__name__ == "KerasRunner"
    requests = [Request(lm.tokenizer.encode(p), 40) for p in (prompts[0], "model", prompts[1])]
    assert max(len(r.prompt) for r in requests) > 8 > min(len(r.prompt) for r in requests)
    (fast, a), (slow, b) = (Batch.prefill(r, requests) for r in (lm.runner, keras_runner))
    np.testing.assert_allclose(a, b, atol=atol)
    rng = np.random.default_rng(0)

    def feed(tokens: int, every_position: bool = False):
        ids = rng.integers(3, lm.runner.vocab_size, (fast.size, tokens)).astype(np.int32)
        out = []
        for batch in (fast, slow):
            call = batch.runner.forward_all if every_position else batch.runner.forward
            logits, batch.cache = call(ids, batch._runner_mask(), batch.cache, batch.index)
            batch.index += tokens
            out.append(logits)
        np.testing.assert_allclose(*out, atol=atol)

    for _ in range(10):  # one token at a time, well past the window
        feed(1)
    for batch in (fast, slow):
        batch.resize(4)  # select_rows: an empty row, whose queries see no key at all
    feed(1)
    for batch in (fast, slow):
        batch.join(Request(lm.tokenizer.encode(prompts[1]), 8))  # prefilled alone, then copy_rows
        batch.lengthen(2 * batch.length)
    assert fast.rows[3] is not None
    feed(1)
    feed(3, every_position=True)  # as speculative decoding checks a draft
    feed(1)
