"""The `Runner` protocol, and the one factory that picks a runner for a model.

A runner runs cached forward passes of one model and nothing else: the
decode loop (`decode.py`) owns prompts, sampling, stops and text. Two
runners exist today:

- `keras_runner.KerasRunner`: KerasHub's own layers, compiled by the
  backend (`jax.jit`, XLA on TensorFlow, eager on torch); it runs any
  model, LoRA and Keras quantization included, and offers greedy chunks;
- `torch_runner.TorchRunner`: the same math in plain torch over the same
  variables, several times faster than Keras' eager layers on torch.

`make_runner` is, with the backend layer, the only place that decides by
backend name.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Protocol

import numpy as np

from gemma_keras.architectures.record import Architecture
from gemma_keras.backend.devices import capabilities
from gemma_keras.backend.selection import current_backend
from gemma_keras.errors import GenerationArgumentError
from gemma_keras.formats.gguf_blocks import check_keeps_blocks
from gemma_keras.generation import keras_runner, torch_runner

KINDS = ("keras", "torch")


class Runner(Protocol):
    """Runs cached forward passes of one model over numpy inputs.

    The cache holds `length` positions per row; `index` is the position the
    first of `token_ids` is written at. Positions are shared by all rows
    (prompts are placed so that they end where decoding starts), and a
    row's `padding_mask` marks which positions it may attend to.

    Attributes:
        vocab_size: logits per row.
        chunk: greedy tokens per `greedy_chunk` call; 0 when not offered.
        compiles: whether each new input shape costs a compile (XLA). When
            it does, the decode loop pads a prompt's tail on the right to a
            power-of-two width (`forward_at`), so that few shapes compile.
        batch_multiple: the number of rows must be a multiple of this
            (1, or the size of a sharded batch axis).
        spans: whether calls that touch only the first positions of a long
            cache attend over those only (`KerasRunner._span`), each span
            compiled apart.
    """

    vocab_size: int
    chunk: int
    compiles: bool
    batch_multiple: int
    spans: bool

    def new_cache(self, rows: int, length: int) -> Any:
        """An empty KV cache."""

    def prepare_mask(self, padding_mask: np.ndarray) -> Any:
        """The `(rows, length)` 0/1 mask in the runner's own form, made once per change."""

    def forward(
        self, token_ids: np.ndarray, mask: Any, cache: Any, index: int, whole: bool = False
    ) -> tuple[np.ndarray, Any]:
        """Feeds `(rows, t)` tokens at `index`; returns float32 logits after the last one, and the cache.

        `whole`: attend over every cache position, even where a runner with
        `spans` would attend over the first ones only, so that the call's
        compiled shape is the same at any `index` (a server joins rows at any).
        """

    def forward_at(
        self, token_ids: np.ndarray, mask: Any, cache: Any, index: int, last: int
    ) -> tuple[np.ndarray, Any]:
        """As `forward`, but returns the logits after fed token `last`; the tokens after it are padding."""

    def forward_all(self, token_ids: np.ndarray, mask: Any, cache: Any, index: int) -> tuple[np.ndarray, Any]:
        """As `forward`, but returns the logits after every fed token: `(rows, t, vocab)`."""

    def greedy_chunk(
        self, token_ids: np.ndarray, mask: Any, cache: Any, index: int
    ) -> tuple[np.ndarray, Any]:
        """Feeds one token per row, then picks greedily: `(rows, chunk)` picks; the last is not fed yet."""

    def copy_rows(self, cache: Any, rows: list[int], source: Any, source_rows: list[int]) -> Any:
        """`cache` with each row `rows[i]` replaced by row `source_rows[i]` of the same-length `source`."""

    def select_rows(self, cache: Any, rows: list[int], size: int) -> Any:
        """A cache of `size` rows: row i is `cache`'s row `rows[i]`; the rest are empty."""

    def lengthen(self, cache: Any, length: int) -> Any:
        """A cache of `length` positions per row holding `cache`'s in its first ones; the rest empty."""


def make_runner(
    causal_lm, arch: Architecture, kind: str | None = None, gguf_blocks: str | os.PathLike | None = None
) -> Runner:
    """The runner for a model on the current backend.

    `kind=None` picks the fastest that can run it: the plain-torch runner on
    torch when the architecture and model allow it (no LoRA, no Keras
    quantization), the Keras runner otherwise. `kind="keras"` forces the
    Keras layers; `kind="torch"` the plain-torch runner, or an error saying
    why it cannot run.

    `gguf_blocks` (the GGUF file the model was loaded from) makes the
    plain-torch runner multiply by the file's own quantized blocks, packed
    for torch's int4 CPU kernel (`packed_torch`). Only torch on a CPU has
    that kernel: elsewhere a `UserWarning` says so and the model runs on its
    float weights, which hold the same values.
    """
    if kind is not None and (not isinstance(kind, str) or kind not in KINDS):
        raise GenerationArgumentError(f"runner kind must be one of {KINDS} or None, got {kind!r}.")
    caps = capabilities()
    backbone = causal_lm.backbone
    if gguf_blocks is not None:
        check_keeps_blocks(arch)
        if caps.plain_torch and kind != "keras":
            return _packed_runner(backbone, arch, gguf_blocks)
        warnings.warn(
            f"quantize='gguf' packs the file's blocks for torch's CPU kernel only; on "
            f"{current_backend()!r} the model runs its float32 weights (the same values, no speed-up).",
            stacklevel=3,
        )
    torch_ok = caps.plain_torch and arch.plain_torch
    if kind == "torch" or (kind is None and torch_ok and not torch_runner.unsupported(backbone)):
        if current_backend() != "torch":
            raise GenerationArgumentError(
                f"the plain-torch runner needs the torch backend; this process uses {current_backend()!r}."
            )
        reason = torch_runner.unsupported(backbone) or (None if arch.plain_torch else arch.title)
        if reason:
            raise GenerationArgumentError(f"the plain-torch runner cannot run this model: {reason}.")
        return torch_runner.TorchRunner(backbone, arch)
    return keras_runner.KerasRunner(
        causal_lm,
        arch,
        sharded=caps.shards_variables,
        compiles=caps.compiles,
        prefill_chunk=caps.prefill_chunk,
        spans=caps.attention_spans,
    )


def _packed_runner(backbone, arch: Architecture, path: str | os.PathLike) -> Runner:
    from gemma_keras.formats.gguf_blocks import matmul_weights
    from gemma_keras.generation.packed_torch import pack_weights

    reason = torch_runner.unsupported(backbone) or (None if arch.plain_torch else arch.title)
    if reason:
        raise GenerationArgumentError(f"the packed GGUF blocks cannot run this model: {reason}.")
    device = str(backbone.token_embedding.embeddings.value.device)
    if device != "cpu":
        raise GenerationArgumentError(
            f"quantize='gguf' runs torch's int4 CPU kernel, but the model is on {device!r}; "
            "load it without quantize='gguf' there."
        )
    layers = len(backbone.transformer_layers)
    packed = pack_weights(matmul_weights(path, arch), torch_runner.fused_products(layers))
    return torch_runner.TorchRunner(backbone, arch, packed=packed)
