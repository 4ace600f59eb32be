"""Gemma 4 and 3n on torch: the plain-torch runner against Keras' layers, decode speed side by side.

    KERAS_BACKEND=torch python benchmarks/gemma4_torch.py [--new-tokens 64] [--json out.json]

No real Gemma 4 checkpoint can be had offline, so the models are random
Gemma 4 text models built in KerasHub from transformers-style configs (as
`gk.load` reads them), every weight perturbed:

- `tiny-*`: the three tiny test variants of `tests/hf_reference.py`
  (hidden 32, 6 layers, 469-token vocabulary): dense; per-layer inputs with
  two KV-shared layers; MoE with keys reused as values;
- `512x8-*`: the same three kinds at hidden 512, 8 layers (3 sliding, 1
  global, twice), 8 query heads of 64 (global: 128), a 32,000-token
  vocabulary; the per-layer-input one shares its last 4 layers' keys and
  values and doubles their MLP (as E2B); the MoE one has 32 experts of
  width 256, 4 per token;
- `*-gemma3n`: Gemma 3n text models (four AltUp streams, LAuReL, per-layer
  inputs, activation sparsity in the first two layers, two KV-shared
  layers): the tiny test model of `tests/hf_reference.py` (hidden 32, 6
  layers, 469-token vocabulary) and one at hidden 512, 8 layers, a
  32,000-token vocabulary.

Each runner decodes the same 32-token prompt greedily, batch 1, float32,
through the decode loop (`generate_ids`). Decode tokens/s is the new tokens
after the first, over the time they took beyond a 1-token call (so the
prefill is left out); best of `--repeats`. Both runners must pick the same
tokens. No number here is a pass/fail threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

ROPE = {
    "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1e6, "rope_type": "proportional"},
    "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"},
}
TINY = dict(
    vocab_size=469,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    global_head_dim=16,
    sliding_window=8,
    layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
    final_logit_softcapping=30.0,
    rope_parameters=ROPE,
)
WIDE = dict(
    vocab_size=32000,
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=64,
    global_head_dim=128,
    sliding_window=512,
    layer_types=["sliding_attention"] * 3 + ["full_attention"],
    final_logit_softcapping=30.0,
    rope_parameters=ROPE,
)
WIDE["layer_types"] = WIDE["layer_types"] * 2
MODELS = {
    "tiny-dense": TINY,
    "tiny-per-layer+kv-shared": dict(
        TINY,
        hidden_size_per_layer_input=4,
        vocab_size_per_layer_input=469,
        num_kv_shared_layers=2,
        layer_types=["sliding_attention"] * 3 + ["full_attention", "sliding_attention", "full_attention"],
    ),
    "tiny-moe": dict(
        TINY,
        enable_moe_block=True,
        num_experts=4,
        top_k_experts=2,
        moe_intermediate_size=16,
        attention_k_eq_v=True,
        num_global_key_value_heads=1,
    ),
    "512x8-dense": WIDE,
    "512x8-per-layer+kv-shared": dict(
        WIDE,
        hidden_size_per_layer_input=64,
        vocab_size_per_layer_input=32000,
        num_kv_shared_layers=4,
        use_double_wide_mlp=True,
    ),
    "512x8-moe": dict(
        WIDE,
        enable_moe_block=True,
        num_experts=32,
        top_k_experts=4,
        moe_intermediate_size=256,
        attention_k_eq_v=True,
        num_global_key_value_heads=1,
    ),
}

GEMMA3N_TINY = dict(
    vocab_size=469,
    vocab_size_per_layer_input=469,
    hidden_size=32,
    intermediate_size=[64] * 6,
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
GEMMA3N = {
    "tiny-gemma3n": GEMMA3N_TINY,
    "512x8-gemma3n": dict(
        GEMMA3N_TINY,
        vocab_size=32000,
        vocab_size_per_layer_input=32000,
        hidden_size=512,
        intermediate_size=[2048] * 8,
        num_hidden_layers=8,
        num_attention_heads=8,
        head_dim=64,
        sliding_window=512,
        layer_types=(["sliding_attention"] * 3 + ["full_attention"]) * 2,
        hidden_size_per_layer_input=64,
        laurel_rank=64,
        activation_sparsity_pattern=[0.95, 0.95] + [0.0] * 6,
    ),
}
MODELS.update(GEMMA3N)


def build(config: dict):
    """A `Gemma4CausalLM` (or `Gemma3nCausalLM`) of `config` with random weights (KerasHub starts experts and norms at constants)."""
    import numpy as np
    from keras import ops
    from keras_hub.models import Gemma4Backbone, Gemma4CausalLM

    from gemma_keras.architectures.gemma4 import hf_backbone_config

    if "altup_num_inputs" in config:
        from keras_hub.models import Gemma3nBackbone, Gemma3nCausalLM

        from gemma_keras.architectures import gemma3n

        backbone, causal_lm = Gemma3nBackbone(**gemma3n.hf_backbone_config(config)), Gemma3nCausalLM
    else:
        backbone, causal_lm = Gemma4Backbone(**hf_backbone_config(config)), Gemma4CausalLM
    rng = np.random.default_rng(0)
    for variable in backbone.trainable_weights:
        value = ops.convert_to_numpy(variable.value)
        variable.assign((value + rng.normal(0, 0.02, value.shape)).astype(value.dtype))
    return causal_lm(backbone=backbone, preprocessor=None)


def decode_rates(runners: dict, prompt: list[int], new_tokens: int, repeats: int) -> dict:
    """{name: (decode tokens/s, ids)}; the runners take turns, so that a busy spell slows each alike."""
    from gemma_keras.generation.decode import generate_ids

    for runner in runners.values():
        generate_ids(runner, [prompt], 2)  # warm-up
    best = dict.fromkeys(runners, float("inf"))
    ids = {}
    for _ in range(repeats):
        for name, runner in runners.items():
            start = time.perf_counter()
            generate_ids(runner, [prompt], 1)
            first = time.perf_counter() - start
            start = time.perf_counter()
            ids[name] = generate_ids(runner, [prompt], new_tokens + 1)[0]
            best[name] = min(best[name], time.perf_counter() - start - first)
    return {name: (new_tokens / best[name], ids[name]) for name in runners}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--json")
    args = parser.parse_args()

    import numpy as np
    import torch

    import gemma_keras as gk
    from gemma_keras.architectures.gemma3n import GEMMA3N as GEMMA3N_ARCH
    from gemma_keras.architectures.gemma4 import GEMMA4
    from gemma_keras.generation.runner import make_runner

    gk.use_backend("torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        causal_lm = build(MODELS[name])
        prompt = np.random.default_rng(1).integers(3, MODELS[name]["vocab_size"], 32).tolist()
        arch = GEMMA3N_ARCH if name in GEMMA3N else GEMMA4
        runners = {kind: make_runner(causal_lm, arch, kind=kind) for kind in ("torch", "keras")}
        rates = decode_rates(runners, prompt, args.new_tokens, args.repeats)
        (plain, plain_ids), (layers, layer_ids) = rates["torch"], rates["keras"]
        row = {
            "model": name,
            "parameters": causal_lm.backbone.count_params(),
            "plain_torch_tok_s": round(plain, 1),
            "keras_layers_tok_s": round(layers, 1),
            "speedup": round(plain / layers, 2),
            "same_tokens": plain_ids == layer_ids,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"threads": torch.get_num_threads(), "new_tokens": args.new_tokens, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
