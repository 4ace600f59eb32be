"""A structural check of a GGUF file's header, before gguf-py reads it.

gguf-py's `GGUFReader` trusts the counts in the file: an array that declares
2**63 elements of a variable-size type makes it loop and allocate until the
process runs out of memory. So before a file reaches it, this module walks
the header with `struct` and checks that every declared count, length, rank
and tensor extent fits inside the bytes the file really has. The walk is
linear in the header's size and allocates nothing in proportion to a
declared count.

The layout (GGUF v2/v3): magic, version u32, tensor count u64, metadata count
u64; metadata entries (key string, value type u32, value); tensor infos
(name string, rank u32, dims u64 x rank, type u32, offset u64); padding to
`general.alignment`; tensor data.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

from gemma_keras.errors import GGUFError

# Value type -> fixed size in bytes (STRING = 8 and ARRAY = 9 are variable).
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
MAX_DIMS = 4
MAX_ELEMENTS = 1 << 40


class _Cursor:
    def __init__(self, data, path: Path):
        self.data, self.path, self.size, self.pos = data, path, len(data), 0

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: {what} (at byte {self.pos}); the file is corrupt or truncated.")

    def skip(self, n: int) -> int:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"needs {n} more bytes but the file ends at byte {self.size}")
        start, self.pos = self.pos, self.pos + n
        return start

    def take(self, n: int) -> bytes:
        start = self.skip(n)
        return bytes(self.data[start : start + n])

    def u32(self) -> int:
        return struct.unpack_from("<I", self.data, self.skip(4))[0]

    def u64(self) -> int:
        return struct.unpack_from("<Q", self.data, self.skip(8))[0]

    def string(self, what: str) -> bytes:
        length = self.u64()
        if length > self.size - self.pos:
            raise self.fail(f"{what} declares a length of {length} bytes")
        return self.take(length)


def _value(cur: _Cursor, vtype: int, key: str, depth: int = 0):
    """Skips one value; returns it when it is a small scalar (for `general.alignment`)."""
    if vtype in _FIXED:
        raw = cur.take(_FIXED[vtype])
        return int.from_bytes(raw, "little") if vtype in (4, 10) else None
    if vtype == _STRING:
        length = cur.u64()
        cur.skip(length)
        return None
    if vtype != _ARRAY:
        raise cur.fail(f"metadata {key!r} has unknown value type {vtype}")
    if depth >= 2:
        raise cur.fail(f"metadata {key!r} nests arrays too deeply")
    item_type, count = cur.u32(), cur.u64()
    if item_type in _FIXED:
        cur.skip(count * _FIXED[item_type])
        return None
    # Variable-size items take at least 8 bytes each (a length or a count).
    if count > (cur.size - cur.pos) // 8:
        raise cur.fail(f"metadata {key!r} declares {count} array items")
    for _ in range(count):
        _value(cur, item_type, key, depth + 1)
    return None


def check_gguf_structure(path: str | os.PathLike) -> None:
    """Raises `GGUFError` unless the header's structure fits inside the file."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    size = path.stat().st_size
    if size < 24:
        raise GGUFError(f"{path}: only {size} bytes, shorter than a GGUF header; the file is truncated.")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        cur = _Cursor(data, path)
        if cur.take(4) != b"GGUF":
            raise GGUFError(f"{path} is not a GGUF file (it does not start with b'GGUF').")
        version = cur.u32()
        if version not in (2, 3):
            raise GGUFError(f"{path}: GGUF version {version} is not supported (only 2 and 3).")
        n_tensors, n_kv = cur.u64(), cur.u64()
        if n_kv > size // 13 or n_tensors > size // 24:
            raise cur.fail(f"the header declares {n_kv} metadata entries and {n_tensors} tensors")
        alignment = 32
        for _ in range(n_kv):
            key = cur.string("a metadata key").decode("utf-8", errors="replace")
            value = _value(cur, cur.u32(), key)
            if key == "general.alignment":
                alignment = value if value else 0
        if alignment <= 0 or alignment & (alignment - 1) or alignment > 1 << 20:
            raise cur.fail(f"general.alignment {alignment} is not a power of two")
        tensors = []
        for _ in range(n_tensors):
            name = cur.string("a tensor name").decode("utf-8", errors="replace")
            rank = cur.u32()
            if not 1 <= rank <= MAX_DIMS:
                raise cur.fail(f"tensor {name!r} has rank {rank}")
            dims = [cur.u64() for _ in range(rank)]
            qtype, offset = cur.u32(), cur.u64()
            elements = 1
            for d in dims:
                elements *= d
            if not 1 <= elements <= MAX_ELEMENTS:
                raise cur.fail(f"tensor {name!r} declares shape {dims}")
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
            except (ValueError, KeyError):
                raise cur.fail(f"tensor {name!r} has unknown type {qtype}") from None
            if dims[0] % block:
                raise cur.fail(f"tensor {name!r} rows of {dims[0]} do not fill blocks of {block}")
            tensors.append((name, offset, elements // block * type_size))
        data_start = -(-cur.pos // alignment) * alignment
        for name, offset, nbytes in tensors:
            if data_start + offset + nbytes > size:
                raise GGUFError(
                    f"{path}: tensor {name!r} declares {nbytes} bytes at offset {offset}, past the end "
                    f"of the file ({size} bytes); the file is truncated or corrupt."
                )
