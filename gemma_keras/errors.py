"""The exceptions gemma_keras raises.

Every error the library raises on purpose derives from `GemmaKerasError`, so
`except gemma_keras.GemmaKerasError` catches all of them. Errors about bad
input also derive from `ValueError` (or `FileNotFoundError`), so code that
already catches those keeps working.
"""

from __future__ import annotations


class GemmaKerasError(Exception):
    """Base class of every error gemma_keras raises on purpose."""


class BackendError(GemmaKerasError, RuntimeError):
    """A Keras backend is unknown, not installed, or cannot be switched to."""


class GGUFError(GemmaKerasError, ValueError):
    """A GGUF file is corrupt, truncated, or not a Gemma model we can read."""


class UnsupportedModelError(GemmaKerasError, ValueError):
    """A model file is valid but holds an architecture or setting we cannot load."""


class SourceError(GemmaKerasError, ValueError):
    """A model source (path, preset name, hub handle) cannot be resolved."""


class ModelNotFoundError(SourceError, FileNotFoundError):
    """A local path or preset name that does not exist."""


class HubUnavailableError(SourceError):
    """A Kaggle or Hugging Face hub cannot be reached, or needs credentials."""


class GenerationArgumentError(GemmaKerasError, ValueError):
    """An argument to `generate` (prompt, sampling value, stop) is invalid."""


class GenerationError(GemmaKerasError, RuntimeError):
    """Generation cannot go on: the model gave something no token can be picked from (NaN logits)."""


class CacheError(GemmaKerasError, RuntimeError):
    """The conversion cache could not be written or read."""


class DataError(GemmaKerasError, ValueError):
    """Training data is malformed: a bad JSONL line, record shape or field."""


class FinetuneError(GemmaKerasError, ValueError):
    """A fine-tuning argument, adapter file or checkpoint is invalid, or cannot be written where asked."""


class DistributionError(GemmaKerasError, ValueError):
    """A device mesh or sharding request does not fit the devices or the model."""


class ExportError(GemmaKerasError):
    """A model cannot be exported as asked, or its destination could not be written.

    Nothing is ever left at the destination when this is raised: exports are
    written beside it and renamed into place only once complete. What was
    there before is unchanged, and is only ever replaced when it is our own
    export of the same format.
    """


class MissingExtraError(GemmaKerasError, ImportError):
    """A feature's optional dependencies are not installed; the message names the extra."""


class NotInstructionTunedWarning(UserWarning):
    """`chat()` runs on a pretrained model, which continues text rather than answering."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the work at a safe point (see `gemma_keras.interrupts`).

    A `KeyboardInterrupt`, not a `GemmaKerasError`: `except KeyboardInterrupt`
    catches it and `except Exception` does not. `signum` is the signal,
    `exit_code` the shell's code for it (130 for SIGINT, 143 for SIGTERM).
    A fine-tuning run also sets `step` (the last optimizer step done),
    `total_steps`, `out_dir` and `checkpoint` (the checkpoint of `step`, or
    None when there is no `out_dir`).
    """

    def __init__(
        self,
        signum: int,
        message: str | None = None,
        *,
        step: int | None = None,
        total_steps: int | None = None,
        out_dir: str | None = None,
        checkpoint: str | None = None,
    ):
        import signal

        self.signum = int(signum)
        try:
            self.signal_name = signal.Signals(self.signum).name
        except ValueError:
            self.signal_name = f"signal {self.signum}"
        self.exit_code = 128 + self.signum
        self.step, self.total_steps = step, total_steps
        self.out_dir, self.checkpoint = out_dir, checkpoint
        self.message = message  # what was stopped and how to go on; None when nothing more is known
        super().__init__(message or f"interrupted by {self.signal_name}")

    def __reduce__(self):  # pickles (multiprocessing) with its signal and details
        return (type(self), (self.signum, self.message), dict(self.__dict__))


class FrozenWeightsWarning(UserWarning):
    """Fine-tuning leaves some of the model's weights as they are (Gemma 4's MoE experts and router)."""


class TurnsDroppedWarning(UserWarning):
    """A chat dropped its oldest turns so that the conversation and the reply fit the context."""
