"""Writes a model as a llama.cpp GGUF file with gguf-py's `GGUFWriter`.

The file follows what llama.cpp's `convert_hf_to_gguf.py` writes for Gemma,
Gemma 2 and Gemma 3: its tensor names (from `gemma_keras.formats.tensor_names`),
RMSNorm weights stored as `1 + w`, the `<arch>.*` hyperparameters and a
SentencePiece-style vocabulary (`tokenizer.ggml.model = "llama"`). For Gemma 4,
whose layers differ, the record gives the keys (`Architecture.gguf_metadata`)
and the weights come from its table (`formats.layer_tables`), unshifted (Gemma 3n too).

dtypes, as llama.cpp's converter does them:

- `"f32"`: every tensor F32;
- `"f16"` (the default): 2-D weights F16, norms F32;
- `"q8_0"`: 2-D weights Q8_0 (blocks of 32 along a row, one f16 scale each);
  a weight whose rows are not a multiple of 32 long falls back to F16, and
  norms stay F32.

The file also carries `gemma_keras.export` (uint32, `EXPORT_VERSION`), a key
llama.cpp ignores: it marks the file as one we wrote, so that a later export
with `overwrite=True` may replace it, and a GGUF from elsewhere never is
(`written_by_gemma_keras`).

Example:

>>> from gemma_keras.formats.gguf_writer import write_gguf
>>> write_gguf(lm.causal_lm, lm.tokenizer, lm.info, Path("model.gguf"), "q8_0")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gemma_keras.architectures.record import Architecture
from gemma_keras.errors import ExportError, UnsupportedModelError
from gemma_keras.formats.gguf_header import read_header
from gemma_keras.formats.layer_tables import TABLES, gguf_name, read_rows
from gemma_keras.formats.model_info import ModelInfo
from gemma_keras.formats.staging import Kind
from gemma_keras.formats.tensor_names import read_backbone, to_gguf_norm

_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}
EXPORT_KEY = "gemma_keras.export"
EXPORT_VERSION = 1


def written_by_gemma_keras(path: Path) -> bool:
    """True when `path` is a whole GGUF file that carries our `gemma_keras.export` key."""
    value = read_header(path).fields.get(EXPORT_KEY)
    return isinstance(value, int) and not isinstance(value, bool)


def _has_gguf_magic(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


KIND = Kind("GGUF file", directory=False, ours=written_by_gemma_keras, looks_like=_has_gguf_magic)


def encode(array: np.ndarray, dtype: str):
    """Returns `(data, raw_dtype)` for `GGUFWriter.add_tensor`, choosing per tensor."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    if array.ndim == 1 or dtype == "f32":
        return array.astype(np.float32), None
    if dtype == "q8_0" and array.shape[-1] % 32 == 0:
        return quantize(array, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
    return array.astype(np.float16), None


def write_gguf(causal_lm, tokenizer, info: ModelInfo, path: Path, dtype: str = "f16") -> None:
    """Writes the model to the GGUF file `path` (which the caller stages atomically)."""
    import gguf

    arch = info.arch
    backbone = causal_lm.backbone
    cfg = backbone.get_config()
    if arch.gguf_metadata is not None:  # layers differ: the architecture's keys and table (Gemma 3n, 4)
        try:
            keys, extra = arch.gguf_metadata(cfg)
        except UnsupportedModelError as exc:
            raise ExportError(f"This {arch.title} model cannot be written as GGUF: {exc}") from None
        tensors = _table_tensors(backbone, arch, extra, tokenizer.vocabulary_size)
    else:
        _check_gemma_config(arch, cfg)
        keys, tensors = None, ((name, to_gguf_norm(array)) for name, array in read_backbone(backbone))

    writer = gguf.GGUFWriter(os.fspath(path), arch.gguf_arch)
    writer.add_type("model")
    writer.add_name(f"{arch.gguf_arch} exported by gemma_keras")
    writer.add_uint32(EXPORT_KEY, EXPORT_VERSION)
    if keys is not None:
        writer.add_context_length(info.context_length)
        _add_keys(writer, arch.gguf_arch, keys)
    else:
        _add_gemma_hyperparameters(writer, arch, cfg, info)
    writer.add_file_type(gguf.LlamaFileType[_FILE_TYPES[dtype]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_proto_vocabulary(writer, tokenizer.proto, arch.gguf_visible_pieces)

    for name, array in tensors:
        data, raw_dtype = encode(array, "f32" if name.endswith(_KEPT_F32) else dtype)
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# Matrices llama.cpp's converter keeps in float32 at any output type: Gemma 4's MoE router and
# Gemma 3n's AltUp coefficients.
_KEPT_F32 = (".ffn_gate_inp.weight", ".altup_correct_coef.weight", ".altup_predict_coef.weight")


def _check_gemma_config(arch: Architecture, cfg: dict) -> None:
    """Gemma 1-3 settings llama.cpp infers rather than reads, which the model must therefore have."""
    if cfg.get("query_head_dim_normalize", True) != arch.queries_normalized(cfg["num_layers"]):
        raise ExportError(
            f"This {arch.title} model scales queries differently from what llama.cpp infers from its "
            f"{cfg['num_layers']} layers, so a GGUF file cannot describe it. Export to safetensors instead."
        )
    if arch.global_every is not None and not cfg.get("use_sliding_window_attention"):
        raise ExportError(
            f"llama.cpp always uses sliding-window attention for {arch.title}; this model does not."
        )


def _table_tensors(backbone, arch: Architecture, extra: dict[str, np.ndarray], vocab: int):
    """`(llama.cpp name, array)` for the extra tensors, then every weight from the architecture's table.

    llama.cpp stores these architectures' norms as transformers does (no `1 + w` shift), stacks
    rows that share a name (Gemma 3n's AltUp projections), and pads a per-layer table shorter
    than the vocabulary with zero rows, as its converter does.
    """
    yield from extra.items()
    stacks: dict[str, list[np.ndarray]] = {}
    for entry, layer, array in read_rows(backbone, TABLES[arch.name]):
        name = gguf_name(entry, layer)
        if entry.stacked is not None:
            stacks.setdefault(name, []).append(array)
            continue
        if name == "per_layer_token_embd.weight" and array.shape[0] < vocab:
            array = np.concatenate([array, np.zeros((vocab - array.shape[0], array.shape[1]), array.dtype)])
        yield name, array
    for name, arrays in stacks.items():
        yield name, np.stack(arrays)


def _add_keys(writer, prefix: str, keys: dict) -> None:
    """`<prefix>.<name>` keys typed as llama.cpp's converter writes them."""
    for name, value in keys.items():
        key = f"{prefix}.{name}"
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, list):
            writer.add_array(key, value)
        else:
            raise TypeError(f"gemma_keras bug: GGUF key {key} has a value of type {type(value).__name__}.")


def _add_gemma_hyperparameters(writer, arch: Architecture, cfg: dict, info: ModelInfo) -> None:
    add_hyperparameters(
        writer,
        arch,
        context=info.context_length,
        hidden=cfg["hidden_dim"],
        layers=cfg["num_layers"],
        ffn=arch.ffn_width(cfg),
        heads=cfg["num_query_heads"],
        kv_heads=cfg["num_key_value_heads"],
        head_dim=cfg["head_dim"],
        eps=cfg["layer_norm_epsilon"],
        sliding_window=cfg.get("sliding_window_size"),
        attn_softcap=cfg.get("attention_logit_soft_cap"),
        final_softcap=cfg.get("final_logit_soft_cap"),
        rope_scaling=cfg.get("global_rope_scaling_factor", 1.0) or 1.0,
    )


def add_hyperparameters(
    writer,
    arch: Architecture,
    *,
    context: int,
    hidden: int,
    layers: int,
    ffn: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    eps: float,
    sliding_window: int | None = None,
    attn_softcap: float | None = None,
    final_softcap: float | None = None,
    rope_scaling: float = 1.0,
) -> None:
    """The `<arch>.*` keys llama.cpp reads for Gemma (also used by `testing.write_tiny_gguf`).

    The sliding window is written only for architectures whose layers slide.
    """
    import gguf

    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(eps)
    writer.add_rope_freq_base(arch.rope_base)
    if sliding_window and arch.global_every is not None:
        writer.add_sliding_window(sliding_window)
    if attn_softcap:
        writer.add_attn_logit_softcapping(attn_softcap)
    if final_softcap:
        writer.add_final_logit_softcapping(final_softcap)
    if rope_scaling != 1.0:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope_scaling)


def add_vocabulary(
    writer,
    tokens: list[str],
    scores: list[float],
    types: list[int],
    special_ids: dict[str, int],
    add_space_prefix: bool = False,
) -> None:
    """The tokenizer keys: llama.cpp's three arrays plus the special ids.

    `special_ids` has `bos_id`, `eos_id`, `unk_id` and `pad_id` (a negative
    pad id is left out).
    """
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(special_ids["bos_id"])
    writer.add_eos_token_id(special_ids["eos_id"])
    writer.add_unk_token_id(special_ids["unk_id"])
    if special_ids["pad_id"] >= 0:
        writer.add_pad_token_id(special_ids["pad_id"])
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(add_space_prefix)


def _add_proto_vocabulary(writer, proto: bytes, visible: frozenset[str] = frozenset()) -> None:
    """Our SentencePiece model as GGUF tokenizer keys.

    Pieces, types and scores are written as the model holds them, except
    that the control pieces in `visible` become user-defined, as llama.cpp's
    converter writes them. A model imported from GGUF has scores that follow
    piece order (see `gemma_keras.tokenizer`), which is the merge order it
    tokenizes with.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    model = sp_pb2.ModelProto()
    model.ParseFromString(proto)
    spec = model.trainer_spec
    add_vocabulary(
        writer,
        [p.piece for p in model.pieces],
        [float(p.score) for p in model.pieces],
        [4 if p.piece in visible else int(p.type) for p in model.pieces],  # 4: USER_DEFINED
        {"bos_id": spec.bos_id, "eos_id": spec.eos_id, "unk_id": spec.unk_id, "pad_id": spec.pad_id},
        bool(model.normalizer_spec.add_dummy_prefix),
    )
    # What llama.cpp's converter also writes for Gemma.
    writer.add_tokenizer_pre("default")
    writer.add_add_eos_token(False)
