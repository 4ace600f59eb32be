"""Writes a model as a Hugging Face transformers checkpoint directory.

The directory holds `config.json`, `generation_config.json`,
`model.safetensors` and the tokenizer (`tokenizer.model`, the SentencePiece
model we tokenize with, plus `tokenizer_config.json` and
`special_tokens_map.json`), and last our manifest `gemma_keras.json`
(kind "safetensors"), which marks the directory as ours so that a later
`overwrite=True` may replace it (transformers ignores it). transformers loads it with
`AutoModelForCausalLM.from_pretrained(dir)` as `GemmaForCausalLM`,
`Gemma2ForCausalLM` or `Gemma3ForCausalLM` (text only).

KerasHub ships an exporter (`keras_hub.src.utils.transformers.export`), but
its weight map reads `layer.weights[0]`, the kernel without LoRA, and its
Gemma config has no Gemma 2 fields; so weights come from
`gemma_keras.formats.tensor_names` and the config is written here.

Example:

>>> write_hf_checkpoint(lm.causal_lm, lm.tokenizer, lm.info, Path("gemma-hf"), "f32")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from gemma_keras.formats.layer_tables import TABLES, read_table
from gemma_keras.formats.manifest import SAFETENSORS, export_kind, manifest_info, write_manifest
from gemma_keras.formats.model_info import ModelInfo
from gemma_keras.formats.staging import Kind
from gemma_keras.formats.tensor_names import hf_name, read_backbone

KIND = Kind("safetensors checkpoint", directory=True, ours=lambda path: export_kind(path) == SAFETENSORS)

_NUMPY = {"f32": np.float32, "f16": np.float16}
_TORCH_DTYPE = {"f32": "float32", "f16": "float16"}
_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>")


def hf_config(
    backbone_config: dict[str, Any], tokenizer, info: ModelInfo, dtype: str = "f32"
) -> dict[str, Any]:
    """transformers' `config.json` for the model."""
    arch = info.arch
    cfg = backbone_config
    config: dict[str, Any] = {"architectures": [arch.hf_class], "model_type": arch.hf_model_type}
    if "hidden_dim" in cfg:  # KerasHub's Gemma 1-4 names; Gemma 3n's record writes its own sizes
        config.update(
            {
                "vocab_size": cfg["vocabulary_size"],
                "hidden_size": cfg["hidden_dim"],
                "intermediate_size": arch.ffn_width(cfg),
                "num_hidden_layers": cfg["num_layers"],
                "num_attention_heads": cfg["num_query_heads"],
                "num_key_value_heads": cfg["num_key_value_heads"],
                "head_dim": cfg["head_dim"],
                "rms_norm_eps": cfg["layer_norm_epsilon"],
            }
        )
    config.update(
        {
            "hidden_activation": "gelu_pytorch_tanh",
            "hidden_act": "gelu_pytorch_tanh",
            "max_position_embeddings": info.context_length,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "tie_word_embeddings": True,
            "bos_token_id": tokenizer.bos_id,
            "eos_token_id": tokenizer.eos_id,
            "pad_token_id": tokenizer.pad_id,
            "dtype": _TORCH_DTYPE[dtype],
            "torch_dtype": _TORCH_DTYPE[dtype],
            "use_cache": True,
        }
    )
    config.update(arch.hf_config(cfg))
    return config


def tokenizer_files(tokenizer, info: ModelInfo) -> dict[str, Any]:
    """`tokenizer_config.json` and `special_tokens_map.json` for our tokenizer."""
    tok = tokenizer
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
        model_max_length=info.context_length,
        added_tokens_decoder=added,
    )
    return {"tokenizer_config.json": config, "special_tokens_map.json": names}


def hf_state_dict(backbone, info: ModelInfo, dtype: str = "f32") -> dict[str, np.ndarray]:
    """Every weight under transformers' name (LoRA merged), in `dtype`."""
    arch = info.arch
    if arch.hf_backbone_config is not None:  # converted by gemma_keras itself: its own table (Gemma 4)
        named = ((f"model.{name}", array) for name, array in read_table(backbone, TABLES[arch.name]))
    else:
        named = ((hf_name(name, arch), array) for name, array in read_backbone(backbone))
    return {name: np.ascontiguousarray(array.astype(_NUMPY[dtype])) for name, array in named}


def write_hf_checkpoint(causal_lm, tokenizer, info: ModelInfo, out_dir: Path, dtype: str = "f32") -> None:
    """Fills `out_dir` (which the caller stages atomically) with the checkpoint."""
    from safetensors.numpy import save_file

    backbone = causal_lm.backbone
    save_file(
        hf_state_dict(backbone, info, dtype), str(out_dir / "model.safetensors"), metadata={"format": "pt"}
    )
    (out_dir / "tokenizer.model").write_bytes(tokenizer.proto)
    generation = {
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": list(info.arch.stop_token_ids(tokenizer)),
        "pad_token_id": tokenizer.pad_id,
    }
    files = {
        "config.json": hf_config(backbone.get_config(), tokenizer, info, dtype),
        "generation_config.json": generation,
        **tokenizer_files(tokenizer, info),
    }
    for name, content in files.items():
        write_json(out_dir / name, content)
    write_manifest(out_dir, manifest_info(info), kind=SAFETENSORS)


def write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
