"""`ModelInfo`: what a loaded model is and where it came from."""

from __future__ import annotations

from dataclasses import dataclass

from gemma_keras.architectures.record import Architecture
from gemma_keras.architectures.registry import by_name


@dataclass
class ModelInfo:
    """Where a model came from and what it is.

    Attributes:
        architecture: the architecture record's name ("gemma3", ...).
        source: what was loaded (a path, a preset name, "embedded:...").
        context_length: the longest sequence (prompt plus generated tokens).
        dtype: the float dtype of the weights and activations.
        backend: the Keras backend it runs on.
        quantization: None, or the weight quantization applied after loading.
        instruction_tuned: True or False when the source says; None when it
            cannot be told.
    """

    architecture: str
    source: str
    context_length: int
    dtype: str
    backend: str
    quantization: str | None = None
    instruction_tuned: bool | None = None

    @property
    def arch(self) -> Architecture:
        return by_name(self.architecture)
