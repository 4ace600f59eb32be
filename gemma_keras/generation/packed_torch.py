"""`PackedLinear`: `x @ w.T` for a weight held as 4-bit groups, through torch's fused CPU kernel.

A decode step of a small model on a CPU is bound by memory bandwidth: it
reads every weight once per token. On this 2-core machine the 270M model's
float32 weights (1.07 GB) take about 80 ms to stream. torch ships a CPU
kernel that multiplies by int4 weights packed two to a byte, with a scale
and a zero per group of 32 inputs (`_weight_int4pack_mm_for_cpu`), and it
reads a quarter of the bytes of bfloat16. Measured on the 262,144 x 640
output projection: 66 ms in float32, 25 ms in bfloat16, 9 ms packed.

It runs only in bfloat16 (float32 activations took 150 ms, float16 190 ms),
so inputs are rounded to bfloat16 for the product and the result comes back
in the caller's dtype; scales and zeros are bfloat16 too.

4-bit codes are one packed matrix. 8-bit codes (`c = 16 * hi + lo`) are two
halves of one, stacked as rows and summed after the product: `lo` with the
group's scale, `hi` with 16 times it. Each part's zero
is kept a power-of-two multiple of the scale where the type allows (Q4_0,
Q5_0, Q8_0 and requantized groups), so that rounding the scale to bfloat16
scales the group's weights by one common factor and adds no offset; the
K-quants' and Q4_1's own zeros are rounded to bfloat16 as they are.
"""

from __future__ import annotations

import numpy as np

from gemma_keras.formats.gguf_blocks import GROUP, GroupCodes

_ROWS_PER_PACK = 8192  # the packing op wants int32 codes: bounded temporaries
_ROW_MULTIPLE = 16  # the kernel's output count must be a multiple of this


def concat(parts: list[GroupCodes]) -> GroupCodes:
    """Weights with the same inputs stacked along their outputs (q, k and v; gate and up): one product."""
    return GroupCodes(
        np.concatenate([p.codes for p in parts]),
        np.concatenate([p.scale for p in parts]),
        np.concatenate([p.zero for p in parts]),
        max(p.bits for p in parts),  # 4-bit codes are valid 8-bit codes
        all(p.exact for p in parts),
    )


def pack_weights(weights, fused: list[tuple[str, ...]]) -> dict:
    """`(key, GroupCodes)` pairs to `{key: PackedLinear}`; each tuple of keys in `fused` whose weights
    all arrive becomes one `PackedLinear` under that tuple, its outputs in the tuple's order."""
    members = {key: group for group in fused for key in group}
    waiting: dict[tuple[str, ...], dict[str, GroupCodes]] = {}
    packed: dict = {}
    for key, codes in weights:
        group = members.get(key)
        if group is None:
            packed[key] = PackedLinear(codes)
            continue
        waiting.setdefault(group, {})[key] = codes
        if len(waiting[group]) == len(group):
            arrived = waiting.pop(group)
            packed[group] = PackedLinear(concat([arrived[k] for k in group]))
    for partial in waiting.values():  # a group with a weight missing: each on its own
        packed.update((key, PackedLinear(codes)) for key, codes in partial.items())
    return packed


def _pad_rows(a: np.ndarray, pad: int) -> np.ndarray:
    return np.concatenate([a, np.zeros((pad, a.shape[1]), a.dtype)]) if pad else a


class _Rows:
    """Rows of `codes`, transformed by `part` (the low or high nibbles), without holding them all."""

    def __init__(self, codes: np.ndarray, part=None):
        self.codes, self.part, self.count = codes, part, codes.shape[0]

    def __call__(self, start: int, end: int) -> np.ndarray:
        rows = self.codes[start:end]
        return rows if self.part is None else self.part(rows)


class PackedLinear:
    """`y = x @ w.T` for `w` given as `GroupCodes` `(out, in)`; `x` is `(..., in)`."""

    def __init__(self, codes: GroupCodes):
        import torch

        self.torch = torch
        self.out_features, self.in_features = codes.shape
        scale = codes.scale.astype(np.float32)
        # The kernel computes (c - 8) * scale + zero.
        if codes.bits == 4:
            self.packed, self.pairs = self._pack([_Rows(codes.codes)], scale, codes.zero + 8 * scale)
            self.halves = None
            return
        # Symmetric groups (Q8_0, requantized) put all of -128 * scale in the high part's 16 * (hi - 8).
        symmetric = codes.zero == -128 * scale
        lo_zero = np.where(symmetric, 8 * scale, codes.zero + 8 * scale)
        hi_zero = np.where(symmetric, 0.0, 128 * scale).astype(np.float32)
        # Both halves as the rows of one matrix: one kernel call (each costs tens of microseconds).
        half = self.out_features + (-self.out_features % _ROW_MULTIPLE)
        pad = half - self.out_features
        self.halves = half
        lo = _Rows(codes.codes, lambda rows: rows & 0x0F)
        hi = _Rows(codes.codes, lambda rows: rows >> 4)
        self.packed, self.pairs = self._pack(
            [lo, _Rows(np.zeros((pad, self.in_features), np.uint8)), hi],
            np.concatenate([_pad_rows(scale, pad), 16 * scale]),
            np.concatenate([_pad_rows(lo_zero.astype(np.float32), pad), hi_zero]),
        )

    def _pack(self, parts: list[_Rows], scale: np.ndarray, zero: np.ndarray):
        """Packs the rows of `parts`, one after another, `_ROWS_PER_PACK` at a time into one tensor.

        Only a chunk of int32 codes exists at once: the 262,144 x 640 embedding
        (8-bit codes, two halves) used to hold its halves, their concatenation
        and every packed chunk besides the result, about 1 GB at the peak.
        """
        torch = self.torch
        rows = sum(part.count for part in parts)
        pad = -rows % _ROW_MULTIPLE  # zero rows with zero scales; `__call__` drops their outputs
        if pad:
            parts = [*parts, _Rows(np.zeros((pad, self.in_features), np.uint8))]
        rows += pad
        scale, zero = _pad_rows(scale, pad), _pad_rows(zero, pad)
        packed = None
        # Chunks start at multiples of _ROWS_PER_PACK (a multiple of 64): the op packs 64 rows
        # together, so chunks pack to the same bytes as the whole matrix.
        for start in range(0, rows, _ROWS_PER_PACK):
            end = min(rows, start + _ROWS_PER_PACK)
            chunk = torch.from_numpy(_gather(parts, start, end).astype(np.int32))
            out = torch.ops.aten._convert_weight_to_int4pack_for_cpu(chunk, 1)
            if packed is None:
                packed = torch.empty((rows, *out.shape[1:]), dtype=out.dtype)
            packed[start:end] = out
        # (groups, out, 2): the kernel's layout of scales and zeros.
        pairs = np.stack([scale.T, zero.T], axis=-1).astype(np.float32)
        return packed, torch.from_numpy(np.ascontiguousarray(pairs)).to(torch.bfloat16)

    @property
    def nbytes(self) -> int:
        return (
            self.packed.numel() * self.packed.element_size() + self.pairs.numel() * self.pairs.element_size()
        )

    def __call__(self, x):
        torch = self.torch
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP, self.pairs).to(x.dtype)
        n = self.out_features
        out = y[:, :n] if self.halves is None else y[:, :n] + y[:, self.halves : self.halves + n]
        return out.reshape(*lead, n)


def _gather(parts: list[_Rows], start: int, end: int) -> np.ndarray:
    """Rows `start:end` of the parts stacked in order."""
    pieces, offset = [], 0
    for part in parts:
        lo, hi = max(start, offset), min(end, offset + part.count)
        if lo < hi:
            pieces.append(part(lo - offset, hi - offset))
        offset += part.count
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
