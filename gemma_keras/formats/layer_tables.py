"""The weights of Gemma 4 and Gemma 3n in KerasHub, transformers and llama.cpp, one table each.

Their layers differ from one another, so a row names a weight that a block
may or may not have: a KV-shared layer has no key or value projection, a
Gemma 4 global layer whose keys are reused as values has no value
projection, and only per-layer-input and MoE models have those weights.
`fill_table` fills exactly the variables the KerasHub backbone built, each
from the tensor of its row, and fails on any variable no row names.
llama.cpp stacks Gemma 3n's AltUp projections into one tensor each, so those
rows say which slice is theirs.
(Gemma 1-3 use `tensor_names.py`, where every block is alike.)

llama.cpp's names (`gguf`) are the ones its `convert_hf_to_gguf.py` writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from gemma_keras import interrupts


@dataclass(frozen=True)
class Tensor:
    """One weight: llama.cpp's name, the KerasHub attribute path, its layout, transformers' name.

    `stacked`: llama.cpp stacks the rows that share this `gguf` name into one
    tensor, and this row is slice `stacked` of it (Gemma 3n's AltUp projections).
    """

    gguf: str
    keras: str
    layout: str
    hf: str
    stacked: int | None = None


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
    """The inverse of `to_keras` (the expert halves are joined by `read_rows`)."""
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


# Gemma 3n (text). Its AltUp projections are lists; a row per index, and the
# indices a model does not have are skipped like any absent weight.
_ALTUP = tuple(
    Tensor(
        "altup_proj",
        f"language_model.altup_projections.{i}.kernel",
        "dense",
        f"altup_projections.{i}.weight",
        stacked=i,
    )
    for i in range(8)
) + tuple(
    Tensor(
        "altup_unembd_proj",
        f"language_model.altup_unembed_projections.{i}.kernel",
        "dense",
        f"altup_unembed_projections.{i}.weight",
        stacked=i,
    )
    for i in range(8)
)
GEMMA3N_TOP = (
    Tensor("token_embd", "language_model.embed_tokens.embedding.embeddings", "as_is", "embed_tokens.weight"),
    Tensor("output_norm", "language_model.final_normalization.scale", "as_is", "norm.weight"),
    Tensor(
        "per_layer_token_embd",
        "language_model.embed_tokens_per_layer.embedding.embeddings",
        "as_is",
        "embed_tokens_per_layer.weight",
    ),
    Tensor(
        "per_layer_model_proj",
        "language_model.per_layer_model_projection.kernel",
        "dense",
        "per_layer_model_projection.weight",
    ),
    Tensor(
        "per_layer_proj_norm",
        "language_model.per_layer_projection_norm.scale",
        "as_is",
        "per_layer_projection_norm.weight",
    ),
    *_ALTUP,
)
GEMMA3N_BLOCK = (
    Tensor("attn_norm", "input_layernorm.scale", "as_is", "input_layernorm.weight"),
    Tensor(
        "post_attention_norm", "post_attention_layernorm.scale", "as_is", "post_attention_layernorm.weight"
    ),
    Tensor("ffn_norm", "pre_feedforward_layernorm.scale", "as_is", "pre_feedforward_layernorm.weight"),
    Tensor("post_ffw_norm", "post_feedforward_layernorm.scale", "as_is", "post_feedforward_layernorm.weight"),
    Tensor("attn_q", "attention.q_proj.kernel", "dense", "self_attn.q_proj.weight"),
    Tensor("attn_k", "attention.k_proj.kernel", "dense", "self_attn.k_proj.weight"),
    Tensor("attn_v", "attention.v_proj.kernel", "dense", "self_attn.v_proj.weight"),
    Tensor("attn_output", "attention.o_proj.kernel", "dense", "self_attn.o_proj.weight"),
    Tensor("attn_q_norm", "attention.q_norm.scale", "as_is", "self_attn.q_norm.weight"),
    Tensor("attn_k_norm", "attention.k_norm.scale", "as_is", "self_attn.k_norm.weight"),
    Tensor("ffn_gate", "mlp.gate_proj.kernel", "dense", "mlp.gate_proj.weight"),
    Tensor("ffn_up", "mlp.up_proj.kernel", "dense", "mlp.up_proj.weight"),
    Tensor("ffn_down", "mlp.down_proj.kernel", "dense", "mlp.down_proj.weight"),
    Tensor("altup_correct_coef", "altup.correction_coefs.kernel", "dense", "altup.correction_coefs.weight"),
    Tensor("altup_predict_coef", "altup.prediction_coefs.kernel", "dense", "altup.prediction_coefs.weight"),
    Tensor("altup_router", "altup.modality_router.kernel", "dense", "altup.modality_router.weight"),
    Tensor("altup_router_norm", "altup.router_norm.scale", "as_is", "altup.router_norm.weight"),
    Tensor("altup_correct_scale", "altup.correct_output_scale", "as_is", "altup.correct_output_scale"),
    Tensor("laurel_l", "laurel.linear_left.kernel", "dense", "laurel.linear_left.weight"),
    Tensor("laurel_r", "laurel.linear_right.kernel", "dense", "laurel.linear_right.weight"),
    Tensor("laurel_post_norm", "laurel.post_laurel_norm.scale", "as_is", "laurel.post_laurel_norm.weight"),
    Tensor("inp_gate", "per_layer_input_gate.kernel", "dense", "per_layer_input_gate.weight"),
    Tensor("proj", "per_layer_projection.kernel", "dense", "per_layer_projection.weight"),
    Tensor("post_norm", "post_per_layer_input_norm.scale", "as_is", "post_per_layer_input_norm.weight"),
)


@dataclass(frozen=True)
class Table:
    """One architecture's rows, and where its decoder blocks are.

    `unused_when_shared`: block weights KerasHub builds on a KV-shared layer
    that the layer never reads (transformers has no such tensors).
    """

    title: str
    top: tuple[Tensor, ...]
    block: tuple[Tensor, ...]
    blocks: str
    unused_when_shared: frozenset[str] = frozenset()


TABLES = {
    "gemma4": Table("Gemma 4", TOP, BLOCK, "transformer_layers"),
    "gemma3n": Table(
        "Gemma 3n",
        GEMMA3N_TOP,
        GEMMA3N_BLOCK,
        "language_model.transformer_layers",
        frozenset({"attention.k_proj.kernel", "attention.v_proj.kernel", "attention.k_norm.scale"}),
    ),
}


def _attribute(obj, path: str):
    """The variable at `path` under `obj` (numbers index lists), or None where the layer does not have it."""
    for part in path.split("."):
        if part.isdigit():
            obj = obj[int(part)] if isinstance(obj, (list, tuple)) and int(part) < len(obj) else None
        else:
            obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def gguf_name(entry: Tensor, layer: int | None = None) -> str:
    """llama.cpp's full name: `blk.{i}.` before a block's, `.weight` after all but the `.scale` ones."""
    name = entry.gguf if layer is None else f"blk.{layer}.{entry.gguf}"
    return name if name.endswith(".scale") else f"{name}.weight"


def fill_table(
    backbone,
    table: Table,
    get: Callable[[str], np.ndarray],
    mismatch: Callable[[str, tuple, tuple], Exception],
    progress: Callable[[int, int], None] | None = None,
    names: str = "hf",
) -> None:
    """Assigns every text weight of a backbone from `get(name)`, row by row of `table`.

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
        if names == "gguf" and entry.stacked is not None:
            if array.ndim != 3 or entry.stacked >= array.shape[0]:
                raise mismatch(hf, array.shape, (entry.stacked + 1, *variable.shape))
            array = array[entry.stacked]
        try:
            value = to_keras(array, entry.layout, tuple(variable.shape))
        except ValueError:  # a reshape the variable's shape does not allow
            raise mismatch(hf, array.shape, tuple(variable.shape)) from None
        if tuple(variable.shape) != value.shape:
            raise mismatch(hf, array.shape, tuple(variable.shape))
        variable.assign(value)
        filled.add(id(variable))

    for entry in table.top:
        assign(backbone, entry, entry.hf if names == "hf" else gguf_name(entry))
    layers = _attribute(backbone, table.blocks)
    for i, block in enumerate(layers):
        if progress is not None:
            progress(i, len(layers))
        for entry in table.block:
            if getattr(block, "is_kv_shared_layer", False) and entry.keras in table.unused_when_shared:
                filled.add(id(_attribute(block, entry.keras)))  # built, never read: stays at zeros
                continue
            assign(block, entry, f"layers.{i}.{entry.hf}" if names == "hf" else gguf_name(entry, i))
    text = [
        w
        for w in backbone.weights
        if not w.path.startswith(("vision", "audio", "embed_vision", "embed_audio"))
    ]
    unfilled = [w.path for w in text if id(w) not in filled]
    if unfilled:
        raise RuntimeError(
            f"gemma_keras bug: the {table.title} tensor table does not name the weights {unfilled[:5]}."
        )


def read_rows(backbone, table: Table) -> Iterator[tuple[Tensor, int | None, np.ndarray]]:
    """Yields `(row, block index or None, float32 array in transformers' layout)` for every text weight.

    Reads `kernel` attributes, which hold LoRA's update merged in, so an
    export carries the fine-tuned weights. An expert bank's gate and up
    halves come back joined, as transformers and llama.cpp store them.
    """
    from keras import ops

    def numpy(value) -> np.ndarray:
        return np.asarray(ops.convert_to_numpy(ops.cast(value, "float32")), dtype=np.float32)

    for entry in table.top:
        variable = _attribute(backbone, entry.keras)
        if variable is not None:
            yield entry, None, from_keras(numpy(variable), entry.layout)
    for i, block in enumerate(_attribute(backbone, table.blocks)):
        interrupts.check()  # a pending SIGINT/SIGTERM stops an export between layers
        halves: dict[str, list[np.ndarray]] = {}
        for entry in table.block:
            variable = _attribute(block, entry.keras)
            shared = getattr(block, "is_kv_shared_layer", False) and entry.keras in table.unused_when_shared
            if variable is None or shared:
                continue
            value = from_keras(numpy(variable), entry.layout)
            if entry.layout.startswith("experts_") and entry.layout.endswith("_half"):
                halves.setdefault(entry.hf, []).append(value)  # first half, then second: the table's order
                if len(halves[entry.hf]) == 2:
                    yield entry, i, np.concatenate(halves.pop(entry.hf), axis=1)
            else:
                yield entry, i, value


def read_table(backbone, table: Table) -> Iterator[tuple[str, np.ndarray]]:
    """Yields `(transformers name without "model.", float32 array)` for every text weight."""
    for entry, layer, array in read_rows(backbone, table):
        yield (entry.hf if layer is None else f"layers.{layer}.{entry.hf}"), array
