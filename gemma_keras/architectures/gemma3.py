"""Gemma 3 (text): KerasHub's `Gemma3Backbone`."""

from __future__ import annotations

from typing import Any

from gemma_keras.architectures.chat_format import GEMMA_TURNS
from gemma_keras.architectures.gemma import optional_float, softcapped_hf
from gemma_keras.architectures.record import Architecture, GGUFKey

_LOCAL_ROPE_BASE = 10_000.0
_IMAGE_PIECES = {"<img>", "<start_of_image>", "<end_of_image>"}


def _gguf(key: GGUFKey, num_layers: int) -> dict[str, Any]:
    return {
        "image_size": None,
        "query_head_dim_normalize": GEMMA3.queries_normalized(num_layers),
        "use_query_key_norm": True,
        "use_post_ffw_norm": True,
        "use_post_attention_norm": True,
        "final_logit_soft_cap": optional_float(key("final_logit_softcapping")),
        "attention_logit_soft_cap": optional_float(key("attn_logit_softcapping")),
        "use_sliding_window_attention": True,
        "sliding_window_size": int(key("attention.sliding_window", 1024)),
        "global_rope_scaling_factor": float(key("rope.scaling.factor", 1.0) or 1.0),
    }


def _hf(config: dict[str, Any]) -> dict[str, Any]:
    out = softcapped_hf(config, GEMMA3)
    factor = float(config.get("global_rope_scaling_factor") or 1.0)
    local = float(config.get("local_rope_scaling_factor") or 1.0)
    full = {"rope_type": "default", "rope_theta": GEMMA3.rope_base}
    if factor != 1.0:
        full = {"rope_type": "linear", "factor": factor, "rope_theta": GEMMA3.rope_base}
        out["rope_scaling"] = {"rope_type": "linear", "factor": factor}  # transformers 4.x
    local_rope = {"rope_type": "default", "rope_theta": _LOCAL_ROPE_BASE}
    if local != 1.0:
        local_rope = {"rope_type": "linear", "factor": local, "rope_theta": _LOCAL_ROPE_BASE}
    # transformers 5 reads rope_parameters; 4.x reads rope_theta / rope_local_base_freq.
    out.update(
        rope_parameters={"full_attention": full, "sliding_attention": local_rope},
        rope_local_base_freq=_LOCAL_ROPE_BASE,
        use_bidirectional_attention=False,
    )
    return out


GEMMA3 = Architecture(
    name="gemma3",
    title="Gemma 3",
    keras_backbone="Gemma3Backbone",
    keras_causal_lm="Gemma3CausalLM",
    keras_tokenizer="Gemma3Tokenizer",
    keras_preprocessor="Gemma3CausalLMPreprocessor",
    gguf_arch="gemma3",
    hf_model_type="gemma3_text",
    hf_class="Gemma3ForCausalLM",
    rope_base=1_000_000.0,
    halved_ffn=False,
    large_model_layers=62,
    global_every=6,
    block_flags=frozenset({"use_post_attention_norm", "use_post_ffw_norm", "use_query_key_norm"}),
    cache_layout="pair",
    chat_format=GEMMA_TURNS,
    plain_torch=True,
    # The 1B and smaller have 32k tokens of context; 4B and up 128k.
    context_length=lambda config: 32768 if config["num_layers"] <= 26 else 131072,
    gguf_config=_gguf,
    hf_config=_hf,
    matches=lambda cls, config: (
        cls == "Gemma3Backbone"
        or (
            cls is None
            and "global_rope_scaling_factor" in config
            and "global_rope_partial_rotary_factor" not in config  # Gemma 4 has both
        )
    ),
    keras_tokenizer_options=lambda pieces: {"has_vision_tokens": _IMAGE_PIECES <= pieces},
)
