"""Writes a `Gemma` as a llama.cpp GGUF file with gguf-py's `GGUFWriter`.

The file follows what llama.cpp's `convert_hf_to_gguf.py` writes for Gemma,
Gemma 2 and Gemma 3: its tensor names (from `gemma_keras.tensor_map`), RMSNorm
weights stored as `1 + w`, the `<arch>.*` hyperparameters and a
SentencePiece-style vocabulary (`tokenizer.ggml.model = "llama"`).

dtypes, as llama.cpp's converter does them:

- `"f32"`: every tensor F32;
- `"f16"` (the default): 2-D weights F16, norms F32;
- `"q8_0"`: 2-D weights Q8_0 (blocks of 32 along a row, one f16 scale each);
  a weight whose rows are not a multiple of 32 long falls back to F16, and
  norms stay F32.

Example:

>>> from gemma_keras.gguf_export import write_gguf
>>> write_gguf(lm, Path("model.gguf"), "q8_0")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gemma_keras.errors import ExportError

if TYPE_CHECKING:
    from gemma_keras.model import Gemma

_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}


def encode(array: np.ndarray, dtype: str):
    """Returns `(data, raw_dtype)` for `GGUFWriter.add_tensor`, choosing per tensor."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    if array.ndim == 1 or dtype == "f32":
        return array.astype(np.float32), None
    if dtype == "q8_0" and array.shape[-1] % 32 == 0:
        return quantize(array, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
    return array.astype(np.float16), None


def write_gguf(lm: Gemma, path: Path, dtype: str = "f16") -> None:
    """Writes `lm` to the GGUF file `path` (which the caller stages atomically)."""
    import gguf

    from gemma_keras.gguf_import import _27B_LAYERS, _ROPE_BASE
    from gemma_keras.tensor_map import read_backbone, to_gguf_norm

    arch = lm.info.architecture
    cfg = lm.backbone.get_config()
    if cfg.get("query_head_dim_normalize", True) != (cfg["num_layers"] != _27B_LAYERS.get(arch)):
        raise ExportError(
            f"This {arch} model scales queries differently from what llama.cpp infers from its "
            f"{cfg['num_layers']} layers, so a GGUF file cannot describe it. Export to safetensors instead."
        )
    if arch != "gemma" and not cfg.get("use_sliding_window_attention"):
        raise ExportError(f"llama.cpp always uses sliding-window attention for {arch}; this model does not.")

    writer = gguf.GGUFWriter(os.fspath(path), arch)
    writer.add_type("model")
    writer.add_name(f"{arch} exported by gemma_keras")
    writer.add_context_length(lm.info.context_length)
    writer.add_embedding_length(cfg["hidden_dim"])
    writer.add_block_count(cfg["num_layers"])
    # KerasHub's Gemma 1/2 `intermediate_dim` counts gate and up together.
    ffn = cfg["intermediate_dim"] if arch == "gemma3" else cfg["intermediate_dim"] // 2
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(cfg["num_query_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_key_length(cfg["head_dim"])
    writer.add_value_length(cfg["head_dim"])
    writer.add_layer_norm_rms_eps(cfg["layer_norm_epsilon"])
    writer.add_rope_freq_base(_ROPE_BASE[arch])
    if arch != "gemma":
        writer.add_sliding_window(cfg["sliding_window_size"])
        if cfg.get("attention_logit_soft_cap"):
            writer.add_attn_logit_softcapping(cfg["attention_logit_soft_cap"])
        if cfg.get("final_logit_soft_cap"):
            writer.add_final_logit_softcapping(cfg["final_logit_soft_cap"])
    factor = cfg.get("global_rope_scaling_factor", 1.0) or 1.0
    if arch == "gemma3" and factor != 1.0:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    writer.add_file_type(gguf.LlamaFileType[_FILE_TYPES[dtype]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_vocabulary(writer, lm.tokenizer.proto)

    for name, array in read_backbone(lm.backbone):
        data, raw_dtype = encode(to_gguf_norm(array), dtype)
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_vocabulary(writer, proto: bytes) -> None:
    """The SentencePiece model as llama.cpp's three arrays plus special ids.

    Pieces, types and scores are written as the model holds them. A model
    imported from GGUF has scores that follow piece order (see
    `gemma_keras.tokenizer`), which is the merge order it tokenizes with.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    model = sp_pb2.ModelProto()
    model.ParseFromString(proto)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([p.piece for p in model.pieces])
    writer.add_token_scores([float(p.score) for p in model.pieces])
    writer.add_token_types([int(p.type) for p in model.pieces])
    spec = model.trainer_spec
    writer.add_bos_token_id(spec.bos_id)
    writer.add_eos_token_id(spec.eos_id)
    writer.add_unk_token_id(spec.unk_id)
    if spec.pad_id >= 0:
        writer.add_pad_token_id(spec.pad_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(bool(model.normalizer_spec.add_dummy_prefix))
