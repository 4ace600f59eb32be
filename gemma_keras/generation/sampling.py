"""Samplers: pure functions from logits to next tokens.

They run in NumPy on the host, after the compiled model step, so a seed gives
the same tokens on every backend for the same logits. Each filter takes
logits of shape `(batch, vocab)` and returns logits with the excluded tokens
set to `-inf`.

Example:

>>> import numpy as np
>>> params = SamplingParams(temperature=0.8, top_k=2, seed=0)
>>> next_tokens(np.array([[0.0, 3.0, 1.0, 2.0]]), params, np.random.default_rng(0)).tolist() in ([1], [3])
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gemma_keras import checks
from gemma_keras.errors import GenerationArgumentError, GenerationError


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. `temperature=0` means greedy."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        validate(self)

    def as_kwargs(self) -> dict:
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
        }

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def validate(p: SamplingParams) -> None:
    """Raises `GenerationArgumentError` naming the first bad value; stores numpy scalars as Python numbers."""
    error = GenerationArgumentError

    def store(name: str, value) -> None:
        object.__setattr__(p, name, value)

    store("temperature", checks.finite_number("temperature", p.temperature, error))
    if p.temperature < 0:
        raise error(f"temperature must be >= 0 (0 means greedy), got {p.temperature}.")
    if p.top_k is not None:
        store("top_k", checks.positive_int("top_k", p.top_k, error))
    if p.top_p is not None:
        store("top_p", checks.finite_number("top_p", p.top_p, error))
        if not 0 < p.top_p <= 1:
            raise error(f"top_p must be in (0, 1], got {p.top_p}.")
    if p.min_p is not None:
        store("min_p", checks.finite_number("min_p", p.min_p, error))
        if not 0 <= p.min_p <= 1:
            raise error(f"min_p must be in [0, 1], got {p.min_p}.")
    if p.repetition_penalty is not None:
        store("repetition_penalty", checks.finite_number("repetition_penalty", p.repetition_penalty, error))
        if p.repetition_penalty <= 0:
            raise error(f"repetition_penalty must be > 0 (1 means none), got {p.repetition_penalty}.")
    if p.seed is not None:
        if not checks.is_integer(p.seed) or p.seed < 0:
            raise error(f"seed must be an integer >= 0, got {p.seed!r}.")
        store("seed", int(p.seed))


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL-style penalty: divides positive logits of seen tokens, multiplies negative ones.

    `seen` is a boolean mask of shape `(batch, vocab)`.
    """
    if penalty == 1.0:
        return logits
    penalized = np.where(logits > 0, logits / penalty, logits * penalty)
    return np.where(seen, penalized, logits)


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    if k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[:, -k][:, None]
    return np.where(logits < kth, -np.inf, logits)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / np.sum(exp, axis=-1, keepdims=True)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keeps the smallest set of tokens whose probability reaches `p`."""
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, axis=-1)
    sorted_probs = np.take_along_axis(_softmax(logits), order, axis=-1)
    before = np.cumsum(sorted_probs, axis=-1) - sorted_probs
    drop_sorted = before >= p  # the first token is always kept
    drop = np.zeros_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    return np.where(drop, -np.inf, logits)


def min_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Drops tokens whose probability is below `p` times the top token's."""
    probs = _softmax(logits)
    threshold = p * np.max(probs, axis=-1, keepdims=True)
    return np.where(probs < threshold, -np.inf, logits)


def next_tokens(
    logits: np.ndarray,
    params: SamplingParams,
    rng: np.random.Generator,
    seen: np.ndarray | None = None,
) -> np.ndarray:
    """Picks one token per row of `logits` (shape `(batch, vocab)`).

    The arithmetic is float64, with the largest logit subtracted before the
    temperature divides: a temperature or penalty near zero then means
    "almost greedy", never an overflow that would turn every probability
    into NaN (and every pick into token 0).
    """
    logits = np.asarray(logits, dtype=np.float64)
    # -inf is a token ruled out; NaN, +inf or a row with nothing left is a broken model.
    if np.isnan(logits).any() or np.isposinf(logits).any() or not np.isfinite(logits.max(axis=-1)).all():
        raise GenerationError(
            "the model produced non-finite logits (NaN or inf), so no token can be picked; "
            "its weights or its dtype cannot represent this input (try dtype='float32')."
        )
    # Overflow to -inf below only rules tokens out, which is what it means.
    with np.errstate(over="ignore", under="ignore"):
        if params.repetition_penalty is not None and seen is not None:
            big = np.finfo(np.float64).max / 4
            logits = np.clip(apply_repetition_penalty(logits, seen, params.repetition_penalty), -big, big)
        if params.greedy:
            return np.argmax(logits, axis=-1)
        logits = (logits - np.max(logits, axis=-1, keepdims=True)) / params.temperature
    if params.top_k is not None:
        logits = top_k_filter(logits, params.top_k)
    if params.top_p is not None:
        logits = top_p_filter(logits, params.top_p)
    if params.min_p is not None:
        logits = min_p_filter(logits, params.min_p)
    cdf = np.cumsum(_softmax(logits), axis=-1)
    # Dividing by the last entry makes it exactly 1, so a uniform draw in
    # [0, 1) can never land on a token after the last one with probability.
    cdf /= cdf[:, -1:]
    u = rng.random((logits.shape[0], 1))
    return (cdf <= u).sum(axis=-1)
