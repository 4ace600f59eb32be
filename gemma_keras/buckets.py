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
