"""Reads a Gemma GGUF file: its metadata as a KerasHub backbone config, and its tensors.

The metadata gives the architecture (an `Architecture` record) and sizes;
gguf-py's block decoders (`gguf_blocks.dequantize`) turn every tensor
llama.cpp writes (F32, F16, BF16, Q8_0, Q4_0, the K-quants and the rest)
into float32, in Hugging
Face's `(out, in)` layout, as llama.cpp stores it. Building the Keras model
from it is `gemma_keras.sources.convert`'s job.

Example:

>>> info = read_gguf("model.gguf")  # doctest: +SKIP
>>> info.architecture, info.backbone_config["num_layers"]  # doctest: +SKIP
('gemma3', 18)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from gemma_keras.architectures.record import Architecture
from gemma_keras.architectures.registry import by_gguf_arch
from gemma_keras.backend.no_init import Deferred
from gemma_keras.errors import GGUFError, ModelNotFoundError, UnsupportedModelError
from gemma_keras.formats.gguf_blocks import dequantize
from gemma_keras.formats.gguf_header import GGUFHeader, Unreadable, read_header
from gemma_keras.formats.sentencepiece import proto_from_gguf_vocab
from gemma_keras.formats.sizes import FFN_WIDTH, SIZES, check_backbone_config, check_context, size
from gemma_keras.formats.tensor_names import block_tensors

GGUF_MAGIC = b"GGUF"
# Cheap to read, and enough to tell an instruction-tuned model from a pretrained one.
_NAME_KEYS = ("general.finetune", "general.name", "general.basename")


@dataclass
class GGUFModel:
    """What a GGUF file says about a Gemma model, ready to build in Keras."""

    path: Path
    arch: Architecture
    backbone_config: dict[str, Any]
    context_length: int
    tokens: list[str]
    token_types: list[int]
    special_ids: dict[str, int]
    names: list[str]
    header: GGUFHeader = field(repr=False)

    @property
    def architecture(self) -> str:
        return self.arch.name

    def tokenizer_proto(self) -> bytes:
        # llama.cpp stores some of Gemma 4's chat markers as user-defined pieces, which text
        # would match; as control pieces, a message that types them stays text.
        markers = set(self.arch.chat_format.marker_pieces)
        types = [3 if t in markers else kind for t, kind in zip(self.tokens, self.token_types, strict=True)]
        return proto_from_gguf_vocab(self.tokens, types, **self.special_ids)

    @cached_property
    def tensors(self) -> GGUFTensors:
        return GGUFTensors(self.header)

    def tensor(self, name: str) -> np.ndarray:
        """A tensor as float32 in `(out, in)` layout."""
        return self.tensors.tensor(name)


# Each mapping of the file's bytes is dropped once they are read: mapped pages count in the
# process's memory, and the 270M's embedding alone is 178 MB of them.
_BYTES_PER_MAP = 1 << 24


class GGUFTensors:
    """A GGUF file's tensors by name, each dequantized to float32 `(out, in)` when it is read."""

    def __init__(self, header: GGUFHeader):
        self.header = header
        self.path = header.path
        self._index = {t.name: t for t in header.tensors}

    def tensor(self, name: str) -> np.ndarray:
        return np.asarray(self.weight(name))

    def weight(self, name: str) -> Deferred:
        """`tensor(name)`, dequantized only when it is read, straight into the reader's buffer."""
        tensor = self._index.get(name)
        if tensor is None:
            raise GGUFError(f"{self.path}: the tensor {name!r} is missing.")

        def read(out: np.ndarray) -> None:
            from gguf import GGMLQuantizationType

            qtype = GGMLQuantizationType(tensor.qtype)  # known: read_header checked it
            rows = tensor.nbytes // tensor.row_bytes
            whole = out.ndim != 2 or len(out) != rows  # a vector, or a flat buffer
            step = rows if whole else max(1, _BYTES_PER_MAP // tensor.row_bytes)
            try:
                for start in range(0, rows, step):
                    part = out if whole else out[start : start + step]
                    dequantize(self.header.tensor_bytes(tensor, start, start + step), qtype, part)
            except (NotImplementedError, ValueError, KeyError) as exc:
                raise GGUFError(
                    f"{self.path}: cannot dequantize tensor {name!r} of type {qtype.name} "
                    f"into its declared shape {tensor.shape}: {exc}"
                ) from exc

        return Deferred(tensor.shape, np.float32, read)


def read_tensors(path: str | os.PathLike) -> GGUFTensors:
    """The tensors of a GGUF file whose metadata was read before: its metadata arrays are skipped, not parsed."""
    return GGUFTensors(read_header(path, values=False))


def _field(header: GGUFHeader, path: Path, key: str, default: Any = None, required: bool = False):
    value = header.fields.get(key)
    if value is None:
        if required:
            raise GGUFError(f"{path}: the metadata key {key!r} is missing.")
        return default
    if isinstance(value, Unreadable):
        raise GGUFError(f"{path}: the metadata key {key!r} is unreadable: {value.reason}.")
    return value


def check_magic(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except IsADirectoryError:
        raise GGUFError(f"{path} is a directory, not a GGUF file.") from None
    except OSError as exc:
        raise GGUFError(f"{path}: cannot read the file: {exc}") from exc
    if head != GGUF_MAGIC:
        raise GGUFError(
            f"{path} is not a GGUF file (it does not start with b'GGUF'). "
            "Pass a .gguf file written by llama.cpp or gguf-py, a Keras preset "
            "directory, or a preset name."
        )


def read_gguf(path: str | os.PathLike) -> GGUFModel:
    """Reads and validates a Gemma GGUF file's metadata (not its weights)."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"{path}: no such file.")
    check_magic(path)
    header = read_header(path)
    try:
        return _read_metadata(path, header)
    except (GGUFError, UnsupportedModelError):
        raise
    except (TypeError, ValueError, OverflowError, IndexError, KeyError, AttributeError) as exc:
        # A value of the wrong type (a string where a count belongs, ...).
        raise GGUFError(f"{path}: malformed metadata ({type(exc).__name__}: {exc}).") from exc


def gguf_architecture(path: str | os.PathLike) -> Architecture:
    """The architecture a GGUF file names, from its header alone (its vocabulary is skipped, not parsed)."""
    path = Path(path)
    check_magic(path)
    return _architecture(path, read_header(path, values=False))


def _architecture(path: Path, header: GGUFHeader) -> Architecture:
    return by_gguf_arch(_field(header, path, "general.architecture", required=True), str(path))


def _read_metadata(path: Path, header: GGUFHeader) -> GGUFModel:
    arch = _architecture(path, header)

    def key(name, default=None, required=False):
        return _field(header, path, f"{arch.gguf_arch}.{name}", default, required)

    a, where = arch.gguf_arch, str(path)

    def sized(name: str, bounds: tuple[int, int], default=None, required=False) -> int:
        return size(where, f"{a}.{name}", key(name, default, required), *bounds, GGUFError)

    num_layers = sized("block_count", SIZES["num_layers"], required=True)
    hidden = sized("embedding_length", SIZES["hidden_dim"], required=True)
    heads = sized("attention.head_count", SIZES["num_query_heads"], required=True)
    if arch.layers_differ:  # per-layer arrays: the record reads them, and check_backbone_config bounds them
        kv_heads, head_dim, ffn = heads, max(hidden // heads, 1), 0
        key = _with_tensors(key, header, path)
    else:
        kv_heads = sized("attention.head_count_kv", SIZES["num_key_value_heads"], heads)
        head_dim = sized("attention.key_length", SIZES["head_dim"], max(hidden // heads, 1))
        ffn = sized("feed_forward_length", FFN_WIDTH, required=True)
    eps = float(key("attention.layer_norm_rms_epsilon", 1e-6))
    context = check_context(where, f"{a}.context_length", key("context_length", 8192), GGUFError)
    rope_base = float(key("rope.freq_base", arch.rope_base))
    if not math.isfinite(rope_base) or abs(rope_base - arch.rope_base) > 1e-3 * arch.rope_base:
        raise UnsupportedModelError(
            f"{path}: rope.freq_base is {rope_base:g}, but KerasHub's {arch.title} "
            f"backbone fixes it at {arch.rope_base:g}."
        )

    tokens = _field(header, path, "tokenizer.ggml.tokens", required=True)
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise GGUFError(f"{path}: tokenizer.ggml.tokens is not a list of strings.")
    types = _field(header, path, "tokenizer.ggml.token_type")
    if types is None:
        types = [1] * len(tokens)
    if len(types) != len(tokens):
        raise GGUFError(f"{path}: {len(tokens)} tokens but {len(types)} token types.")
    special = {
        "bos_id": int(_field(header, path, "tokenizer.ggml.bos_token_id", 2)),
        "eos_id": int(_field(header, path, "tokenizer.ggml.eos_token_id", 1)),
        "unk_id": int(_field(header, path, "tokenizer.ggml.unknown_token_id", 3)),
        "pad_id": int(_field(header, path, "tokenizer.ggml.padding_token_id", 0)),
    }
    for name, value in special.items():
        if not 0 <= value < len(tokens):
            raise GGUFError(f"{path}: tokenizer {name} {value} is outside the vocabulary.")

    size(where, "the number of tokenizer.ggml.tokens", len(tokens), *SIZES["vocabulary_size"], GGUFError)
    config: dict[str, Any] = {
        "vocabulary_size": len(tokens),
        "num_layers": num_layers,
        "num_query_heads": heads,
        "num_key_value_heads": kv_heads,
        "hidden_dim": hidden,
        "head_dim": head_dim,
        "intermediate_dim": arch.keras_intermediate_dim(ffn),
        "layer_norm_epsilon": eps,
        **arch.gguf_config(key, num_layers),
    }
    check_backbone_config(config, where=where, error=GGUFError, names=_gguf_names(a), context=context)
    if arch.layers_differ:
        _check_parameters(path, header, arch, config)
    else:
        _check_tensor_shapes(path, header, arch, config, ffn)
    return GGUFModel(
        path=path,
        arch=arch,
        backbone_config=arch.keras_config(config),
        context_length=context,
        tokens=list(tokens),
        token_types=[int(t) for t in types],
        special_ids=special,
        names=[str(v) for v in (_field(header, path, k) for k in _NAME_KEYS) if isinstance(v, str)],
        header=header,
    )


def _with_tensors(key, header: GGUFHeader, path: Path):
    """`key`, which also gives the `rope_freqs` tensor's values (llama.cpp's partial-RoPE table)
    and, for "shape:<name>", a tensor's shape (sizes the metadata does not state)."""

    def read(name, default=None, required=False):
        if name.startswith("shape:"):
            tensor = next((t for t in header.tensors if t.name == name[len("shape:") :]), None)
            return None if tensor is None else tuple(tensor.shape)
        if name != "rope_freqs":
            return key(name, default, required)
        tensor = next((t for t in header.tensors if t.name == "rope_freqs.weight"), None)
        if tensor is None:
            return None
        if tensor.qtype != 0 or len(tensor.shape) != 1 or tensor.shape[0] > 1 << 16:
            raise GGUFError(f"{path}: rope_freqs.weight is not a short F32 vector.")
        return np.frombuffer(header.tensor_bytes(tensor), dtype=np.float32)

    return read


def _check_parameters(path: Path, header: GGUFHeader, arch: Architecture, config: dict[str, Any]) -> None:
    """A model whose layers differ: its tensors must hold exactly the parameters the metadata implies.

    Each tensor's shape is checked against its variable when the weights are
    filled; this bounds what building the model allocates before that.
    """
    held = sum(int(np.prod(t.shape)) for t in header.tensors if t.name != "rope_freqs.weight")
    implied = arch.parameter_count(arch.keras_config(config))
    if implied != held:
        raise GGUFError(
            f"{path}: the metadata implies a {arch.title} model of {implied:,} parameters, but the tensors "
            f"hold {held:,}; the file is incomplete or its metadata is wrong."
        )
    embedding = next((t for t in header.tensors if t.name == "token_embd.weight"), None)
    if embedding is None or embedding.shape[0] != config["vocabulary_size"]:
        rows = None if embedding is None else embedding.shape[0]
        raise GGUFError(
            f"{path}: token_embd.weight has {rows} rows for {config['vocabulary_size']} tokens; "
            "gemma_keras reads only files whose embedding covers the whole vocabulary."
        )


def _gguf_names(a: str) -> dict[str, str]:
    """The GGUF key behind each backbone config field, for messages."""
    return {
        "vocabulary_size": "the number of tokenizer.ggml.tokens",
        "num_layers": f"{a}.block_count",
        "hidden_dim": f"{a}.embedding_length",
        "num_query_heads": f"{a}.attention.head_count",
        "num_key_value_heads": f"{a}.attention.head_count_kv",
        "head_dim": f"{a}.attention.key_length",
        "intermediate_dim": f"{a}.feed_forward_length (as KerasHub's intermediate_dim)",
        "layer_norm_epsilon": f"{a}.attention.layer_norm_rms_epsilon",
        "sliding_window_size": f"{a}.attention.sliding_window",
        "attention_logit_soft_cap": f"{a}.attn_logit_softcapping",
        "final_logit_soft_cap": f"{a}.final_logit_softcapping",
        "global_rope_scaling_factor": f"{a}.rope.scaling.factor",
    }


def expected_tensor_shapes(
    arch: Architecture, config: dict[str, Any], ffn: int
) -> dict[str, tuple[int, ...]]:
    """Every tensor a Gemma GGUF must hold, with its `(out, in)` shape."""
    hidden, head_dim = config["hidden_dim"], config["head_dim"]
    q_dim, kv_dim = config["num_query_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (config["vocabulary_size"], hidden),
        "output_norm.weight": (hidden,),
    }
    by_layout = {"heads_in_q": (q_dim, hidden), "heads_in_kv": (kv_dim, hidden), "heads_out": (hidden, q_dim)}
    dense = {"ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden), "ffn_down": (hidden, ffn)}
    norms = {"attn_q_norm": (head_dim,), "attn_k_norm": (head_dim,)}
    flags = {flag: True for flag in arch.block_flags}
    for i in range(config["num_layers"]):
        # Matrices first, then norms: the order `testing.write_tiny_gguf` draws its weights in.
        for t in sorted(block_tensors(flags), key=lambda t: t.layout == "norm"):
            shape = by_layout.get(t.layout) or dense.get(t.gguf) or norms.get(t.gguf) or (hidden,)
            shapes[f"blk.{i}.{t.gguf}.weight"] = shape
    return shapes


def _check_tensor_shapes(
    path: Path, header: GGUFHeader, arch: Architecture, config: dict[str, Any], ffn: int
) -> None:
    """Checks every tensor against the metadata before anything is allocated.

    The tensors' bytes are already known to lie inside the file, so a model
    whose shapes all match cannot be larger than the file implies: absurd
    sizes in the metadata are caught here, not by a MemoryError later.
    """
    found = {t.name: t.shape for t in header.tensors}
    if config["num_layers"] > len(found):
        raise GGUFError(
            f"{path}: block_count {config['num_layers']} but only {len(found)} tensors in the file."
        )
    for name, shape in expected_tensor_shapes(arch, config, ffn).items():
        if name not in found:
            raise GGUFError(
                f"{path}: the tensor {name!r} is missing; the file is incomplete or not a {arch.title} model."
            )
        if found[name] != shape:
            raise GGUFError(
                f"{path}: tensor {name!r} has shape {found[name]}, but the metadata implies {shape}."
            )
