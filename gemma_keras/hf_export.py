"""Writes a `Gemma` as a Hugging Face transformers checkpoint directory.

The directory holds `config.json`, `generation_config.json`,
`model.safetensors` and the tokenizer (`tokenizer.model`, the SentencePiece
model we tokenize with, plus `tokenizer_config.json` and
`special_tokens_map.json`). transformers loads it with
`AutoModelForCausalLM.from_pretrained(dir)` as `GemmaForCausalLM`,
`Gemma2ForCausalLM` or `Gemma3ForCausalLM` (text only).

KerasHub ships an exporter (`keras_hub.src.utils.transformers.export`), but
its weight map reads `layer.weights[0]`, the kernel without LoRA, and its
Gemma config has no Gemma 2 fields; so weights come from
`gemma_keras.tensor_map` and the config is written here.

Example:

>>> write_hf_checkpoint(lm, Path("gemma-hf"), "f32")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from gemma_keras.model import Gemma

_NUMPY = {"f32": np.float32, "f16": np.float16}
_TORCH_DTYPE = {"f32": "float32", "f16": "float16"}
_MODEL = {
    "gemma": ("gemma", "GemmaForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
}
_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>")


def hf_config(lm: Gemma, dtype: str = "f32") -> dict[str, Any]:
    """transformers' `config.json` for the model."""
    arch = lm.info.architecture
    cfg = lm.backbone.get_config()
    tok = lm.tokenizer
    model_type, cls = _MODEL[arch]
    head_dim = cfg["head_dim"]
    config: dict[str, Any] = {
        "architectures": [cls],
        "model_type": model_type,
        "vocab_size": cfg["vocabulary_size"],
        "hidden_size": cfg["hidden_dim"],
        "intermediate_size": cfg["intermediate_dim"] if arch == "gemma3" else cfg["intermediate_dim"] // 2,
        "num_hidden_layers": cfg["num_layers"],
        "num_attention_heads": cfg["num_query_heads"],
        "num_key_value_heads": cfg["num_key_value_heads"],
        "head_dim": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_act": "gelu_pytorch_tanh",
        "rms_norm_eps": cfg["layer_norm_epsilon"],
        "max_position_embeddings": lm.info.context_length,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": True,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
        "pad_token_id": tok.pad_id,
        "dtype": _TORCH_DTYPE[dtype],
        "torch_dtype": _TORCH_DTYPE[dtype],
        "use_cache": True,
    }
    if arch == "gemma":
        config["rope_theta"] = 10_000.0
        return config
    # 1/sqrt(query_pre_attn_scalar) scales the queries, as KerasHub's flag says.
    normalize = cfg.get("query_head_dim_normalize", True)
    config.update(
        query_pre_attn_scalar=head_dim if normalize else cfg["hidden_dim"] // cfg["num_query_heads"],
        sliding_window=cfg["sliding_window_size"],
        final_logit_softcapping=cfg.get("final_logit_soft_cap"),
        attn_logit_softcapping=cfg.get("attention_logit_soft_cap"),
    )
    sliding = bool(cfg.get("use_sliding_window_attention"))
    if arch == "gemma2":
        # KerasHub slides on even layers, as transformers' default does.
        config["layer_types"] = [
            "sliding_attention" if sliding and i % 2 == 0 else "full_attention"
            for i in range(cfg["num_layers"])
        ]
        config["rope_theta"] = 10_000.0
        return config
    config["layer_types"] = [
        "sliding_attention" if sliding and i % 6 < 5 else "full_attention" for i in range(cfg["num_layers"])
    ]
    factor = float(cfg.get("global_rope_scaling_factor") or 1.0)
    local = float(cfg.get("local_rope_scaling_factor") or 1.0)
    full = {"rope_type": "default", "rope_theta": 1_000_000.0}
    if factor != 1.0:
        full = {"rope_type": "linear", "factor": factor, "rope_theta": 1_000_000.0}
        config["rope_scaling"] = {"rope_type": "linear", "factor": factor}  # transformers 4.x
    local_rope = {"rope_type": "default", "rope_theta": 10_000.0}
    if local != 1.0:
        local_rope = {"rope_type": "linear", "factor": local, "rope_theta": 10_000.0}
    # transformers 5 reads rope_parameters; 4.x reads rope_theta / rope_local_base_freq.
    config.update(
        rope_parameters={"full_attention": full, "sliding_attention": local_rope},
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
        use_bidirectional_attention=False,
    )
    return config


def tokenizer_files(lm: Gemma) -> dict[str, Any]:
    """`tokenizer_config.json` and `special_tokens_map.json` for our tokenizer."""
    tok = lm.tokenizer
    present = {name: tok.token_to_id(name) for name in _SPECIALS}
    present = {name: i for name, i in present.items() if i >= 0}
    names = {"bos_token": tok.id_to_token(tok.bos_id), "eos_token": tok.id_to_token(tok.eos_id)}
    names["pad_token"] = tok.id_to_token(tok.pad_id)
    if "<unk>" in present:
        names["unk_token"] = "<unk>"
    added = {
        str(i): {
            "content": name,
            "special": True,
            "lstrip": False,
            "rstrip": False,
            "single_word": False,
            "normalized": False,
        }
        for name, i in sorted(present.items(), key=lambda kv: kv[1])
    }
    config = dict(
        names,
        tokenizer_class="GemmaTokenizer",
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        spaces_between_special_tokens=False,
        model_max_length=lm.info.context_length,
        added_tokens_decoder=added,
    )
    return {"tokenizer_config.json": config, "special_tokens_map.json": names}


def hf_state_dict(lm: Gemma, dtype: str = "f32") -> dict[str, np.ndarray]:
    """Every weight under transformers' name (LoRA merged), in `dtype`."""
    from gemma_keras.tensor_map import hf_name, read_backbone

    arch = lm.info.architecture
    return {
        hf_name(name, arch): np.ascontiguousarray(array.astype(_NUMPY[dtype]))
        for name, array in read_backbone(lm.backbone)
    }


def write_hf_checkpoint(lm: Gemma, out_dir: Path, dtype: str = "f32") -> None:
    """Fills `out_dir` (which the caller stages atomically) with the checkpoint."""
    from safetensors.numpy import save_file

    save_file(hf_state_dict(lm, dtype), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "tokenizer.model").write_bytes(lm.tokenizer.proto)
    tok = lm.tokenizer
    generation = {
        "bos_token_id": tok.bos_id,
        "eos_token_id": list(lm.default_stop_ids),
        "pad_token_id": tok.pad_id,
    }
    files = {"config.json": hf_config(lm, dtype), "generation_config.json": generation, **tokenizer_files(lm)}
    for name, content in files.items():
        write_json(out_dir / name, content)


def write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
