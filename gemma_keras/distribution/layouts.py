"""Which weights are split over the model axis, and how: one rule table, sized per variable.

A dimension is sharded only when the model axis divides it; otherwise the
next candidate layout (or full replication) is used. A model with one KV
head (multi-query attention) thus keeps its key and value projections whole
on every device, where KerasHub's `GemmaBackbone.get_layout_map` fails.

Example:

>>> axes_for("decoder_block_0/attention/query/kernel", (4, 2048, 256), 4)
('model', None, None)
"""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence

from gemma_keras.architectures.registry import of_config
from gemma_keras.backend.jax_mesh import axis_size
from gemma_keras.backend.selection import ensure_backend
from gemma_keras.errors import DistributionError

BATCH = "batch"
MODEL = "model"

Axes = tuple[str | None, ...]

# Variable path regex -> candidate layouts, best first. The first candidate
# whose sharded dimensions the model axis divides wins; when none does, the
# variable is replicated. Variables matching no rule are replicated (norms,
# LoRA factors, quantization scales).
_PREFIX = r"(?:.*/)?"
_BLOCK = _PREFIX + r"decoder_block_\d+/"
RULES: tuple[tuple[str, tuple[Axes, ...]], ...] = (
    # (vocabulary, hidden). By vocabulary first: the tied output projection
    # then yields logits split over the vocabulary and needs no gather.
    (_PREFIX + r"token_embedding/embeddings", ((MODEL, None), (None, MODEL))),
    # (heads, hidden, head_dim), split by heads. Query and key/value heads
    # are separate rules, as their counts differ: one KV head (or a count the
    # axis does not divide) stays whole on every device, as Megatron does
    # for multi-query attention, while the query heads are still split.
    (_BLOCK + r"attention/query/kernel", ((MODEL, None, None),)),
    (_BLOCK + r"attention/(?:key|value)/kernel", ((MODEL, None, None),)),
    # (heads, head_dim, hidden): split like the query heads that feed it.
    (_BLOCK + r"attention/attention_output/kernel", ((MODEL, None, None),)),
    # (hidden, ffn) and (ffn, hidden): split along the feed-forward width.
    (_BLOCK + r"ffw_gating(?:_2)?/kernel", ((None, MODEL),)),
    (_BLOCK + r"ffw_linear/kernel", ((MODEL, None),)),
    # Gemma 4's per-layer inputs: (vocabulary, layers * width), then (hidden, layers * width).
    (_PREFIX + r"per_layer_token_embedding/embeddings", ((MODEL, None), (None, MODEL))),
    (_PREFIX + r"per_layer_model_projection/kernel", ((None, MODEL),)),
    # Gemma 4's experts: (experts, hidden, width) and (experts, width, hidden). Whole experts
    # per device when the axis divides their count, else each expert split along its width.
    (_BLOCK + r"moe_expert_bank/(?:gate|up)_proj", ((MODEL, None, None), (None, None, MODEL))),
    (_BLOCK + r"moe_expert_bank/down_proj", ((MODEL, None, None), (None, MODEL, None))),
    # Gemma 3n's text model names its layers as transformers does, and its projections are
    # Dense: (hidden, heads * head_dim) in, (heads * head_dim, hidden) out; split like Gemma's.
    (_PREFIX + r"embed_tokens(?:_per_layer)?/embedding/embeddings", ((MODEL, None), (None, MODEL))),
    (_BLOCK + r"attention/[qkv]_proj/kernel", ((None, MODEL),)),
    (_BLOCK + r"attention/o_proj/kernel", ((MODEL, None),)),
    (_BLOCK + r"mlp/(?:gate|up)_proj/kernel", ((None, MODEL),)),
    (_BLOCK + r"mlp/down_proj/kernel", ((MODEL, None),)),
)
_COMPILED = tuple((re.compile(pattern), candidates) for pattern, candidates in RULES)


def axes_for(path: str, shape: Sequence[int], model_size: int) -> Axes:
    """The sharding axes of one variable on a mesh whose model axis has `model_size` devices.

    Example:

    >>> axes_for("decoder_block_0/attention/key/kernel", (1, 2048, 256), 4)
    (None, None, None)
    >>> axes_for("decoder_block_0/attention/key/kernel", (4, 2048, 256), 4)
    ('model', None, None)
    >>> axes_for("token_embedding/embeddings", (457, 32), 4)
    (None, 'model')
    """
    shape = tuple(int(d) for d in shape)
    replicated: Axes = (None,) * len(shape)
    if model_size <= 1:
        return replicated
    for pattern, candidates in _COMPILED:
        if not pattern.fullmatch(path):
            continue
        for axes in candidates:
            if len(axes) == len(shape) and all(
                axis is None or dim % model_size == 0 for axis, dim in zip(axes, shape, strict=True)
            ):
                return axes
        return replicated
    return replicated


def variable_shapes(model_or_config) -> dict[str, tuple[int, ...]]:
    """`{variable path: shape}` of a `Gemma`, a KerasHub Gemma backbone or its config dict.

    For a config, one representative decoder block (`decoder_block_0`) is listed.
    """
    if isinstance(model_or_config, dict):
        return _shapes_from_config(model_or_config)
    backbone = getattr(model_or_config, "backbone", model_or_config)
    variables = getattr(backbone, "weights", None)
    if variables is None:
        raise DistributionError(
            "layout_map takes a gemma_keras.Gemma, a KerasHub Gemma backbone or its config dict "
            f"(backbone.get_config()), got {type(model_or_config).__name__}."
        )
    return {v.path: tuple(int(d) for d in v.shape) for v in variables}


def _shapes_from_config(config: dict) -> dict[str, tuple[int, ...]]:
    if of_config(config).hf_backbone_config is not None:
        raise DistributionError(
            "Gemma 3n's and 4's layers differ in size, so one config block does not describe them: pass the "
            "loaded model or its backbone to layout_map (gk.distribute needs neither)."
        )
    needed = ("vocabulary_size", "num_query_heads", "num_key_value_heads", "hidden_dim", "head_dim")
    missing = [k for k in (*needed, "intermediate_dim") if k not in config]
    if missing:
        raise DistributionError(
            f"The config lacks {', '.join(missing)}; pass a KerasHub Gemma backbone's get_config()."
        )
    vocab, heads, kv, hidden, head_dim = (int(config[k]) for k in needed)
    ffn = of_config(config).ffn_width(config)
    block = "decoder_block_0/"
    return {
        "token_embedding/embeddings": (vocab, hidden),
        block + "attention/query/kernel": (heads, hidden, head_dim),
        block + "attention/key/kernel": (kv, hidden, head_dim),
        block + "attention/value/kernel": (kv, hidden, head_dim),
        block + "attention/attention_output/kernel": (heads, head_dim, hidden),
        block + "ffw_gating/kernel": (hidden, ffn),
        block + "ffw_gating_2/kernel": (hidden, ffn),
        block + "ffw_linear/kernel": (ffn, hidden),
    }


def layout_map(model_or_config, mesh):
    """A `keras.distribution.LayoutMap` for one model's sizes on `mesh`.

    Every dimension it shards is divisible by the mesh's `"model"` axis;
    what cannot be split evenly is replicated. Keys are regexes over
    variable paths, like KerasHub's own layout maps.

    Args:
        model_or_config: a `gemma_keras.Gemma`, a KerasHub Gemma backbone, or
            the backbone's config dict.
        mesh: a `keras.distribution.DeviceMesh` with a `"model"` axis.

    Example:

    >>> import keras, gemma_keras as gk  # doctest: +SKIP
    >>> mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"), keras.distribution.list_devices())  # doctest: +SKIP
    >>> config = gk.load("tiny.gguf").backbone.get_config()  # doctest: +SKIP
    >>> dist = keras.distribution.ModelParallel(layout_map=gk.distribution.layout_map(config, mesh))  # doctest: +SKIP
    """
    ensure_backend()
    import keras

    size = axis_size(mesh, MODEL)
    shapes = variable_shapes(model_or_config)
    result = keras.distribution.LayoutMap(mesh)
    for pattern, _ in RULES:
        axes = {p: axes_for(p, s, size) for p, s in shapes.items() if re.fullmatch(pattern, p)}
        if not axes:
            continue
        # The layout most variables take goes under the pattern. Gemma 4's layers differ in size, so
        # a variable that needs another gets its own key: LayoutMap tries exact paths first.
        common = collections.Counter(axes.values()).most_common(1)[0][0]
        result[pattern] = common
        for path, own in axes.items():
            if own != common:
                result[path] = own
    return result
