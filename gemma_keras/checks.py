"""The one validation layer for user values: every public entry point checks its arguments here.

Each check takes the argument's name, its value and the error class to
raise, so the message names the argument whichever room raises it. numpy
scalars are accepted wherever the Python type is (np.int64 for an int,
np.float32 for a float); bools are never numbers.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from gemma_keras.errors import GemmaKerasError


def env_flag(name: str, default: bool = False) -> bool:
    """An on/off environment variable: unset or empty is `default`; 0, false, no and off are off; anything else is on."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value not in ("0", "false", "no", "off")


def is_integer(value: Any) -> bool:
    """An int or numpy integer, but not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value: Any) -> bool:
    """An int, float or numpy number, but not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def positive_int(name: str, value: Any, error: type[GemmaKerasError], allow_none: bool = False) -> int | None:
    """`value` as an int >= 1, or `error` naming `name`; None passes when `allow_none`."""
    if value is None and allow_none:
        return None
    if not is_integer(value) or value < 1:
        raise error(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def finite_number(name: str, value: Any, error: type[GemmaKerasError]) -> float:
    """`value` as a finite float, or `error` naming `name`."""
    if not is_number(value):
        raise error(f"{name} must be a number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise error(f"{name} must be finite, got {value!r}.")
    return value


def text(name: str, value: Any, error: type[GemmaKerasError]) -> str:
    """`value` if it is a str that UTF-8 can encode, or `error` naming `name` and the bad character.

    A lone surrogate (U+D800-U+DFFF) is what Python makes of bytes that were
    not UTF-8 (a `\\xff` on the command line, a file decoded with
    `surrogateescape`); no tokenizer can encode it.
    """
    if not isinstance(value, str):
        raise error(f"{name} must be a string, got {type(value).__name__}.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start]
        raise error(
            f"{name} is not valid text: it holds {_describe(bad)} at character {exc.start}, which is not "
            "Unicode text (bytes that were not UTF-8?). Decode the input as UTF-8, or remove that character."
        ) from None
    return value


def _describe(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"U+{code:04X} (the undecodable byte 0x{code - 0xDC00:02x})"
    return f"a lone surrogate U+{code:04X}"


def path(name: str, value: Any, error: type[GemmaKerasError]) -> str | os.PathLike:
    """`value` if it is a str or os.PathLike naming something, or `error` naming `name`."""
    if not isinstance(value, (str, os.PathLike)):
        raise error(f"{name} must be a path, got {type(value).__name__}.")
    if not os.fspath(value).strip() or "\x00" in os.fspath(value):
        raise error(f"{name} is not a usable path: {os.fspath(value)!r}.")
    return value
