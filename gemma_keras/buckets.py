"""Shape buckets: lengths rounded up to powers of two, so compiled functions are reused.

The decode loop buckets prompt and cache lengths, and training buckets batch
lengths, so that a new length within a bucket does not recompile.
"""

from __future__ import annotations


def bucket(n: int, minimum: int) -> int:
    """The smallest power-of-two multiple of `minimum` that is >= `n`."""
    size = minimum
    while size < n:
        size *= 2
    return size


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= `n`."""
    return -(-n // multiple) * multiple


def long_bucket(n: int, minimum: int, step: int) -> int:
    """`bucket(n, minimum)` up to `step`; past it, the smallest multiple of `step` that is >= `n`.

    Long prompts and caches grow by `step` instead of doubling. Doubling
    padded a 2,049-token prompt to 4,096 tokens and gave an 8,192-token
    prompt a 16,384-position cache, and a compiled runner attends over every
    position of its cache. `step` is a power-of-two multiple of `minimum`.
    """
    return bucket(n, minimum) if n <= step else round_up(n, step)
