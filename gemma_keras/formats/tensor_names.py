"""One table that names every Gemma weight in Keras, llama.cpp and transformers.

GGUF import, GGUF export and Hugging Face export all read it, so a weight
cannot be mapped one way on the way in and another on the way out.

The canonical form of a tensor here is Hugging Face's: a 2-D weight in
`(out, in)` layout and an RMSNorm weight as the `w` of `x * (1 + w)`, which is
also what Keras stores. llama.cpp's files differ only in storing norms as
`1 + w` (`to_gguf_norm` / `from_gguf_norm`).

Example:

>>> from gemma_keras.architectures import GEMMA3
>>> hf_name("blk.3.ffn_norm.weight", GEMMA3)
'model.layers.3.pre_feedforward_layernorm.weight'
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from gemma_keras import interrupts
from gemma_keras.architectures.record import Architecture
from gemma_keras.backend.no_init import Deferred


@dataclass(frozen=True)
class BlockTensor:
    """One weight of decoder block `i`."""

    gguf: str  # llama.cpp's name: blk.{i}.<gguf>.weight
    keras: str  # attribute path inside KerasHub's decoder block
    layout: str  # how Keras' shape maps to (out, in): see `to_keras` / `from_keras`
    hf: str  # transformers' name: model.layers.{i}.<hf>.weight (Gemma 2 and 3)
    needs: str | None = None  # the backbone flag that makes this weight exist


BLOCK_TENSORS = (
    BlockTensor("attn_norm", "pre_attention_norm.scale", "norm", "input_layernorm"),
    BlockTensor("attn_q", "attention.query_dense.kernel", "heads_in_q", "self_attn.q_proj"),
    BlockTensor("attn_k", "attention.key_dense.kernel", "heads_in_kv", "self_attn.k_proj"),
    BlockTensor("attn_v", "attention.value_dense.kernel", "heads_in_kv", "self_attn.v_proj"),
    BlockTensor("attn_output", "attention.output_dense.kernel", "heads_out", "self_attn.o_proj"),
    BlockTensor("ffn_norm", "pre_ffw_norm.scale", "norm", "pre_feedforward_layernorm"),
    BlockTensor("ffn_gate", "gating_ffw.kernel", "dense", "mlp.gate_proj"),
    BlockTensor("ffn_up", "gating_ffw_2.kernel", "dense", "mlp.up_proj"),
    BlockTensor("ffn_down", "ffw_linear.kernel", "dense", "mlp.down_proj"),
    BlockTensor(
        "post_attention_norm",
        "post_attention_norm.scale",
        "norm",
        "post_attention_layernorm",
        "use_post_attention_norm",
    ),
    BlockTensor(
        "post_ffw_norm", "post_ffw_norm.scale", "norm", "post_feedforward_layernorm", "use_post_ffw_norm"
    ),
    BlockTensor(
        "attn_q_norm", "attention.query_norm.scale", "norm", "self_attn.q_norm", "use_query_key_norm"
    ),
    BlockTensor("attn_k_norm", "attention.key_norm.scale", "norm", "self_attn.k_norm", "use_query_key_norm"),
)
# Without a post-attention norm (Gemma 1), transformers calls the pre-FFW norm that.
_HF_WITHOUT_POST_NORMS = {"ffn_norm": "post_attention_layernorm"}
# Weights outside the blocks: (gguf name, KerasHub layer, attribute, transformers name).
TOP_TENSORS = (
    ("token_embd.weight", "token_embedding", "embeddings", "model.embed_tokens.weight"),
    ("output_norm.weight", "final_normalization", "scale", "model.norm.weight"),
)


def block_tensors(config: dict[str, Any]) -> list[BlockTensor]:
    """The block weights a backbone with this config has."""
    return [t for t in BLOCK_TENSORS if t.needs is None or config.get(t.needs)]


def hf_name(gguf_name: str, arch: Architecture) -> str:
    """transformers' name for a llama.cpp tensor name."""
    for gguf, _, _, hf in TOP_TENSORS:
        if gguf_name == gguf:
            return hf
    _, index, short, _ = gguf_name.split(".")
    if "use_post_attention_norm" not in arch.block_flags and short in _HF_WITHOUT_POST_NORMS:
        return f"model.layers.{index}.{_HF_WITHOUT_POST_NORMS[short]}.weight"
    entry = next(t for t in BLOCK_TENSORS if t.gguf == short)
    return f"model.layers.{index}.{entry.hf}.weight"


def to_gguf_norm(array: np.ndarray) -> np.ndarray:
    """llama.cpp stores every Gemma RMSNorm weight as `1 + w`."""
    return array + 1.0 if array.ndim == 1 else array


def from_gguf_norm(array: np.ndarray) -> np.ndarray:
    return array - 1.0 if array.ndim == 1 else array


_MOVED = ("heads_in_q", "heads_in_kv", "heads_out", "dense")  # the layouts Keras stores otherwise


def to_keras(array: np.ndarray | Deferred, layout: str, config: dict[str, Any]) -> np.ndarray | Deferred:
    """A canonical `(out, in)` array in the shape of the Keras variable (a `Deferred` one stays deferred)."""
    if isinstance(array, Deferred):  # a GGUF tensor, whose reader writes into arrays of any strides
        if layout == "dense":  # the kernel seen transposed is the tensor's shape: read straight into it
            return array.then(lambda a: a.T, view=lambda out: out.T)
        return array.then(lambda a: to_keras(a, layout, config)) if layout in _MOVED else array
    if layout == "heads_in_q" or layout == "heads_in_kv":
        heads = config["num_query_heads" if layout == "heads_in_q" else "num_key_value_heads"]
        return array.reshape(heads, -1, array.shape[1]).transpose(0, 2, 1)  # (heads, hidden, dim)
    if layout == "heads_out":
        return array.reshape(array.shape[0], config["num_query_heads"], -1).transpose(1, 2, 0)
    if layout == "dense":
        return array.T
    return array


def from_keras(array: np.ndarray, layout: str) -> np.ndarray:
    """The inverse of `to_keras`."""
    if layout in ("heads_in_q", "heads_in_kv"):
        heads, hidden, dim = array.shape
        return array.transpose(0, 2, 1).reshape(heads * dim, hidden)
    if layout == "heads_out":
        heads, dim, hidden = array.shape
        return array.transpose(2, 0, 1).reshape(hidden, heads * dim)
    if layout == "dense":
        return array.T
    return array


def _resolve(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def fill_backbone(
    backbone,
    get: Callable[[str], np.ndarray | Deferred],
    mismatch: Callable[[str, tuple, tuple], Exception],
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Assigns every weight of `backbone` from `get(gguf_name)` (canonical form).

    A `Deferred` value is read when it is assigned; inside
    `backend.no_init.weights_follow()`, straight into the variable.

    `mismatch(name, got_shape, wanted_shape)` builds the error to raise when a
    tensor does not fit its variable.
    """
    config = backbone.get_config()
    filled: set[int] = set()

    def assign(variable, value: np.ndarray | Deferred, name: str) -> None:
        if tuple(variable.shape) != value.shape:
            raise mismatch(name, value.shape, tuple(variable.shape))
        variable.assign(value)
        filled.add(id(variable))

    for gguf, layer, attribute, _ in TOP_TENSORS:
        assign(getattr(backbone.get_layer(layer), attribute), get(gguf), gguf)
    for i in range(config["num_layers"]):
        if progress is not None:
            progress(i, config["num_layers"])
        block = backbone.get_layer(f"decoder_block_{i}")
        for t in block_tensors(config):
            name = f"blk.{i}.{t.gguf}.weight"
            assign(_resolve(block, t.keras), to_keras(get(name), t.layout, config), name)
    # Backbones are built without drawing initial weights (`backend.no_init`):
    # one the table missed would stay at zeros, so it is an error here.
    unfilled = [w.path for w in backbone.weights if id(w) not in filled]
    if unfilled:
        raise RuntimeError(f"gemma_keras bug: the tensor table does not name the weights {unfilled[:5]}.")


def read_backbone(backbone) -> Iterator[tuple[str, np.ndarray]]:
    """Yields `(gguf_name, float32 array)` for every weight, in canonical form.

    Reads `layer.kernel` / `layer.embeddings`, which Keras returns with any
    LoRA update already merged, so an exported model holds the merged weights
    and the live model is left as it was.
    """
    from keras import ops

    def numpy(value) -> np.ndarray:
        return np.asarray(ops.convert_to_numpy(ops.cast(value, "float32")), dtype=np.float32)

    config = backbone.get_config()
    for gguf, layer, attribute, _ in TOP_TENSORS:
        yield gguf, numpy(getattr(backbone.get_layer(layer), attribute))
    for i in range(config["num_layers"]):
        interrupts.check()  # a pending SIGINT/SIGTERM stops an export between layers
        block = backbone.get_layer(f"decoder_block_{i}")
        for t in block_tensors(config):
            yield f"blk.{i}.{t.gguf}.weight", from_keras(numpy(_resolve(block, t.keras)), t.layout)
