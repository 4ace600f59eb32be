"""Gemma 1 and Gemma 2: KerasHub's `GemmaBackbone`, told apart by its post-norms."""

from __future__ import annotations

import dataclasses
from typing import Any

from gemma_keras.architectures.chat_format import GEMMA_TURNS
from gemma_keras.architectures.record import Architecture, GGUFKey


def _is_gemma_backbone(class_name: str | None, config: dict[str, Any], post_norms: bool) -> bool:
    # Without a class name (a bare config dict), Gemma 3's RoPE scaling key tells it apart.
    if class_name is None and "global_rope_scaling_factor" in config:
        return False
    return class_name in (None, "GemmaBackbone") and bool(config.get("use_post_attention_norm")) == post_norms


def optional_float(value) -> float | None:
    """llama.cpp writes 0 (or nothing) for an unset soft cap."""
    return None if value in (None, 0, 0.0) else float(value)


def _gemma2_gguf(key: GGUFKey, num_layers: int) -> dict[str, Any]:
    return {
        "query_head_dim_normalize": GEMMA2.queries_normalized(num_layers),
        "use_post_ffw_norm": True,
        "use_post_attention_norm": True,
        "final_logit_soft_cap": optional_float(key("final_logit_softcapping")),
        "attention_logit_soft_cap": optional_float(key("attn_logit_softcapping")),
        "use_sliding_window_attention": True,
        "sliding_window_size": int(key("attention.sliding_window", 4096)),
    }


def _gemma1_hf(config: dict[str, Any]) -> dict[str, Any]:
    return {"rope_theta": GEMMA.rope_base}


def softcapped_hf(config: dict[str, Any], arch: Architecture) -> dict[str, Any]:
    """transformers' entries shared by Gemma 2 and 3: query scale, window, soft caps, layer types."""
    normalize = config.get("query_head_dim_normalize", True)
    sliding = bool(config.get("use_sliding_window_attention"))
    return {
        # 1/sqrt(query_pre_attn_scalar) scales the queries, as KerasHub's flag says.
        "query_pre_attn_scalar": config["head_dim"]
        if normalize
        else config["hidden_dim"] // config["num_query_heads"],
        "sliding_window": config["sliding_window_size"],
        "final_logit_softcapping": config.get("final_logit_soft_cap"),
        "attn_logit_softcapping": config.get("attention_logit_soft_cap"),
        "layer_types": [
            "sliding_attention" if sliding and arch.sliding(i) else "full_attention"
            for i in range(config["num_layers"])
        ],
        "rope_theta": arch.rope_base,
    }


GEMMA = Architecture(
    name="gemma",
    title="Gemma",
    keras_backbone="GemmaBackbone",
    keras_causal_lm="GemmaCausalLM",
    keras_tokenizer="GemmaTokenizer",
    keras_preprocessor="GemmaCausalLMPreprocessor",
    gguf_arch="gemma",
    hf_model_type="gemma",
    hf_class="GemmaForCausalLM",
    rope_base=10_000.0,
    halved_ffn=True,
    large_model_layers=None,
    global_every=None,
    block_flags=frozenset(),
    cache_layout="stacked",
    chat_format=GEMMA_TURNS,
    plain_torch=True,
    context_length=lambda config: 8192,
    gguf_config=lambda key, num_layers: {},
    hf_config=_gemma1_hf,
    matches=lambda cls, config: _is_gemma_backbone(cls, config, post_norms=False),
)

# Gemma 2 is Gemma with post-norms, soft caps and alternating sliding layers.
GEMMA2 = dataclasses.replace(
    GEMMA,
    name="gemma2",
    title="Gemma 2",
    gguf_arch="gemma2",
    hf_model_type="gemma2",
    hf_class="Gemma2ForCausalLM",
    large_model_layers=46,
    # KerasHub slides on even layers, as transformers' default does.
    global_every=2,
    block_flags=frozenset({"use_post_attention_norm", "use_post_ffw_norm"}),
    gguf_config=_gemma2_gguf,
    hf_config=lambda config: softcapped_hf(config, GEMMA2),
    matches=lambda cls, config: _is_gemma_backbone(cls, config, post_norms=True),
)
