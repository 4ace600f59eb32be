"""A GGUF tensor's quantized blocks as integer codes with one scale and one zero per 32 inputs.

    w[n, k] = scale[n, k // 32] * codes[n, k] + zero[n, k // 32]

This is the form a fused low-bit matmul wants, and it holds most of
llama.cpp's block types exactly: Q4_0, Q4_1 and Q4_K as 4-bit codes, and
Q5_0, Q5_1, Q5_K and Q8_0 as 8-bit codes, each group of 32 being one of the file's blocks or
sub-blocks. Q6_K (scales per 16 values) and every other type are
requantized from their float32 values, symmetric 8-bit per 32, which is off
by at most 1/254 of a group's largest value (`exact` is False).

numpy only: no backend is imported here.

Example:

>>> import numpy as np
>>> from gguf import GGMLQuantizationType
>>> from gguf.quants import dequantize, quantize
>>> w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
>>> raw = quantize(w, GGMLQuantizationType.Q8_0)
>>> codes = group_codes(raw, GGMLQuantizationType.Q8_0, (1, 64))
>>> codes.bits, codes.exact, codes.scale.shape
(8, True, (1, 2))
>>> bool(np.allclose(codes.dequantize(), dequantize(raw, GGMLQuantizationType.Q8_0), atol=1e-6))
True
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

GROUP = 32  # inputs per scale and zero: the block size of Q4_0..Q8_0 and the K-quants' sub-blocks


@dataclass(frozen=True)
class GroupCodes:
    """One `(out, in)` weight as codes, scales and zeros; see the module docstring."""

    codes: np.ndarray  # uint8 (out, in)
    scale: np.ndarray  # float32 (out, in // GROUP)
    zero: np.ndarray  # float32 (out, in // GROUP)
    bits: int  # 4: every code is below 16; 8: below 256
    exact: bool  # False where the file's values were requantized (Q6_K, float and other types)

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape

    def dequantize(self) -> np.ndarray:
        """The float32 weight the codes stand for, `(out, in)`."""
        rows, cols = self.codes.shape
        groups = self.codes.reshape(rows, cols // GROUP, GROUP).astype(np.float32)
        w = groups * self.scale[..., None] + self.zero[..., None]
        return w.reshape(rows, cols)


def _f16(raw: np.ndarray) -> np.ndarray:
    """Two bytes per block, little-endian float16, as float32 `(blocks,)`."""
    return np.ascontiguousarray(raw).view(np.float16)[:, 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """16 bytes per block to 32 codes: the low nibbles are values 0-15, the high ones 16-31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """Four bytes per block (a little-endian uint32) to the fifth bit of each of its 32 values."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def _k_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K: the 12 packed bytes of a super-block to 8 six-bit scales and 8 six-bit mins."""
    s = scales.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mins = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc.astype(np.float32), mins.astype(np.float32)


def _legacy(name: str, blocks: np.ndarray):
    """Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: one block of 32 per group; returns `(codes, scale, zero, bits)`."""
    d = _f16(blocks[:, 0:2])
    if name == "Q8_0":
        return blocks[:, 2:34] ^ np.uint8(0x80), d, -128 * d, 8  # int8 q as uint8 q + 128: flip the sign bit
    if name == "Q4_0":
        return _nibbles(blocks[:, 2:18]), d, -8 * d, 4
    if name == "Q4_1":
        return _nibbles(blocks[:, 4:20]), d, _f16(blocks[:, 2:4]), 4
    if name == "Q5_0":
        return _nibbles(blocks[:, 6:22]) | (_high_bits(blocks[:, 2:6]) << 4), d, -16 * d, 8
    if name == "Q5_1":
        codes = _nibbles(blocks[:, 8:24]) | (_high_bits(blocks[:, 4:8]) << 4)
        return codes, d, _f16(blocks[:, 2:4]), 8
    raise AssertionError(name)


def _k_quant(name: str, blocks: np.ndarray):
    """Q4_K and Q5_K: super-blocks of 256 in 8 sub-blocks of 32, each with its own scale and min."""
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, mins = _k_scales(blocks[:, 4:16])
    scale = (d[:, None] * sc).reshape(-1)
    zero = -(dmin[:, None] * mins).reshape(-1)
    qs = blocks[:, 16:144] if name == "Q4_K" else blocks[:, 48:176]
    # Each 32 bytes hold two sub-blocks: the low nibbles are the first, the high ones the second.
    qs = qs.reshape(n, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    codes = (qs & 0x0F).reshape(n * 8, 32)
    if name == "Q4_K":
        return codes, scale, zero, 4
    qh = blocks[:, 16:48].reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    return codes | ((qh & 1).reshape(n * 8, 32) << 4), scale, zero, 8


_EXACT = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34, "Q4_K": 144, "Q5_K": 176}


# Values per `dequantize_blocks` call: big enough that numpy's per-call cost vanishes, small enough
# that its temporaries stay in cache (and below the 4 MB at which numpy asks for huge pages, which
# stalls here while the kernel compacts memory). gguf-py's own `dequantize` works 16 rows at a
# time and took 2-4 s for the 270M's 268M values, most of it Python; this takes about 1 s.
_VALUES_PER_CALL = 1 << 16


def dequantize(raw: np.ndarray, qtype, out: np.ndarray | None = None) -> np.ndarray:
    """A GGUF tensor's bytes of type `qtype` as float32, exactly as gguf-py decodes them.

    gguf-py's block decoders (the reference for every type llama.cpp
    writes), called on runs of rows. Without `out`, returns a flat array.
    With it, writes into `out`: float32, flat and C-contiguous, or
    `(rows, values per row)` of any strides, so that a transposed view of a
    Keras kernel takes the values without a whole-tensor copy in between.
    Raises ValueError when the bytes are not whole blocks or do not fill
    `out`, NotImplementedError for a type gguf-py cannot decode.
    """
    import gguf.quants
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    qtype = GGMLQuantizationType(qtype)
    raw = np.asarray(raw).reshape(-1).view(np.uint8)  # a plain array: memmap slices cost a Python call each
    values, size = GGML_QUANT_SIZES[qtype]
    if raw.size % size:
        raise ValueError(f"{raw.size} bytes are not whole {qtype.name} blocks of {size} bytes")
    count = raw.size // size * values
    if out is None:
        out = np.empty(count, np.float32)
    if out.dtype != np.float32 or out.size != count or not (out.ndim == 2 or out.flags.c_contiguous):
        raise ValueError(f"cannot write {count} float32 values into a {out.dtype} array of shape {out.shape}")
    rows = out if out.ndim == 2 else out.reshape(-1, values)  # flat: a block per row
    if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        rows[...] = raw.view(np.float32 if qtype == GGMLQuantizationType.F32 else np.float16).reshape(
            rows.shape
        )
        return out
    decoder = getattr(gguf.quants, qtype.name, None)
    if decoder is None or not hasattr(decoder, "dequantize_blocks"):
        raise NotImplementedError(f"gguf-py cannot dequantize {qtype.name}")
    if rows.shape[1] % values:
        raise ValueError(f"rows of {rows.shape[1]} values do not split into {qtype.name} blocks of {values}")
    blocks = raw.reshape(rows.shape[0], -1, size)
    decoder.init_grid()  # the i-quants' lookup tables; a no-op for the others
    step = max(1, _VALUES_PER_CALL // rows.shape[1])
    for start in range(0, rows.shape[0], step):
        run = blocks[start : start + step]
        rows[start : start + step] = decoder.dequantize_blocks(run.reshape(-1, size)).reshape(
            run.shape[0], -1
        )
    return out


def requantize(w: np.ndarray) -> GroupCodes:
    """Float32 `(out, in)` to symmetric 8-bit codes per group of 32 (abs-max scale)."""
    rows, cols = w.shape
    groups = w.reshape(rows, cols // GROUP, GROUP).astype(np.float32)
    scale = np.abs(groups).max(axis=-1) / 127
    safe = np.where(scale > 0, scale, 1.0)
    codes = np.clip(np.rint(groups / safe[..., None]), -127, 127).astype(np.int16) + 128
    return GroupCodes(codes.astype(np.uint8).reshape(rows, cols), scale, -128 * scale, 8, False)


def group_codes(raw: np.ndarray, qtype, shape: tuple[int, int]) -> GroupCodes:
    """A GGUF tensor's bytes (any layout of them) of type `qtype` as `GroupCodes` of `shape` `(out, in)`.

    Raises ValueError when `in` is not a multiple of 32 or the bytes do not fill the shape.
    """
    from gguf import GGMLQuantizationType

    rows, cols = shape
    if cols % GROUP:
        raise ValueError(f"rows of {cols} values do not split into groups of {GROUP}")
    qtype = GGMLQuantizationType(qtype)
    raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    block_bytes = _EXACT.get(qtype.name)
    if block_bytes is None:
        return requantize(dequantize(raw, qtype).reshape(shape))
    per_block = 256 if qtype.name.endswith("_K") else GROUP
    if raw.size * per_block != rows * cols * block_bytes:
        raise ValueError(f"{raw.size} bytes of {qtype.name} do not hold a {rows} x {cols} tensor")
    blocks = raw.reshape(-1, block_bytes)
    decode = _k_quant if per_block == 256 else _legacy
    codes, scale, zero, bits = decode(qtype.name, blocks)
    groups = cols // GROUP
    return GroupCodes(
        np.ascontiguousarray(codes, dtype=np.uint8).reshape(rows, cols),
        scale.astype(np.float32).reshape(rows, groups),
        zero.astype(np.float32).reshape(rows, groups),
        bits,
        True,
    )


def check_keeps_blocks(arch) -> None:
    """Raises `UnsupportedModelError` unless the architecture's blocks can be kept (Gemma 1, 2 and 3)."""
    from gemma_keras.errors import UnsupportedModelError

    if not arch.keeps_gguf_blocks:
        raise UnsupportedModelError(
            f"{arch.title}: quantize='gguf' keeps the blocks of Gemma 1, 2 and 3 GGUF files only; "
            "load it without quantize, or with quantize='int8'."
        )


def matmul_weights(path, arch) -> Iterator[tuple[str, GroupCodes]]:
    """Every weight a Gemma 1-3 GGUF's matmuls read, as `(Keras weight path, GroupCodes)`, one at a time.

    The paths are `token_embedding.embeddings` (the tied output projection)
    and `transformer_layers.{i}.<attribute path>` from `tensor_names`.
    Gemma 3n and Gemma 4 raise `UnsupportedModelError`.
    """
    from gemma_keras.errors import GGUFError
    from gemma_keras.formats.gguf_header import read_header
    from gemma_keras.formats.tensor_names import BLOCK_TENSORS, TOP_TENSORS

    check_keeps_blocks(arch)
    header = read_header(path, values=False)  # the tensors only: 262k vocabulary strings skipped
    matmuls = {t.gguf: t.keras for t in BLOCK_TENSORS if t.layout != "norm"}
    gguf, layer, attribute, _ = TOP_TENSORS[0]  # the token embedding, also the tied output projection
    for tensor in header.tensors:
        if tensor.name == gguf:
            key = f"{layer}.{attribute}"
        else:
            parts = tensor.name.split(".")
            if len(parts) != 4 or parts[0] != "blk" or parts[2] not in matmuls:
                continue
            key = f"transformer_layers.{int(parts[1])}.{matmuls[parts[2]]}"
        try:
            yield key, group_codes(header.tensor_bytes(tensor), tensor.qtype, tensor.shape)
        except ValueError as exc:
            raise GGUFError(f"{path}: tensor {tensor.name!r}: {exc}") from exc
