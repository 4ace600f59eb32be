"""Fine-tuning checkpoints: adapters, optimizer state and progress, written atomically.

A run's `out_dir/checkpoints/step-NNNNNNNN.npz` files each hold everything
needed to continue at exactly that update; the last `CHECKPOINTS_KEPT`
are kept. A checkpoint records the `Plan` (every setting that decides the
result), and resuming with other settings is refused.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gemma_keras.checks import path as check_path
from gemma_keras.errors import FinetuneError
from gemma_keras.formats.staging import Kind, check_destination
from gemma_keras.training import lora

CHECKPOINTS_KEPT = 2
ADAPTERS = "adapters.npz"  # the finished run's adapters, beside `checkpoints/`
# Directories a run writes files into (never replaces); they may exist already.
RUN_DIRECTORY = Kind("fine-tuning run directory", directory=True, ours=lambda path: True, into=True)
CHECKPOINT_DIRECTORY = Kind("checkpoint directory", directory=True, ours=lambda path: True, into=True)


def check_run_directory(out_dir: str | os.PathLike) -> Path:
    """Raises `FinetuneError` unless a run can write into `out_dir`; returns it as a Path.

    `out_dir` (and its `checkpoints/`) must be a writable directory or not
    exist yet under a writable one (it is created when the first file is
    written); an existing `adapters.npz` must be our own adapter file, and
    existing checkpoints ours. Nothing is created or changed here: fine-tuning
    calls this before the model changes.
    """
    out_dir = Path(check_path("out_dir", out_dir, FinetuneError)).expanduser()
    check_destination(out_dir, RUN_DIRECTORY, overwrite=True, error=FinetuneError)
    checkpoints = out_dir / "checkpoints"
    check_destination(checkpoints, CHECKPOINT_DIRECTORY, overwrite=True, error=FinetuneError)
    check_destination(out_dir / ADAPTERS, lora.NPZ_KINDS["adapters"], overwrite=True, error=FinetuneError)
    for path in Checkpoints(out_dir).paths():
        check_destination(path, lora.NPZ_KINDS["checkpoint"], overwrite=True, error=FinetuneError)
    return out_dir


@dataclass
class Plan:
    """The arguments that decide a run's result; a checkpoint must match them to resume."""

    lora_rank: int
    lora_alpha: float
    targets: list[str]
    batch_size: int
    gradient_accumulation: int
    learning_rate: float
    warmup_steps: int
    decay: str
    weight_decay: float
    sequence_length: int
    seed: int
    total_steps: int
    data_fingerprint: str


class Checkpoints:
    """Atomic checkpoints of adapters, optimizer state and progress in `out_dir/checkpoints`."""

    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir) / "checkpoints"

    def paths(self) -> list[Path]:
        return sorted(self.dir.glob("step-*.npz")) if self.dir.is_dir() else []

    def path(self, step: int) -> Path:
        """Where the checkpoint of `step` is (or would be) written."""
        return self.dir / f"step-{step:08d}.npz"

    def save(self, model, plan: Plan, step: int, history: list[dict]) -> Path:
        from keras import ops

        arrays = {f"lora/{k}": v for k, v in lora.adapter_arrays(model.backbone).items()}
        for i, variable in enumerate(model.optimizer.variables):
            arrays[f"optimizer/{i}"] = np.asarray(ops.convert_to_numpy(variable))
        header = {
            "format": lora.FORMAT,
            "kind": "checkpoint",
            "step": step,
            "plan": asdict(plan),
            "history": history,
            "model": lora.model_signature(model.backbone),
        }
        path = self.path(step)
        lora.write_npz(path, arrays, header)
        for old in self.paths()[:-CHECKPOINTS_KEPT]:
            old.unlink(missing_ok=True)
        return path

    def restore(self, model, plan: Plan) -> tuple[int, list[dict]] | None:
        paths = self.paths()
        if not paths:
            return None
        path = paths[-1]
        header, arrays = lora.read_npz(path, "checkpoint")
        if header.get("plan") != asdict(plan):
            saved = header.get("plan") or {}
            diff = {k: (saved.get(k), v) for k, v in asdict(plan).items() if saved.get(k) != v}
            raise FinetuneError(
                f"checkpoint {str(path)!r} was made with other settings or data "
                f"(saved vs now: {diff}). Resume with the same arguments, or use a new out_dir."
            )
        if header.get("model") != lora.model_signature(model.backbone):
            raise FinetuneError(f"checkpoint {str(path)!r} belongs to a different model.")
        adapters = {k[len("lora/") :]: v for k, v in arrays.items() if k.startswith("lora/")}
        lora.set_adapter_arrays(model.backbone, adapters, f"checkpoint {str(path)!r}")
        variables = model.optimizer.variables
        for i, variable in enumerate(variables):
            value = arrays.get(f"optimizer/{i}")
            if value is None or tuple(value.shape) != tuple(variable.shape):
                raise FinetuneError(f"checkpoint {str(path)!r}: optimizer state does not match this run.")
            variable.assign(value)
        return int(header["step"]), list(header.get("history") or [])
