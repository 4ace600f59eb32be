"""Gemma 4's weights in KerasHub and transformers, in one table.

Gemma 4's layers differ from one another, so a row names a weight that a
block may or may not have: a KV-shared layer has no key or value projection,
a global layer whose keys are reused as values has no value projection, and
only per-layer-input and MoE models have those weights. `fill_gemma4` fills
exactly the variables the KerasHub backbone built, each from the transformers
tensor of the row, and fails on any variable no row names.

llama.cpp's names (`gguf`) are recorded for the GGUF reader and writer that
will use this table; they are the names its `convert_hf_to_gguf.py` writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from gemma_keras import interrupts


@dataclass(frozen=True)
class Tensor:
    """One weight: llama.cpp's name, the KerasHub attribute path, its layout, transformers' name."""

    gguf: str
    keras: str
    layout: str
    hf: str


# Weights outside the blocks: the KerasHub attribute path starts at the backbone.
TOP = (
    Tensor("token_embd", "token_embedding.embeddings", "as_is", "embed_tokens.weight"),
    Tensor("output_norm", "layer_norm.scale", "as_is", "norm.weight"),
    Tensor(
        "per_layer_token_embd",
        "per_layer_token_embedding.embeddings",
        "as_is",
        "embed_tokens_per_layer.weight",
    ),
    Tensor(
        "per_layer_model_proj",
        "per_layer_model_projection.kernel",
        "dense",
        "per_layer_model_projection.weight",
    ),
    Tensor(
        "per_layer_proj_norm", "per_layer_projection_norm.scale", "as_is", "per_layer_projection_norm.weight"
    ),
)
# Weights of decoder block i: `blk.{i}.<gguf>` and `layers.{i}.<hf>`.
BLOCK = (
    Tensor("layer_output_scale", "layer_scalar", "scalar", "layer_scalar"),
    Tensor("attn_norm", "pre_attention_norm.scale", "as_is", "input_layernorm.weight"),
    Tensor("post_attention_norm", "post_attention_norm.scale", "as_is", "post_attention_layernorm.weight"),
    Tensor("ffn_norm", "pre_ffw_norm.scale", "as_is", "pre_feedforward_layernorm.weight"),
    Tensor("post_ffw_norm", "post_ffw_norm.scale", "as_is", "post_feedforward_layernorm.weight"),
    Tensor("attn_q", "attention.query_dense.kernel", "heads_in", "self_attn.q_proj.weight"),
    Tensor("attn_k", "attention.key_dense.kernel", "heads_in", "self_attn.k_proj.weight"),
    Tensor("attn_v", "attention.value_dense.kernel", "heads_in", "self_attn.v_proj.weight"),
    Tensor("attn_output", "attention.output_dense.kernel", "heads_out", "self_attn.o_proj.weight"),
    Tensor("attn_q_norm", "attention.query_norm.scale", "as_is", "self_attn.q_norm.weight"),
    Tensor("attn_k_norm", "attention.key_norm.scale", "as_is", "self_attn.k_norm.weight"),
    Tensor("ffn_gate", "gating_ffw.kernel", "dense", "mlp.gate_proj.weight"),
    Tensor("ffn_up", "gating_ffw_2.kernel", "dense", "mlp.up_proj.weight"),
    Tensor("ffn_down", "ffw_linear.kernel", "dense", "mlp.down_proj.weight"),
    Tensor("inp_gate", "per_layer_input_gate.kernel", "dense", "per_layer_input_gate.weight"),
    Tensor("proj", "per_layer_up_proj.kernel", "dense", "per_layer_projection.weight"),
    Tensor("post_norm", "post_per_layer_input_norm.scale", "as_is", "post_per_layer_input_norm.weight"),
    Tensor("post_ffw_norm_1", "post_ffw_norm_dense.scale", "as_is", "post_feedforward_layernorm_1.weight"),
    Tensor("pre_ffw_norm_2", "pre_ffw_norm_moe.scale", "as_is", "pre_feedforward_layernorm_2.weight"),
    Tensor("post_ffw_norm_2", "post_ffw_norm_moe_path.scale", "as_is", "post_feedforward_layernorm_2.weight"),
    Tensor("ffn_gate_inp.scale", "moe_router.per_dim_scale", "as_is", "router.scale"),
    Tensor("ffn_gate_inp", "moe_router.proj.kernel", "dense", "router.proj.weight"),
    # transformers keeps gate and up of every expert in one (experts, 2 * width, hidden) tensor.
    Tensor("ffn_gate_up_exps", "moe_expert_bank.gate_proj", "experts_first_half", "experts.gate_up_proj"),
    Tensor("ffn_gate_up_exps", "moe_expert_bank.up_proj", "experts_second_half", "experts.gate_up_proj"),
    Tensor("ffn_down_exps", "moe_expert_bank.down_proj", "experts", "experts.down_proj"),
    Tensor("ffn_down_exps.scale", "moe_expert_bank.per_expert_scale", "as_is", "router.per_expert_scale"),
)


def to_keras(array: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray:
    """A transformers tensor in the layout of the Keras variable of `shape`."""
    if layout == "heads_in":  # (heads * dim, hidden) -> (heads, hidden, dim)
        return array.reshape(shape[0], shape[2], shape[1]).transpose(0, 2, 1)
    if layout == "heads_out":  # (hidden, heads * dim) -> (heads, dim, hidden)
        return array.reshape(shape[2], shape[0], shape[1]).transpose(1, 2, 0)
    if layout == "dense":
        return array.T
    if layout == "scalar":
        return array.reshape(shape)
    if layout == "experts":  # (experts, out, in) -> (experts, in, out)
        return array.transpose(0, 2, 1)
    if layout in ("experts_first_half", "experts_second_half"):
        half = array.shape[1] // 2
        part = array[:, :half] if layout == "experts_first_half" else array[:, half:]
        return part.transpose(0, 2, 1)
    return array


def from_keras(array: np.ndarray, layout: str) -> np.ndarray:
    """The inverse of `to_keras` (the expert halves are joined by `read_gemma4`)."""
    if layout == "heads_in":  # (heads, hidden, dim) -> (heads * dim, hidden)
        heads, hidden, dim = array.shape
        return array.transpose(0, 2, 1).reshape(heads * dim, hidden)
    if layout == "heads_out":  # (heads, dim, hidden) -> (hidden, heads * dim)
        heads, dim, hidden = array.shape
        return array.transpose(2, 0, 1).reshape(hidden, heads * dim)
    if layout == "dense":
        return array.T
    if layout == "scalar":
        return array.reshape(1)
    if layout in ("experts", "experts_first_half", "experts_second_half"):
        return array.transpose(0, 2, 1)
    return array


def _attribute(obj, path: str):
    """The variable at `path` under `obj`, or None where the layer does not have it."""
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def gguf_name(entry: Tensor, layer: int | None = None) -> str:
    """llama.cpp's full name: `blk.{i}.` before a block's, `.weight` after all but the `.scale` ones."""
    name = entry.gguf if layer is None else f"blk.{layer}.{entry.gguf}"
    return name if name.endswith(".scale") else f"{name}.weight"


def fill_gemma4(
    backbone,
    get: Callable[[str], np.ndarray],
    mismatch: Callable[[str, tuple, tuple], Exception],
    progress: Callable[[int, int], None] | None = None,
    names: str = "hf",
) -> None:
    """Assigns every text weight of a `Gemma4Backbone` from `get(name)`.

    `names` "hf": transformers' names without the `model.` prefix; "gguf": llama.cpp's.
    llama.cpp stores Gemma 4's tensors exactly as transformers does (norms
    included), so both go through the same layouts.
    """
    filled: set[int] = set()

    def assign(owner, entry: Tensor, hf: str) -> None:
        variable = _attribute(owner, entry.keras)
        if variable is None:
            return
        array = np.asarray(get(hf))
        try:
            value = to_keras(array, entry.layout, tuple(variable.shape))
        except ValueError:  # a reshape the variable's shape does not allow
            raise mismatch(hf, array.shape, tuple(variable.shape)) from None
        if tuple(variable.shape) != value.shape:
            raise mismatch(hf, array.shape, tuple(variable.shape))
        variable.assign(value)
        filled.add(id(variable))

    for entry in TOP:
        assign(backbone, entry, entry.hf if names == "hf" else gguf_name(entry))
    layers = backbone.transformer_layers
    for i, block in enumerate(layers):
        if progress is not None:
            progress(i, len(layers))
        for entry in BLOCK:
            assign(block, entry, f"layers.{i}.{entry.hf}" if names == "hf" else gguf_name(entry, i))
    text = [w for w in backbone.weights if not w.path.startswith(("vision", "audio"))]
    unfilled = [w.path for w in text if id(w) not in filled]
    if unfilled:
        raise RuntimeError(
            f"gemma_keras bug: the Gemma 4 tensor table does not name the weights {unfilled[:5]}."
        )


def read_gemma4(backbone) -> Iterator[tuple[str, np.ndarray]]:
    """Yields `(transformers name without "model.", float32 array)` for every text weight.

    Reads `kernel` attributes, which hold LoRA's update merged in, so an
    export carries the fine-tuned weights.
    """
    from keras import ops

    def numpy(value) -> np.ndarray:
        return np.asarray(ops.convert_to_numpy(ops.cast(value, "float32")), dtype=np.float32)

    for entry in TOP:
        variable = _attribute(backbone, entry.keras)
        if variable is not None:
            yield entry.hf, from_keras(numpy(variable), entry.layout)
    for i, block in enumerate(backbone.transformer_layers):
        interrupts.check()  # a pending SIGINT/SIGTERM stops an export between layers
        halves: dict[str, list[np.ndarray]] = {}
        for entry in BLOCK:
            variable = _attribute(block, entry.keras)
            if variable is None:
                continue
            value = from_keras(numpy(variable), entry.layout)
            if entry.layout.startswith("experts_") and entry.layout.endswith("_half"):
                halves.setdefault(entry.hf, []).append(value)  # first half, then second: the table's order
                if len(halves[entry.hf]) == 2:
                    yield f"layers.{i}.{entry.hf}", np.concatenate(halves.pop(entry.hf), axis=1)
            else:
                yield f"layers.{i}.{entry.hf}", value
