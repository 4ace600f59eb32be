"""The one bound on the sizes and numbers a model file declares, checked before anything is built.

GGUF metadata (`gguf_reader`), a Keras preset's `config.json` / `task.json`
and a transformers `config.json` (`preset_check`) all describe a KerasHub
backbone config. `check_backbone_config` checks that config: every size an
integer in a sane range, heads that divide, finite numbers in their domain,
true booleans, a window that fits the context. Each reader passes its own
error class and the names its file uses, so a message names the file and
the key as the user sees them. Nothing here allocates in proportion to a
declared value.

The ranges are far above any Gemma (the largest has a 262,144-token
vocabulary, 62 layers, 5,376 hidden units, 32 heads of 256, a 21,504-wide
feed-forward and 128k of context) and far below what would make a backend
allocate terabytes or overflow a 64-bit shape. They only catch the absurd;
the readers then check the sizes against the weights actually stored.

Example:

>>> check_context("m.gguf", "gemma3.context_length", 0, ValueError)  # doctest: +SKIP
ValueError: m.gguf: gemma3.context_length = 0 is not a valid size (an integer from 16 to 16777216).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gemma_keras.checks import is_integer, is_number

MIN_CONTEXT = 16  # room for a prompt and an answer; real Gemmas have 8k to 128k
MAX_CONTEXT = 1 << 24
FFN_WIDTH = (1, 1 << 20)  # a GGUF or transformers feed-forward width (KerasHub's may be twice it)

# Backbone config field: (lowest, highest). Every backbone has these.
SIZES: dict[str, tuple[int, int]] = {
    "vocabulary_size": (1, 1 << 22),
    "num_layers": (1, 1 << 10),
    "hidden_dim": (1, 1 << 17),
    "num_query_heads": (1, 1 << 12),
    "num_key_value_heads": (1, 1 << 12),
    "head_dim": (1, 1 << 12),
    "intermediate_dim": (1, 2 * FFN_WIDTH[1]),
}
# Sizes that may be absent or null.
OPTIONAL_SIZES: dict[str, tuple[int, int]] = {
    "sliding_window_size": (1, MAX_CONTEXT),
    "image_size": (1, 1 << 14),
    "pooling_intermediate_dim": (1, 2 * FFN_WIDTH[1]),
    "embedding_dim": (1, 1 << 17),
}
# Numbers: (lowest, highest, lowest allowed, highest allowed, null allowed).
NUMBERS: dict[str, tuple[float, float, bool, bool, bool]] = {
    "layer_norm_epsilon": (0.0, 1.0, False, False, False),
    "attention_logit_soft_cap": (0.0, 1e6, False, True, True),
    "final_logit_soft_cap": (0.0, 1e6, False, True, True),
    "global_rope_scaling_factor": (2.0**-10, 2.0**10, True, True, False),
    "local_rope_scaling_factor": (2.0**-10, 2.0**10, True, True, False),
    "dropout": (0.0, 1.0, True, False, False),
}
FLAGS = (
    "query_head_dim_normalize",
    "use_post_ffw_norm",
    "use_post_attention_norm",
    "use_query_key_norm",
    "use_sliding_window_attention",
    "use_bidirectional_attention",
    "is_embedding_model",
)
# Every field the readers compare between two configs of one model.
CHECKED_FIELDS = (*SIZES, *OPTIONAL_SIZES, *NUMBERS, *FLAGS)


def size(where: str, name: str, value: Any, lowest: int, highest: int, error: type[Exception]) -> int:
    """`value` as an int in `[lowest, highest]`, or `error` naming `where` and `name`."""
    if not is_integer(value) or not lowest <= value <= highest:
        raise error(
            f"{where}: {name} = {shown(value)} is not a valid size (an integer from {lowest} to {highest})."
        )
    return int(value)


def number(
    where: str, name: str, value: Any, bounds: tuple[float, float, bool, bool, bool], error: type[Exception]
) -> float | None:
    """`value` as a finite float inside `bounds` (see `NUMBERS`), or `error` naming `name`."""
    lowest, highest, low_ok, high_ok, null_ok = bounds
    if value is None and null_ok:
        return None
    ok = is_number(value) and math.isfinite(float(value))
    if ok:
        value = float(value)
        ok = (value > lowest or (low_ok and value == lowest)) and (
            value < highest or (high_ok and value == highest)
        )
    if not ok:
        low, high = "[" if low_ok else "(", "]" if high_ok else ")"
        null = " or null" if null_ok else ""
        raise error(
            f"{where}: {name} = {shown(value)} is not valid (a finite number in "
            f"{low}{lowest:g}, {highest:g}{high}{null})."
        )
    return value


def check_context(where: str, name: str, value: Any, error: type[Exception]) -> int:
    """A context length: an int from `MIN_CONTEXT` to `MAX_CONTEXT`."""
    return size(where, name, value, MIN_CONTEXT, MAX_CONTEXT, error)


def check_backbone_config(
    config: Any,
    *,
    where: str,
    error: type[Exception],
    names: Mapping[str, str] | None = None,
    context: int | None = None,
) -> dict[str, Any]:
    """Checks a KerasHub Gemma backbone config; returns it.

    `names` maps a config field to the name the file uses (a GGUF key, a
    transformers key); `context` is the model's context length, when known.
    """
    names = names or {}

    def label(field: str) -> str:
        return names.get(field, field)

    if not isinstance(config, dict):
        raise error(f"{where}: the backbone config is a {type(config).__name__}, not a JSON object.")
    for field, (lowest, highest) in SIZES.items():
        if field not in config:
            raise error(f"{where}: {label(field)} is missing.")
        size(where, label(field), config[field], lowest, highest, error)
    for field, (lowest, highest) in OPTIONAL_SIZES.items():
        if config.get(field) is not None:
            size(where, label(field), config[field], lowest, highest, error)
    for field, bounds in NUMBERS.items():
        if field in config:
            number(where, label(field), config[field], bounds, error)
    for field in FLAGS:
        if field in config and not isinstance(config[field], bool):
            raise error(f"{where}: {label(field)} = {shown(config[field])} is not true or false.")

    heads, kv_heads = config["num_query_heads"], config["num_key_value_heads"]
    if heads % kv_heads:
        raise error(
            f"{where}: {label('num_query_heads')} = {heads} does not divide into "
            f"{label('num_key_value_heads')} = {kv_heads} groups."
        )
    if config.get("query_head_dim_normalize") is False and config["hidden_dim"] < heads:
        # Queries then scale by 1/sqrt(hidden_dim // heads): zero would make every score infinite.
        raise error(
            f"{where}: {label('hidden_dim')} = {config['hidden_dim']} is smaller than "
            f"{label('num_query_heads')} = {heads}, so the query scale would divide by zero."
        )
    if config.get("use_sliding_window_attention"):
        window = config.get("sliding_window_size")
        if window is None:
            raise error(f"{where}: {label('sliding_window_size')} is missing, but the model slides.")
        if context is not None and window > context:
            raise error(
                f"{where}: {label('sliding_window_size')} = {window} is larger than the context "
                f"length {context}."
            )
    return config


def shown(value: Any) -> str:
    """`repr(value)`, cut short for a message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
