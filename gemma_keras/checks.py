"""Validation of user values shared by every layer; each check takes the error class to raise."""

from __future__ import annotations

from typing import Any

import numpy as np

from gemma_keras.errors import GemmaKerasError


def is_integer(value: Any) -> bool:
    """An int or numpy integer, but not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def positive_int(name: str, value: Any, error: type[GemmaKerasError], allow_none: bool = False) -> int | None:
    """`value` as an int >= 1, or `error` naming `name`; None passes when `allow_none`."""
    if value is None and allow_none:
        return None
    if not is_integer(value) or value < 1:
        raise error(f"{name} must be a positive integer, got {value!r}.")
    return int(value)
