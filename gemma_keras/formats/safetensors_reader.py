"""Reads tensors from a transformers checkpoint's safetensors files, as float32 numpy arrays.

`safetensors.numpy` cannot return bfloat16, the dtype most Gemma checkpoints
ship in, and the torch reader would tie loading to torch; so the files are
memory-mapped and decoded here. `formats.preset_check.check_model_dir` has
already checked every header against its file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gemma_keras.errors import SourceError

# Integers hold index tables (a Gemma 4 assistant's token ordering), exact in float32 below 2**24.
_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
}


class SafetensorsTensors:
    """The tensors of `model.safetensors` or of the shards `model.safetensors.index.json` lists."""

    def __init__(self, path: Path):
        path = Path(path)
        index = path / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        self._where: dict[str, tuple[Path, dict, int]] = {}
        for name in files:
            file = path / name
            with open(file, "rb") as f:
                length = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(length))
            for tensor, entry in header.items():
                if tensor != "__metadata__":
                    self._where[tensor] = (file, entry, 8 + length)

    def names(self) -> set[str]:
        return set(self._where)

    def get(self, name: str) -> np.ndarray:
        """The tensor `name` as float32."""
        if name not in self._where:
            raise SourceError(f"the checkpoint has no tensor {name!r}, which the model needs.")
        file, entry, start = self._where[name]
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise SourceError(
                f"{file}: tensor {name!r} is {entry['dtype']}; gemma_keras reads F32, F16 and BF16."
            )
        begin, end = entry["data_offsets"]
        raw = np.memmap(file, dtype=np.uint8, mode="r", offset=start + begin, shape=(end - begin,))
        values = raw.view(dtype).reshape(entry["shape"])
        if entry["dtype"] == "BF16":  # the high half of a float32
            return (values.astype(np.uint32) << 16).view(np.float32)
        return values.astype(np.float32)
