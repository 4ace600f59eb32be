"""Training data for fine-tuning: read, render in Gemma's chat format, tokenize, batch.

Records come from a JSONL file, a list of dicts, or any iterable of dicts
(a Hugging Face `datasets.Dataset` iterates as dicts). Each record is one of

- `{"text": ...}`: plain language modelling; every token is trained on;
- `{"prompt": ..., "response": ...}`: one user turn and one model turn;
- `{"messages": [{"role": ..., "content": ...}, ...]}`: a conversation.

Turns are rendered with the model's chat format (`TurnFormat.pieces`, as
`chat()` encodes them) and tokenized piece by piece, exactly as generation
sees them: the prompt up to `<start_of_turn>model\\n`, then the reply. What
the messages say is encoded as plain text, so a message cannot write a
control token; a `{"text"}` record is the caller's own template, and control
tokens written in it (`<start_of_turn>`) do become control tokens. With `mask_prompt` (the default) the loss covers only the
model's replies and their `<end_of_turn>`.

Batches are plain numpy, so no backend needs TensorFlow for its data. Each
batch is padded to a power of two (at least 32) no longer than
`sequence_length`, which bounds the number of compiled shapes.

Example:

>>> records = [{"prompt": "2+2?", "response": "4"}]
>>> examples, stats = tokenize_records(records, lm.tokenizer, sequence_length=64)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gemma_keras import checks
from gemma_keras.architectures.chat_format import GEMMA_TURNS, TurnFormat
from gemma_keras.buckets import bucket
from gemma_keras.errors import DataError, GenerationArgumentError

MIN_BATCH_LENGTH = 32
MIN_SCORED_POSITIONS = 8


@dataclass
class Example:
    """One tokenized record: `ids` and a 0/1 `loss_mask` of the same length."""

    ids: np.ndarray
    loss_mask: np.ndarray


@dataclass
class DataStats:
    """What reading and tokenizing the data did, for the user to see."""

    records: int = 0
    skipped: int = 0
    truncated: int = 0
    dropped_empty: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    skipped_reasons: list[str] = field(default_factory=list)


def iter_records(
    data: Any,
    on_error: str = "raise",
    stats: DataStats | None = None,
    chat_format: TurnFormat = GEMMA_TURNS,
) -> Iterator[dict]:
    """Yields records from a JSONL path, or from an iterable of dicts.

    A malformed JSONL line raises a `DataError` naming the file and line, or,
    with `on_error="skip"`, is counted in `stats.skipped` and passed over.
    """
    if not isinstance(on_error, str) or on_error not in ("raise", "skip"):
        raise DataError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    stats = stats if stats is not None else DataStats()
    if isinstance(data, (str, os.PathLike)):
        yield from _iter_jsonl(Path(data), on_error, stats, chat_format)
        return
    if isinstance(data, Mapping) or not isinstance(data, Iterable):
        raise DataError(
            "training data must be a JSONL path, a list of dicts or a datasets.Dataset, "
            f"got {type(data).__name__}."
        )
    for i, record in enumerate(data):
        try:
            yield _check_record(record, f"record {i}", chat_format)
        except DataError as exc:
            _skip_or_raise(exc, on_error, stats)


def _iter_jsonl(path: Path, on_error: str, stats: DataStats, chat_format: TurnFormat) -> Iterator[dict]:
    if not path.is_file():
        raise DataError(f"training data file {str(path)!r} does not exist or is not a file.")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                # A byte-order mark starts files some Windows editors save.
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                _skip_or_raise(DataError(f"{where}: not valid UTF-8 ({exc.reason})."), on_error, stats)
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                error = DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}).")
                _skip_or_raise(error, on_error, stats)
                continue
            try:
                yield _check_record(record, where, chat_format)
            except DataError as exc:
                _skip_or_raise(exc, on_error, stats)


def _skip_or_raise(error: DataError, on_error: str, stats: DataStats) -> None:
    if on_error == "raise":
        raise DataError(f"{error} Fix the record, or pass on_error='skip' to skip bad records.")
    stats.skipped += 1
    if len(stats.skipped_reasons) < 20:
        stats.skipped_reasons.append(str(error))


def _check_record(record: Any, where: str, chat_format: TurnFormat) -> dict:
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}.")
    if "messages" in record:
        try:
            turns = chat_format.normalize(record["messages"])
        except GenerationArgumentError as exc:
            raise DataError(f"{where}: {exc}") from None
        if not any(t["role"] == "model" for t in turns):
            raise DataError(f"{where}: the conversation has no model turn to learn from.")
        return {"messages": turns}
    if "prompt" in record or "response" in record:
        for key in ("prompt", "response"):
            if not isinstance(record.get(key), str):
                raise DataError(f"{where}: {key!r} must be a string.")
            checks.text(f"{where}: {key!r}", record[key], DataError)
        return {
            "messages": [
                {"role": "user", "content": record["prompt"]},
                {"role": "model", "content": record["response"]},
            ]
        }
    if "text" in record:
        if not isinstance(record["text"], str) or not record["text"]:
            raise DataError(f"{where}: 'text' must be a non-empty string.")
        checks.text(f"{where}: 'text'", record["text"], DataError)
        return {"text": record["text"]}
    keys = ", ".join(sorted(map(str, record))) or "none"
    raise DataError(
        f"{where}: a record needs 'text', 'prompt' and 'response', or 'messages'; its keys are: {keys}."
    )


def encode_record(
    record: dict, tokenizer, mask_prompt: bool = True, chat_format: TurnFormat = GEMMA_TURNS
) -> Example:
    """Token ids and loss mask for one checked record (see `iter_records`)."""
    if "text" in record:
        ids = tokenizer.encode(record["text"], add_bos=True, special=True) + [tokenizer.eos_id]
        mask = [0] + [1] * (len(ids) - 1)
        return Example(np.asarray(ids, np.int32), np.asarray(mask, np.int8))
    chat_format.check_vocabulary(tokenizer)
    ids = [tokenizer.bos_id]
    mask = [0]

    for piece in chat_format.pieces(record["messages"]):
        encoded = tokenizer.encode(piece.text, add_bos=False, special=not piece.literal)
        ids.extend(encoded)
        mask.extend([1 if piece.reply or not mask_prompt else 0] * len(encoded))
    return Example(np.asarray(ids, np.int32), np.asarray(mask, np.int8))


def tokenize_records(
    data: Any,
    tokenizer,
    sequence_length: int,
    mask_prompt: bool = True,
    on_error: str = "raise",
    *,
    chat_format: TurnFormat = GEMMA_TURNS,
) -> tuple[list[Example], DataStats]:
    """Reads, checks and tokenizes all records; truncates to `sequence_length + 1` tokens.

    The extra token is the last label: the model sees `sequence_length`
    tokens and predicts the next one at each position.
    """
    stats = DataStats()
    examples = []
    for record in iter_records(data, on_error, stats, chat_format):
        stats.records += 1
        example = encode_record(record, tokenizer, mask_prompt, chat_format)
        if len(example.ids) > sequence_length + 1:
            stats.truncated += 1
            example = Example(example.ids[: sequence_length + 1], example.loss_mask[: sequence_length + 1])
        trained = int(example.loss_mask[1:].sum())
        if trained == 0:
            stats.dropped_empty += 1
            continue
        stats.tokens += len(example.ids)
        stats.trained_tokens += trained
        examples.append(example)
    if not examples:
        detail = (
            f" ({stats.dropped_empty} lost all trained tokens to truncation)" if stats.dropped_empty else ""
        )
        raise DataError(f"the training data holds no usable records{detail}.")
    return examples, stats


def make_batch(
    examples: list[Example], sequence_length: int, pad_id: int = 0
) -> tuple[dict, np.ndarray, np.ndarray]:
    """`(x, y, sample_weight)` numpy arrays for one batch.

    `x` holds `token_ids`, `padding_mask`, `positions` (the input
    positions whose next token is trained on) and their `labels`. Only those positions go
    through the vocabulary projection (see `loop.scored_positions_model`); in
    chat data most positions are prompt, and the projection onto 256k
    tokens is most of the model's work. `y` is the next token at each
    scored position and `sample_weight` is 0 where a row has fewer.
    """
    length = min(bucket(max(len(e.ids) - 1 for e in examples), MIN_BATCH_LENGTH), sequence_length)
    n = len(examples)
    ids = np.full((n, length + 1), pad_id, np.int32)
    mask = np.zeros((n, length), bool)
    trained = []
    for row, example in enumerate(examples):
        k = len(example.ids)
        ids[row, :k] = example.ids
        mask[row, : k - 1] = True
        trained.append(np.flatnonzero(example.loss_mask[1:]))
    width = min(bucket(max(len(t) for t in trained), MIN_SCORED_POSITIONS), length)
    positions = np.zeros((n, width), np.int32)
    weight = np.zeros((n, width), np.float32)
    for row, where in enumerate(trained):
        positions[row, : len(where)] = where
        weight[row, : len(where)] = 1.0
    labels = np.take_along_axis(ids[:, 1:], positions, axis=1)
    x = {"token_ids": ids[:, :-1], "padding_mask": mask, "positions": positions, "labels": labels}
    return x, labels, weight


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled example order of one epoch; the same for the same seed on every backend."""
    return np.random.default_rng([seed, epoch]).permutation(n)
