"""Gemma 3n (text): KerasHub's `Gemma3nBackbone` without its vision and audio towers.

Gemma 3n carries four AltUp streams through its layers, a low-rank LAuReL
branch beside attention, per-layer inputs, activation sparsity in its first
layers, and KV-shared layers at the end. KerasHub has them all; this record
reads transformers' `Gemma3nForCausalLM` config for it. Its chat format is
Gemma 3's.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

from gemma_keras.architectures.chat_format import GEMMA_TURNS
from gemma_keras.architectures.gemma4 import text_config
from gemma_keras.architectures.record import Architecture, GGUFKey
from gemma_keras.errors import SourceError, UnsupportedModelError

_FULL, _SLIDING = "full_attention", "sliding_attention"
GEMMA3N_ROPE_BASE = 1_000_000.0


def hf_backbone_config(config: dict[str, Any], where: str = "config.json") -> dict[str, Any]:
    """`Gemma3nBackbone` arguments (text only) for a transformers Gemma 3n config."""
    cfg = text_config(config)
    layers = cfg.get("num_hidden_layers")
    if not isinstance(layers, int) or isinstance(layers, bool) or not 0 < layers <= 1024:
        raise SourceError(f"{where}: num_hidden_layers = {layers!r} is not a layer count from 1 to 1024.")
    layer_types = list(cfg.get("layer_types") or [_SLIDING if (i + 1) % 5 else _FULL for i in range(layers)])
    if len(layer_types) != layers or set(layer_types) - {_FULL, _SLIDING}:
        raise UnsupportedModelError(
            f"{where}: layer_types must list {layers} attention kinds, got {layer_types!r}."
        )
    rope = cfg.get("rope_parameters") or {}
    for kind in (_FULL, _SLIDING):
        if (rope.get(kind) or {}).get("rope_type", "default") != "default":
            raise UnsupportedModelError(
                f"{where}: {kind} layers use scaled RoPE, which gemma_keras does not run."
            )
    activation = cfg.get("hidden_activation", "gelu_pytorch_tanh")
    if activation != "gelu_pytorch_tanh":
        raise UnsupportedModelError(
            f"{where}: hidden_activation {activation!r}; Gemma 3n uses gelu_pytorch_tanh."
        )
    sparsity = cfg.get("activation_sparsity_pattern")
    return {
        "text_vocab_size": int(cfg["vocab_size"]),
        "text_hidden_size": int(cfg["hidden_size"]),
        "num_hidden_layers": layers,
        "pad_token_id": int(cfg.get("pad_token_id") or 0),
        "num_attention_heads": int(cfg["num_attention_heads"]),
        "num_key_value_heads": int(cfg["num_key_value_heads"]),
        "head_dim": int(cfg["head_dim"]),
        "intermediate_size": cfg["intermediate_size"],
        "hidden_activation": "gelu_approximate",
        "layer_types": layer_types,
        "sliding_window": int(cfg.get("sliding_window") or 512),
        "rope_theta": float(
            (rope.get(_FULL) or {}).get("rope_theta") or cfg.get("rope_theta") or 1_000_000.0
        ),
        "rope_local_base_freq": float((rope.get(_SLIDING) or {}).get("rope_theta") or 10_000.0),
        "max_position_embeddings": int(cfg.get("max_position_embeddings") or 32768),
        "vocab_size_per_layer_input": int(cfg.get("vocab_size_per_layer_input") or cfg["vocab_size"]),
        "hidden_size_per_layer_input": int(cfg["hidden_size_per_layer_input"]),
        "altup_num_inputs": int(cfg.get("altup_num_inputs", 4)),
        "laurel_rank": int(cfg.get("laurel_rank", 64)),
        "activation_sparsity_pattern": list(sparsity) if isinstance(sparsity, list) else sparsity,
        "altup_coef_clip": cfg.get("altup_coef_clip"),
        "altup_active_idx": int(cfg.get("altup_active_idx", 0)),
        "altup_correct_scale": bool(cfg.get("altup_correct_scale", True)),
        "num_kv_shared_layers": int(cfg.get("num_kv_shared_layers") or 0),
        "final_logit_soft_cap": cfg.get("final_logit_softcapping"),
        "rms_norm_eps": float(cfg.get("rms_norm_eps", 1e-6)),
        "vision_encoder_config": None,
        "audio_encoder_config": None,
    }


def parameter_count(config: dict[str, Any]) -> int:
    """The parameters of the text model a `Gemma3nBackbone` config describes (KV-shared layers' unused K/V excluded)."""
    hidden, layers = config["text_hidden_size"], config["num_hidden_layers"]
    heads, kv, dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    per_layer, streams, rank = (
        config["hidden_size_per_layer_input"],
        config["altup_num_inputs"],
        config["laurel_rank"],
    )
    widths = config["intermediate_size"]
    widths = list(widths) if isinstance(widths, (list, tuple)) else [widths] * layers
    shared_from = layers - config.get("num_kv_shared_layers", 0)
    total = config["text_vocab_size"] * hidden + hidden  # embedding, final norm
    total += (
        config["vocab_size_per_layer_input"] * layers * per_layer + hidden * layers * per_layer + per_layer
    )
    total += 2 * (streams - 1) * hidden * hidden  # AltUp projections in and out
    for i in range(layers):
        total += 2 * heads * dim * hidden + dim + 4 * hidden + 3 * hidden * int(widths[i])
        if i < shared_from:
            total += 2 * kv * dim * hidden + dim
        total += streams * streams + streams * streams * streams + hidden * streams + 2 * hidden  # AltUp
        total += 2 * hidden * rank + hidden  # LAuReL
        total += 2 * hidden * per_layer + hidden  # per-layer input
    return total


def gguf_backbone_config(key: GGUFKey, num_layers: int) -> dict[str, Any]:
    """The Gemma 3n entries of a backbone config, from llama.cpp's `gemma3n.*` keys.

    The sizes Gemma 1-4 share keep their names here (`keras_config` renames
    them). llama.cpp stores each layer's activation sparsity as the normal
    quantile it cuts at; the LAuReL rank is the width of a LAuReL tensor.
    """
    pattern = key("attention.sliding_window_pattern", required=True)
    if not isinstance(pattern, list) or len(pattern) != num_layers:
        raise SourceError(f"gemma3n.attention.sliding_window_pattern must list {num_layers} flags.")
    widths = key("feed_forward_length", required=True)
    widths = [int(w) for w in widths] if isinstance(widths, list) else [int(widths)] * num_layers
    kv = key("attention.head_count_kv", required=True)
    if isinstance(kv, list):
        if len(set(kv)) != 1:
            raise UnsupportedModelError(
                "gemma3n.attention.head_count_kv varies by layer; Gemma 3n's does not."
            )
        kv = kv[0]
    scales = key("activation_sparsity_scale")
    if scales is not None and (not isinstance(scales, list) or len(scales) != num_layers):
        raise SourceError(f"gemma3n.activation_sparsity_scale must list {num_layers} numbers.")
    laurel = key("shape:blk.0.laurel_l.weight")
    if laurel is None or len(laurel) != 2:
        raise SourceError("the tensor blk.0.laurel_l.weight is missing or not a matrix.")
    swa = key("rope.freq_base_swa", 10_000.0)
    return {
        "num_key_value_heads": int(kv),
        "head_dim": int(key("attention.key_length", required=True)),
        "intermediate_dim": max(widths),  # for the size checks; the backbone takes the list
        "intermediate_size": widths,
        "layer_types": [_SLIDING if s else _FULL for s in pattern],
        "sliding_window": int(key("attention.sliding_window", 512)),
        "rope_theta": float(key("rope.freq_base", GEMMA3N_ROPE_BASE)),
        "rope_local_base_freq": float(swa),
        "hidden_size_per_layer_input": int(key("embedding_length_per_layer_input", required=True)),
        "altup_num_inputs": int(key("altup.num_inputs", 4)),
        "altup_active_idx": int(key("altup.active_idx", 0)),
        "altup_coef_clip": 120.0,  # transformers' default; it clips only while training
        "altup_correct_scale": True,
        "laurel_rank": int(laurel[0]),
        "activation_sparsity_pattern": (
            None if scales is None else [round(_normal_cdf(float(z)), 6) for z in scales]
        ),
        "num_kv_shared_layers": int(key("attention.shared_kv_layers", 0) or 0),
        "final_logit_soft_cap": key("final_logit_softcapping"),
        "hidden_activation": "gelu_approximate",
        "max_position_embeddings": int(key("context_length", 32768)),
        "pad_token_id": 0,
        "vision_encoder_config": None,
        "audio_encoder_config": None,
    }


def _normal_cdf(z: float) -> float:
    """The standard normal CDF (0 at -inf), the inverse of the quantile llama.cpp stores."""
    return 0.0 if z == -math.inf else NormalDist().cdf(z)


def gguf_metadata(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """llama.cpp's `gemma3n.*` keys for a `Gemma3nBackbone` config (`gguf_backbone_config`'s inverse)."""
    layers = config["num_hidden_layers"]
    widths = config["intermediate_size"]
    widths = [int(w) for w in widths] if isinstance(widths, (list, tuple)) else [int(widths)] * layers
    sparsity = config.get("activation_sparsity_pattern") or [0.0] * layers
    keys: dict[str, Any] = {
        "block_count": layers,
        "embedding_length": config["text_hidden_size"],
        "feed_forward_length": widths,
        "attention.head_count": config["num_attention_heads"],
        "attention.head_count_kv": config["num_key_value_heads"],
        "rope.freq_base": float(config["rope_theta"]),
        "rope.freq_base_swa": float(config["rope_local_base_freq"]),
        "attention.layer_norm_rms_epsilon": float(config["rms_norm_eps"]),
        "attention.key_length": config["head_dim"],
        "attention.value_length": config["head_dim"],
        "attention.sliding_window": config["sliding_window"],
        "altup.active_idx": config["altup_active_idx"],
        "altup.num_inputs": config["altup_num_inputs"],
        "embedding_length_per_layer_input": config["hidden_size_per_layer_input"],
        "attention.shared_kv_layers": config.get("num_kv_shared_layers") or 0,
        # llama.cpp stores the normal quantile each layer's activations are cut at.
        "activation_sparsity_scale": [
            float("-inf") if p <= 0 else NormalDist().inv_cdf(float(p)) for p in sparsity
        ],
        "attention.sliding_window_pattern": [t == _SLIDING for t in config["layer_types"]],
    }
    if config.get("final_logit_soft_cap"):
        keys["final_logit_softcapping"] = float(config["final_logit_soft_cap"])
    return keys, {}


# Gemma 1-4's size names -> Gemma3nBackbone's; None: Gemma 3n takes that size in another form.
KERAS_NAMES = {
    "vocabulary_size": "text_vocab_size",
    "num_layers": "num_hidden_layers",
    "num_query_heads": "num_attention_heads",
    "hidden_dim": "text_hidden_size",
    "layer_norm_epsilon": "rms_norm_eps",
    "intermediate_dim": None,
}


def keras_config(config: dict[str, Any]) -> dict[str, Any]:
    """`Gemma3nBackbone` arguments for a config in Gemma 1-4's size names (as the GGUF reader builds it)."""
    if "text_hidden_size" in config:  # already the backbone's own
        return config
    renamed = {KERAS_NAMES.get(k, k): v for k, v in config.items() if KERAS_NAMES.get(k, k) is not None}
    # llama.cpp pads the per-layer table to the whole vocabulary
    renamed.setdefault("vocab_size_per_layer_input", renamed["text_vocab_size"])
    return renamed


def hf_config(config: dict[str, Any]) -> dict[str, Any]:
    """transformers' `config.json` entries for a `Gemma3nBackbone` config (`hf_backbone_config`'s inverse).

    Gemma 3n names its sizes its own way, so every size is written here.
    """
    if config.get("hidden_activation", "gelu_approximate") != "gelu_approximate":
        raise UnsupportedModelError(
            f"this Gemma 3n uses {config['hidden_activation']!r}; transformers' Gemma 3n runs gelu_pytorch_tanh."
        )
    sparsity = config.get("activation_sparsity_pattern")
    return {
        "vocab_size": config["text_vocab_size"],
        "hidden_size": config["text_hidden_size"],
        "intermediate_size": config["intermediate_size"],
        "num_hidden_layers": config["num_hidden_layers"],
        "num_attention_heads": config["num_attention_heads"],
        "num_key_value_heads": config["num_key_value_heads"],
        "head_dim": config["head_dim"],
        "rms_norm_eps": config["rms_norm_eps"],
        "layer_types": list(config["layer_types"]),
        "sliding_window": config["sliding_window"],
        "rope_parameters": {
            _FULL: {"rope_type": "default", "rope_theta": config["rope_theta"]},
            _SLIDING: {"rope_type": "default", "rope_theta": config["rope_local_base_freq"]},
        },
        "final_logit_softcapping": config.get("final_logit_soft_cap"),
        "vocab_size_per_layer_input": config["vocab_size_per_layer_input"],
        "hidden_size_per_layer_input": config["hidden_size_per_layer_input"],
        "altup_num_inputs": config["altup_num_inputs"],
        "altup_active_idx": config["altup_active_idx"],
        "altup_coef_clip": config.get("altup_coef_clip"),
        "altup_correct_scale": config["altup_correct_scale"],
        "laurel_rank": config["laurel_rank"],
        "activation_sparsity_pattern": list(sparsity) if sparsity is not None else None,
        "num_kv_shared_layers": config.get("num_kv_shared_layers") or 0,
    }


GEMMA3N = Architecture(
    name="gemma3n",
    title="Gemma 3n",
    keras_backbone="Gemma3nBackbone",
    keras_causal_lm="Gemma3nCausalLM",
    keras_tokenizer="Gemma3nTokenizer",
    keras_preprocessor="Gemma3nCausalLMPreprocessor",
    gguf_arch="gemma3n",
    hf_model_type="gemma3n_text",
    hf_class="Gemma3nForCausalLM",
    rope_base=GEMMA3N_ROPE_BASE,
    halved_ffn=False,
    large_model_layers=None,
    global_every=None,
    block_flags=frozenset(),
    cache_layout="altup",
    cuttable_calls=False,
    keeps_gguf_blocks=False,
    chat_format=GEMMA_TURNS,
    plain_torch=True,
    context_length=lambda config: int(config.get("max_position_embeddings") or 32768),
    gguf_config=gguf_backbone_config,
    keras_config=keras_config,
    hf_config=hf_config,
    matches=lambda cls, config: cls == "Gemma3nBackbone" or (cls is None and "altup_num_inputs" in config),
    hf_backbone_config=hf_backbone_config,
    parameter_count=parameter_count,
    export_formats=frozenset({"keras", "safetensors", "gguf"}),
    layers_differ=True,
    gguf_metadata=gguf_metadata,
)
