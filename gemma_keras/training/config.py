"""`FinetuneConfig`: every fine-tuning setting, in one place.

`Gemma.finetune`, `training.finetune` and `gemma-keras finetune` all take
this dataclass; the command line builds its flags from its fields. Values
are checked when the config is made, before any model changes.

Example:

>>> config = FinetuneConfig(lora_rank=8, epochs=3, out_dir="run/")
>>> config.batch_size
4
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gemma_keras.checks import is_integer, positive_int
from gemma_keras.errors import FinetuneError
from gemma_keras.training.lora import resolve_targets

DECAYS = ("cosine", "linear", "constant")
ON_ERROR = ("raise", "skip")


def _setting(default: Any, help: str, flag: str | None = None, cli_type: type | None = None) -> Any:
    """A config field with its command-line help, flag (when not `--field-name`) and value type."""
    kind = cli_type or (type(default) if default is not None else str)
    return field(default=default, metadata={"help": help, "flag": flag, "type": kind})


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune: LoRA, schedule, data handling, checkpoints.

    Every field has a default; see docs/finetuning.md for the reasoning.
    """

    lora_rank: int = _setting(8, "LoRA rank")
    lora_alpha: float | None = _setting(
        None, "LoRA scale numerator (scale = alpha / rank); default: the rank", cli_type=float
    )
    targets: str | tuple[str, ...] | None = _setting(
        None,
        "layers to adapt, comma-separated: query,key,value,output,gate,up,down, or the groups "
        "attention, ffw, all (default: all)",
    )
    epochs: int = _setting(1, "passes over the data")
    max_steps: int | None = _setting(None, "optimizer updates; wins over epochs when given", cli_type=int)
    batch_size: int = _setting(4, "rows per micro-batch")
    gradient_accumulation: int = _setting(1, "micro-batches per optimizer update")
    learning_rate: float = _setting(2e-4, "peak learning rate of AdamW")
    warmup_steps: int | None = _setting(None, "linear warm-up updates (default: 5% of the run)", cli_type=int)
    decay: str = _setting("cosine", f"decay after warm-up: {', '.join(DECAYS)}")
    weight_decay: float = _setting(0.0, "AdamW weight decay")
    sequence_length: int = _setting(512, "longest input in tokens; longer records are truncated")
    validation_data: Any = _setting(
        None, "held-out data (a JSONL path on the command line); its loss is reported", "--validation"
    )
    mask_prompt: bool = _setting(True, "train only on the model's turns (--no-mask-prompt: on every token)")
    on_error: str = _setting("raise", "a malformed record: 'raise', or 'skip' it and count it")
    pack: bool = _setting(False, "pack several records per row: not offered (see docs/finetuning.md)")
    seed: int = _setting(0, "data order and LoRA initialization")
    out_dir: str | os.PathLike | None = _setting(None, "run directory: checkpoints and adapters.npz", "--out")
    checkpoint_every: int | None = _setting(
        None, "updates between checkpoints (default: a tenth of the run)", cli_type=int
    )
    resume: bool = _setting(False, "continue from the last checkpoint in out_dir")
    verbose: bool = _setting(True, "show a progress bar with loss and tokens/s")
    stop_after: int | None = _setting(
        None, "stop after this many updates, keeping the whole run's schedule", cli_type=int
    )

    def __post_init__(self) -> None:
        check(self)

    def replace(self, **changes: Any) -> FinetuneConfig:
        """A copy with `changes`; unknown names raise `FinetuneError`."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise FinetuneError(
                f"unknown fine-tuning argument(s) {', '.join(map(repr, unknown))}; "
                "see gemma_keras.FinetuneConfig for the settings."
            )
        return dataclasses.replace(self, **changes)


def _number(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise FinetuneError(f"{name} must be a number, got {value!r}.")
    if not math.isfinite(float(value)):
        raise FinetuneError(f"{name} must be finite, got {value!r}.")
    return float(value)


def check(config: FinetuneConfig) -> None:
    """Raises `FinetuneError` naming the first bad setting."""
    c = config
    if c.pack:
        raise FinetuneError(
            "pack=True is not offered: KerasHub's Gemma layers take only a padding mask and "
            "positions that start at 0 for the whole row, so packed examples would attend to "
            "each other and get shifted positions. Leave pack=False (rows are padded instead)."
        )
    for name in ("lora_rank", "epochs", "batch_size", "gradient_accumulation", "sequence_length"):
        positive_int(name, getattr(c, name), FinetuneError)
    for name in ("max_steps", "checkpoint_every", "stop_after"):
        positive_int(name, getattr(c, name), FinetuneError, allow_none=True)
    if c.lora_alpha is not None and _number("lora_alpha", c.lora_alpha) <= 0:
        raise FinetuneError(f"lora_alpha must be a positive number, got {c.lora_alpha!r}.")
    resolve_targets(c.targets)
    if not 0 < _number("learning_rate", c.learning_rate) < 1:
        raise FinetuneError(f"learning_rate must be a number in (0, 1), got {c.learning_rate!r}.")
    if not isinstance(c.decay, str) or c.decay not in DECAYS:
        raise FinetuneError(f"decay must be one of {DECAYS}, got {c.decay!r}.")
    if _number("weight_decay", c.weight_decay) < 0:
        raise FinetuneError(f"weight_decay must be >= 0, got {c.weight_decay!r}.")
    if c.warmup_steps is not None and (not is_integer(c.warmup_steps) or c.warmup_steps < 0):
        raise FinetuneError(f"warmup_steps must be an integer >= 0, got {c.warmup_steps!r}.")
    if not isinstance(c.on_error, str) or c.on_error not in ON_ERROR:
        raise FinetuneError(f"on_error must be 'raise' or 'skip', got {c.on_error!r}.")
    if not is_integer(c.seed) or c.seed < 0:
        raise FinetuneError(f"seed must be an integer >= 0, got {c.seed!r}.")
    if c.out_dir is not None and not isinstance(c.out_dir, (str, os.PathLike)):
        raise FinetuneError(f"out_dir must be a path, got {type(c.out_dir).__name__}.")
    if c.resume and c.out_dir is None:
        raise FinetuneError("resume=True needs out_dir: the directory the earlier run checkpointed to.")
