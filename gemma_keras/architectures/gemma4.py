"""Gemma 4 (text): KerasHub's `Gemma4Backbone`, dense, MoE, KV-shared and per-layer-input variants.

Unlike Gemma 1-3, layers differ from one another: global layers may have a
wider head (`global_head_dim`), fewer key/value heads with keys reused as
values (`num_global_key_value_heads`), and the last `num_kv_shared_layers`
layers compute no keys or values of their own but read those of an earlier
layer of the same kind. `hf_backbone_config` reads all of it from
transformers' `config.json`, in the layout transformers 5 writes
(`per_layer_config`, no `global_head_dim`) and in the older one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gemma_keras.architectures.chat_format import GEMMA4_TURNS
from gemma_keras.architectures.record import Architecture, GGUFKey
from gemma_keras.errors import SourceError, UnsupportedModelError

_FULL = "full_attention"
_SLIDING = "sliding_attention"


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The text part of a transformers config: the config itself, or its `text_config`."""
    return config.get("text_config") or config


def _rope(params: dict[str, Any], kind: str, where: str) -> tuple[float | None, float, float]:
    """(theta, scaling factor, partial rotary factor) of one layer kind's RoPE."""
    rope = params.get(kind) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type not in ("default", "proportional", "linear"):
        raise UnsupportedModelError(
            f"{where}: {kind} layers use RoPE type {rope_type!r}; gemma_keras runs Gemma 4 with "
            "'default', 'proportional' or 'linear' RoPE only."
        )
    factor = float(rope.get("factor") or 1.0) if rope_type == "linear" else 1.0
    partial = float(rope.get("partial_rotary_factor") or 1.0)
    theta = rope.get("rope_theta")
    return (None if theta is None else float(theta)), factor, partial


def _global_overrides(
    cfg: dict[str, Any], layer_types: list[str], where: str
) -> tuple[int | None, int | None]:
    """(global head dim, global key/value heads) from either config layout.

    transformers 5 writes `per_layer_config` ({layer: {field: value}}); KerasHub
    can only build models whose overrides are the same on every global layer
    and absent on sliding ones, so any other pattern is refused by name.
    """
    head_dim = cfg.get("global_head_dim")
    kv_heads = cfg.get("num_global_key_value_heads")
    per_layer = cfg.get("per_layer_config")
    if per_layer:
        seen: dict[str, set] = {"head_dim": set(), "num_key_value_heads": set()}
        for key, overrides in per_layer.items():
            layer = int(key)
            if not 0 <= layer < len(layer_types):
                raise UnsupportedModelError(
                    f"{where}: per_layer_config names layer {layer}, which does not exist."
                )
            unknown = set(overrides) - set(seen)
            if unknown or layer_types[layer] != _FULL:
                raise UnsupportedModelError(
                    f"{where}: per_layer_config overrides {sorted(overrides)} on {layer_types[layer]} "
                    f"layer {layer}; gemma_keras runs only head_dim / num_key_value_heads overrides "
                    "shared by every full-attention layer."
                )
            for name, value in overrides.items():
                seen[name].add(int(value))
        full_layers = {i for i, t in enumerate(layer_types) if t == _FULL}
        for name, values in seen.items():
            covered = {int(k) for k, v in per_layer.items() if name in v}
            if len(values) > 1 or (values and covered != full_layers):
                raise UnsupportedModelError(
                    f"{where}: per_layer_config sets {name} differently across full-attention layers "
                    f"({sorted(values)}); gemma_keras runs only one value shared by all of them."
                )
        head_dim = next(iter(seen["head_dim"]), head_dim)
        kv_heads = next(iter(seen["num_key_value_heads"]), kv_heads)
    if cfg.get("attention_k_eq_v") and kv_heads is None:
        kv_heads = int(cfg["num_key_value_heads"])  # keys reused as values, same head count
    if kv_heads is not None and not cfg.get("attention_k_eq_v", True):
        raise UnsupportedModelError(
            f"{where}: global layers have their own key/value head count without attention_k_eq_v; "
            "KerasHub's Gemma 4 ties the two, so gemma_keras cannot run this model."
        )
    return (None if head_dim is None else int(head_dim)), (None if kv_heads is None else int(kv_heads))


def hf_backbone_config(config: dict[str, Any], where: str = "config.json") -> dict[str, Any]:
    """`Gemma4Backbone` arguments for a transformers Gemma 4 (text) config."""
    cfg = text_config(config)
    if cfg.get("use_bidirectional_attention") == "all":
        raise UnsupportedModelError(
            f"{where}: an embedding model (bidirectional attention); it cannot generate text."
        )
    layers = cfg.get("num_hidden_layers")
    if not isinstance(layers, int) or isinstance(layers, bool) or not 0 < layers <= 1024:
        raise SourceError(f"{where}: num_hidden_layers = {layers!r} is not a layer count from 1 to 1024.")
    layer_types = list(cfg.get("layer_types") or [_SLIDING if (i + 1) % 6 else _FULL for i in range(layers)])
    if len(layer_types) != layers or set(layer_types) - {_FULL, _SLIDING}:
        raise UnsupportedModelError(
            f"{where}: layer_types must list {layers} entries of {_FULL!r} / {_SLIDING!r}, got {layer_types!r}."
        )
    global_head_dim, global_kv_heads = _global_overrides(cfg, layer_types, where)
    params = cfg.get("rope_parameters") or {}
    global_theta, global_factor, partial = _rope(params, _FULL, where)
    local_theta, local_factor, local_partial = _rope(params, _SLIDING, where)
    if local_partial != 1.0:
        raise UnsupportedModelError(f"{where}: partial RoPE on sliding layers is not something Gemma 4 does.")
    window = cfg.get("sliding_window") or 0
    moe = bool(cfg.get("enable_moe_block"))
    return {
        "vocabulary_size": int(cfg["vocab_size"]),
        "image_size": None,
        "num_layers": layers,
        "num_query_heads": int(cfg["num_attention_heads"]),
        "num_key_value_heads": int(cfg["num_key_value_heads"]),
        "hidden_dim": int(cfg["hidden_size"]),
        "intermediate_dim": int(cfg["intermediate_size"]),
        "head_dim": int(cfg["head_dim"]),
        "global_head_dim": global_head_dim,
        "attention_logit_soft_cap": cfg.get("attn_logit_softcapping"),
        "final_logit_soft_cap": cfg.get("final_logit_softcapping"),
        "use_sliding_window_attention": window > 0,
        "sliding_window_size": int(window or 512),
        "layer_types": layer_types,
        "layer_norm_epsilon": float(cfg.get("rms_norm_eps", 1e-6)),
        "num_kv_shared_layers": int(cfg.get("num_kv_shared_layers") or 0),
        "num_global_key_value_heads": global_kv_heads,
        "hidden_size_per_layer_input": int(cfg.get("hidden_size_per_layer_input") or 0),
        "vocab_size_per_layer_input": cfg.get("vocab_size_per_layer_input"),
        "global_rope_partial_rotary_factor": partial,
        "global_rope_wavelength": global_theta,
        "local_rope_wavelength": local_theta,
        "global_rope_scaling_factor": global_factor,
        "local_rope_scaling_factor": local_factor,
        "use_double_wide_mlp": bool(cfg.get("use_double_wide_mlp")),
        "enable_moe_block": moe,
        "num_experts": cfg.get("num_experts") if moe else None,
        "expert_intermediate_dim": (cfg.get("moe_intermediate_size") or cfg.get("expert_intermediate_size"))
        if moe
        else None,
        "num_experts_per_token": int(cfg.get("top_k_experts") or 8),
    }


def parameter_count(config: dict[str, Any]) -> int:
    """The parameters of the text model a `Gemma4Backbone` config describes."""
    hidden, layers = config["hidden_dim"], config["num_layers"]
    heads, kv, dim = config["num_query_heads"], config["num_key_value_heads"], config["head_dim"]
    width, per_layer = config["intermediate_dim"], config.get("hidden_size_per_layer_input") or 0
    shared_from = layers - (config.get("num_kv_shared_layers") or 0)
    total = config["vocabulary_size"] * hidden + hidden
    if per_layer:
        table = config.get("vocab_size_per_layer_input") or config["vocabulary_size"]
        total += table * layers * per_layer + hidden * layers * per_layer + per_layer
    for i, kind in enumerate(config["layer_types"]):
        full = kind == _FULL
        d = (config.get("global_head_dim") or dim) if full else dim
        k_eq_v = full and config.get("num_global_key_value_heads") is not None
        n_kv = config["num_global_key_value_heads"] if k_eq_v else kv
        total += 2 * heads * d * hidden + d + 4 * hidden + 1  # q, o, q norm, four norms, layer scalar
        if i < shared_from:
            total += n_kv * d * hidden * (1 if k_eq_v else 2) + d  # k (v), k norm
        ffn = 2 * width if config.get("use_double_wide_mlp") and i >= shared_from else width
        total += 3 * hidden * ffn
        if per_layer:
            total += 2 * hidden * per_layer + hidden
        if config.get("enable_moe_block"):
            experts, expert_width = config["num_experts"], config["expert_intermediate_dim"]
            total += 3 * hidden + hidden + hidden * experts + experts + 3 * experts * hidden * expert_width
    return total


def _per_layer(value: Any, num_layers: int, name: str) -> list:
    """A GGUF value that is one number for all layers, or an array of one per layer."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * num_layers
    if len(values) != num_layers:
        raise SourceError(f"gemma4.{name} lists {len(values)} values for {num_layers} layers.")
    return values


def gguf_backbone_config(key: GGUFKey, num_layers: int) -> dict[str, Any]:
    """The Gemma 4 entries of a backbone config, from llama.cpp's `gemma4.*` keys.

    `key("rope_freqs")` gives llama.cpp's table of which global RoPE
    dimensions rotate (1 rotates, 1e30 does not), from which the partial
    rotary factor follows.
    """
    pattern = key("attention.sliding_window_pattern", required=True)
    sliding = [bool(s) for s in _per_layer(pattern, num_layers, "attention.sliding_window_pattern")]
    layer_types = [_SLIDING if s else _FULL for s in sliding]
    kv = [
        int(n)
        for n in _per_layer(
            key("attention.head_count_kv", required=True), num_layers, "attention.head_count_kv"
        )
    ]
    local_kv = {n for n, s in zip(kv, sliding, strict=True) if s}
    global_kv = {n for n, s in zip(kv, sliding, strict=True) if not s}
    if len(local_kv) > 1 or len(global_kv) > 1:
        raise UnsupportedModelError("gemma4.attention.head_count_kv varies within sliding or global layers.")
    local = next(iter(local_kv or global_kv))
    glob = next(iter(global_kv or local_kv))
    widths = [
        int(w)
        for w in _per_layer(key("feed_forward_length", required=True), num_layers, "feed_forward_length")
    ]
    shared = int(key("attention.shared_kv_layers", 0) or 0)
    width = widths[0]
    double = any(w != width for w in widths)
    if double and widths != [width * (2 if i >= num_layers - shared else 1) for i in range(num_layers)]:
        raise UnsupportedModelError(
            "gemma4.feed_forward_length varies in a way KerasHub's Gemma 4 cannot build."
        )
    head_dim = int(key("attention.key_length_swa", required=True))
    global_dim = int(key("attention.key_length", head_dim))
    freqs = key("rope_freqs")
    partial = 1.0 if freqs is None else float((freqs < 1e3).sum()) / max(len(freqs), 1)
    experts = int(key("expert_count", 0) or 0)
    window = int(key("attention.sliding_window", 512) or 0)
    return {
        "num_key_value_heads": local,
        "head_dim": head_dim,
        "global_head_dim": global_dim if global_dim != head_dim else None,
        # Global layers with fewer KV heads reuse their keys as values (no attn_v).
        "num_global_key_value_heads": glob if glob != local else None,
        "intermediate_dim": width,
        "use_double_wide_mlp": double,
        "layer_types": layer_types,
        "use_sliding_window_attention": window > 0,
        "sliding_window_size": window or 512,
        "final_logit_soft_cap": key("final_logit_softcapping"),
        "attention_logit_soft_cap": None,
        "num_kv_shared_layers": shared,
        "hidden_size_per_layer_input": int(key("embedding_length_per_layer_input", 0) or 0),
        "global_rope_partial_rotary_factor": partial,
        "global_rope_wavelength": float(key("rope.freq_base", GEMMA4.rope_base)),
        "local_rope_wavelength": float(key("rope.freq_base_swa", 10_000.0)),
        "enable_moe_block": experts > 0,
        "num_experts": experts or None,
        "expert_intermediate_dim": int(key("expert_feed_forward_length", 0) or 0) or None,
        "num_experts_per_token": int(key("expert_used_count", 8) or 8),
        "image_size": None,
    }


def hf_config(config: dict[str, Any]) -> dict[str, Any]:
    """transformers' Gemma 4 entries of `config.json` for a backbone config (`hf_backbone_config`'s inverse)."""
    layer_types = list(config["layer_types"])
    overrides: dict[str, Any] = {}
    if config.get("global_head_dim"):
        overrides["head_dim"] = config["global_head_dim"]
    if config.get("num_global_key_value_heads"):
        overrides["num_key_value_heads"] = config["num_global_key_value_heads"]
    full = {
        "rope_type": "proportional",
        "rope_theta": config.get("global_rope_wavelength") or GEMMA4.rope_base,
    }
    full["partial_rotary_factor"] = config.get("global_rope_partial_rotary_factor") or 1.0
    if (config.get("global_rope_scaling_factor") or 1.0) != 1.0:
        raise UnsupportedModelError("gemma_keras cannot write a Gemma 4 config with scaled global RoPE yet.")
    sliding = {"rope_type": "default", "rope_theta": config.get("local_rope_wavelength") or 10_000.0}
    moe = bool(config.get("enable_moe_block"))
    return {
        "layer_types": layer_types,
        # transformers 5 writes the global layers' overrides this way; keys are layer indices.
        "per_layer_config": {
            str(i): dict(overrides) for i, t in enumerate(layer_types) if t == _FULL and overrides
        },
        "sliding_window": config["sliding_window_size"] if config.get("use_sliding_window_attention") else 0,
        "final_logit_softcapping": config.get("final_logit_soft_cap"),
        "rope_parameters": {_FULL: full, _SLIDING: sliding},
        "hidden_size_per_layer_input": config.get("hidden_size_per_layer_input") or 0,
        "vocab_size_per_layer_input": config.get("vocab_size_per_layer_input") or config["vocabulary_size"],
        "num_kv_shared_layers": config.get("num_kv_shared_layers") or 0,
        "attention_k_eq_v": bool(config.get("num_global_key_value_heads")),
        "use_double_wide_mlp": bool(config.get("use_double_wide_mlp")),
        "enable_moe_block": moe,
        "num_experts": config.get("num_experts") if moe else None,
        "top_k_experts": config.get("num_experts_per_token") if moe else None,
        "moe_intermediate_size": config.get("expert_intermediate_dim") if moe else None,
        "use_bidirectional_attention": None,
    }


def gguf_metadata(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """llama.cpp's `gemma4.*` keys and extra tensors for a backbone config (`gguf_backbone_config`'s inverse).

    Written as llama.cpp's `convert_hf_to_gguf.py` writes them: per-layer
    arrays where layers differ, and the `rope_freqs` table that makes the
    global layers' RoPE partial (1 rotates a dimension pair, 1e30 leaves it).
    """
    for name in ("global_rope_scaling_factor", "local_rope_scaling_factor"):
        if (config.get(name) or 1.0) != 1.0:
            raise UnsupportedModelError(f"llama.cpp's gemma4 has no key for {name} = {config[name]}.")
    if config.get("attention_logit_soft_cap"):
        raise UnsupportedModelError("llama.cpp's gemma4 has no attention logit soft cap.")
    layers, layer_types = config["num_layers"], list(config["layer_types"])
    sliding = [t == _SLIDING for t in layer_types]
    dim = config["head_dim"]
    global_dim = config.get("global_head_dim") or dim
    kv, global_kv = config["num_key_value_heads"], config.get("num_global_key_value_heads")
    shared = config.get("num_kv_shared_layers") or 0
    width = config["intermediate_dim"]
    keys: dict[str, Any] = {
        "block_count": layers,
        "embedding_length": config["hidden_dim"],
        "feed_forward_length": (
            [width * (2 if i >= layers - shared else 1) for i in range(layers)]
            if config.get("use_double_wide_mlp")
            else width
        ),
        "attention.head_count": config["num_query_heads"],
        "attention.head_count_kv": (
            [kv if s else global_kv for s in sliding] if global_kv is not None else kv
        ),
        "rope.freq_base": float(config.get("global_rope_wavelength") or GEMMA4.rope_base),
        "rope.freq_base_swa": float(config.get("local_rope_wavelength") or 10_000.0),
        "attention.layer_norm_rms_epsilon": float(config["layer_norm_epsilon"]),
        "attention.key_length": global_dim,
        "attention.value_length": global_dim,
        "attention.key_length_swa": dim,
        "attention.value_length_swa": dim,
        "rope.dimension_count": global_dim,
        "rope.dimension_count_swa": dim,
        "attention.sliding_window": (
            config["sliding_window_size"] if config.get("use_sliding_window_attention") else 0
        ),
        "attention.sliding_window_pattern": sliding,
        "attention.shared_kv_layers": shared,
        "embedding_length_per_layer_input": config.get("hidden_size_per_layer_input") or 0,
    }
    if config.get("final_logit_soft_cap"):
        keys["final_logit_softcapping"] = float(config["final_logit_soft_cap"])
    if config.get("enable_moe_block"):
        keys["expert_count"] = config["num_experts"]
        keys["expert_used_count"] = config["num_experts_per_token"]
        keys["expert_feed_forward_length"] = config["expert_intermediate_dim"]
    partial = config.get("global_rope_partial_rotary_factor") or 1.0
    rotated = int(global_dim * partial / 2)
    freqs = np.array([1.0] * rotated + [1e30] * (global_dim // 2 - rotated), dtype=np.float32)
    return keys, {"rope_freqs.weight": freqs}


# What llama.cpp's converter stores as user-defined pieces, so that its chat parser sees them in text.
GGUF_VISIBLE_PIECES = frozenset(
    {
        "<|channel>",
        "<channel|>",
        "<|tool_call>",
        "<tool_call|>",
        "<|tool_response>",
        "<tool_response|>",
        '<|"|>',
    }
)


GEMMA4 = Architecture(
    name="gemma4",
    title="Gemma 4",
    keras_backbone="Gemma4Backbone",
    keras_causal_lm="Gemma4CausalLM",
    keras_tokenizer="Gemma4Tokenizer",
    keras_preprocessor="Gemma4CausalLMPreprocessor",
    gguf_arch="gemma4",
    hf_model_type="gemma4_text",
    hf_class="Gemma4ForCausalLM",
    rope_base=1_000_000.0,
    halved_ffn=False,
    large_model_layers=None,
    global_every=None,  # layer_types lists each layer's kind
    block_flags=frozenset(),
    cache_layout="per_layer",
    cuttable_calls=False,
    keeps_gguf_blocks=False,
    chat_format=GEMMA4_TURNS,
    plain_torch=True,
    # E2B and E4B (per-layer inputs): 128k tokens; 26B-A4B and 31B: 256k. A source's own value wins.
    context_length=lambda config: 131072 if config.get("hidden_size_per_layer_input") else 262144,
    gguf_config=gguf_backbone_config,
    hf_config=hf_config,
    matches=lambda cls, config: (
        cls == "Gemma4Backbone" or (cls is None and "global_rope_partial_rotary_factor" in config)
    ),
    keras_tokenizer_options=lambda pieces: {
        "has_vision_tokens": {"<|image>", "<image|>", "<|image|>"} <= pieces,
        "has_audio_tokens": {"<|audio>", "<audio|>", "<|audio|>"} <= pieces,
        "has_video_tokens": "<|video|>" in pieces,
    },
    hf_backbone_config=hf_backbone_config,
    parameter_count=parameter_count,
    export_formats=frozenset({"keras", "safetensors", "gguf"}),
    layers_differ=True,
    gguf_metadata=gguf_metadata,
    gguf_visible_pieces=GGUF_VISIBLE_PIECES,
)
