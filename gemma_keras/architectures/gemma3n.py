"""Gemma 3n (text): KerasHub's `Gemma3nBackbone` without its vision and audio towers.

Gemma 3n carries four AltUp streams through its layers, a low-rank LAuReL
branch beside attention, per-layer inputs, activation sparsity in its first
layers, and KV-shared layers at the end. KerasHub has them all; this record
reads transformers' `Gemma3nForCausalLM` config for it. Its chat format is
Gemma 3's.
"""

from __future__ import annotations

from typing import Any

from gemma_keras.architectures.chat_format import GEMMA_TURNS
from gemma_keras.architectures.gemma4 import text_config
from gemma_keras.architectures.record import Architecture, GGUFKey
from gemma_keras.errors import SourceError, UnsupportedModelError

_FULL, _SLIDING = "full_attention", "sliding_attention"


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


def _no_gguf(key: GGUFKey, num_layers: int) -> dict[str, Any]:
    raise UnsupportedModelError(
        "gemma_keras does not read Gemma 3n GGUF files yet; load the transformers checkpoint directory."
    )


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
    rope_base=1_000_000.0,
    halved_ffn=False,
    large_model_layers=None,
    global_every=None,
    block_flags=frozenset(),
    cache_layout="altup",
    chat_format=GEMMA_TURNS,
    plain_torch=False,
    context_length=lambda config: int(config.get("max_position_embeddings") or 32768),
    gguf_config=_no_gguf,
    hf_config=hf_config,
    matches=lambda cls, config: cls == "Gemma3nBackbone" or (cls is None and "altup_num_inputs" in config),
    hf_backbone_config=hf_backbone_config,
    parameter_count=parameter_count,
    export_formats=frozenset({"keras", "safetensors"}),
    layers_differ=True,
)
