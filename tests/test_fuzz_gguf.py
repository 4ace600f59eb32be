"""Mutation fuzzing of GGUF files: every case ends in success or a gemma_keras error.

Mutations: flipped bytes in the header and metadata, truncation at any
offset, and absurd values written over the integer fields that matter
(counts, string and array lengths, tensor ranks, dimensions, types and
offsets). The files are tiny valid Gemma, Gemma 2 and Gemma 3 GGUFs, and the
real model's header (its tensor data left as a sparse hole).

A case passes when reading the file and dequantizing every tensor either
succeeds or raises a `GemmaKerasError` that names the file, within the
deadline, and without leaving anything in the cache.
"""

from __future__ import annotations

import collections
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gemma_keras as gk
from gemma_keras.formats.gguf_reader import read_gguf
from tests.conftest import JAX_SESSION_ONLY, cache_files

# Reading GGUF involves no Keras backend.
pytestmark = JAX_SESSION_ONLY

ABSURD = [0, 1, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1, 255, 7, 4096, 10**12]
OUTCOMES: collections.Counter = collections.Counter()


def _integer_fields(path: Path) -> tuple[list[tuple[int, int]], int]:
    """Byte positions and widths of the integer fields, and where tensor data starts."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    base = reader.data.__array_interface__["data"][0]
    spots = []

    def add(part) -> None:
        if part.dtype.kind in "iu" and part.size == 1 and part.dtype.itemsize in (4, 8):
            spots.append((part.__array_interface__["data"][0] - base, part.dtype.itemsize))

    for field in reader.fields.values():
        for index in range(min(len(field.parts), 64)):
            add(field.parts[index])
    for tensor in reader.tensors:
        for part in tensor.field.parts:
            if part.dtype.kind in "iu" and part.dtype.itemsize in (4, 8):
                for i in range(part.size):
                    spots.append(
                        (
                            part.__array_interface__["data"][0] - base + i * part.dtype.itemsize,
                            part.dtype.itemsize,
                        )
                    )
    return sorted(set(spots)), int(reader.data_offset)


@pytest.fixture(scope="module")
def corpus(tiny_gguf):
    files = {}
    for arch in ("gemma", "gemma2", "gemma3"):
        for qtype in ("F32", "Q8_0"):
            path, _ = tiny_gguf(arch, qtype)
            spots, data_start = _integer_fields(path)
            files[f"{arch}-{qtype}"] = (path.read_bytes(), spots, data_start)
    return files


def _mutate(data: bytes, spots, data_start: int, draw) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "absurd", "absurd", "combo"]))
    buf = bytearray(data)
    if kind in ("flip", "combo"):
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, max(data_start - 1, 0)))
            buf[pos] = draw(st.integers(0, 255))
    if kind in ("absurd", "combo"):
        for _ in range(draw(st.integers(1, 3))):
            pos, width = draw(st.sampled_from(spots))
            value = draw(st.sampled_from(ABSURD)) % (1 << (8 * width))
            buf[pos : pos + width] = value.to_bytes(width, "little")
    if kind == "truncate":
        buf = buf[: draw(st.integers(0, len(buf) - 1))]
    return bytes(buf)


def _check_case(path: Path) -> str:
    try:
        info = read_gguf(path)
        for tensor in info.header.tensors:
            info.tensor(tensor.name)
    except gk.GemmaKerasError as exc:
        assert str(path) in str(exc), f"the error does not name the file: {exc}"
        return type(exc).__name__
    return "loaded"


_SETTINGS = dict(
    derandomize=True,  # the same cases on every run, so CI results repeat
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


def _draw_case(corpus, draw) -> bytes:
    name = draw(st.sampled_from(sorted(corpus)))
    raw, spots, data_start = corpus[name]
    return _mutate(raw, spots, data_start, draw)


@settings(
    max_examples=int(os.environ.get("GEMMA_KERAS_FUZZ_CASES", "1100")),
    deadline=5000,
    **_SETTINGS,
)
@given(data=st.data())
def test_mutated_tiny_gguf_files(corpus, tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "fuzz-case.gguf"
    path.write_bytes(_draw_case(corpus, data.draw))
    OUTCOMES[_check_case(path)] += 1


@settings(
    max_examples=60,
    deadline=20000,
    **_SETTINGS,
)
@given(data=st.data())
def test_mutated_files_through_load_leave_no_cache_debris(corpus, tmp_path_factory, data):
    """The whole of `gk.load`: a failure publishes nothing and leaves no temporaries."""
    base = tmp_path_factory.mktemp("fuzz-load")
    path = base / "case.gguf"
    path.write_bytes(_draw_case(corpus, data.draw))
    cache_root = base / "cache"
    previous = os.environ["GEMMA_KERAS_CACHE"]
    os.environ["GEMMA_KERAS_CACHE"] = str(cache_root)
    try:
        gk.load(path)
        ok = True
    except gk.GemmaKerasError as exc:
        assert str(path) in str(exc)
        ok = False
    finally:
        os.environ["GEMMA_KERAS_CACHE"] = previous
    debris = [p for p in cache_files(cache_root) if ".tmp" in str(p)]
    assert debris == []
    if not ok:
        assert [p for p in cache_files(cache_root) if not p.name.endswith(".lock")] == []


def test_fuzz_outcome_summary(capsys):
    """Runs after the fuzz test: prints the counts for the report."""
    if not OUTCOMES:
        pytest.skip("the fuzz test did not run in this session")
    with capsys.disabled():
        print("\nGGUF fuzz outcomes:", dict(OUTCOMES), "total", sum(OUTCOMES.values()))
    assert sum(OUTCOMES.values()) >= int(os.environ.get("GEMMA_KERAS_FUZZ_CASES", "1100"))


@pytest.fixture(scope="module")
def real_gguf():
    """The real file, with its integer fields: gguf-py takes about 17 s to find them."""
    from gemma_keras.sources.embedded import embedded_gguf as _embedded_gguf

    real, _ = _embedded_gguf(None)
    return real, *_integer_fields(real)


@pytest.mark.real
@pytest.mark.parametrize("seed", range(12))
def test_mutated_real_model_header(tmp_path, real_gguf, seed):
    """The real file's metadata, mutated; its tensor data is a sparse hole."""
    real, spots, data_start = real_gguf
    rng = np.random.default_rng(seed)
    with open(real, "rb") as f:
        header = bytearray(f.read(data_start))
    for _ in range(3):
        if rng.random() < 0.5:
            pos, width = spots[rng.integers(len(spots))]
            value = ABSURD[rng.integers(len(ABSURD))] % (1 << (8 * width))
            header[pos : pos + width] = value.to_bytes(width, "little")
        else:
            header[rng.integers(len(header))] = rng.integers(256)
    path = tmp_path / "real-mutated.gguf"
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(real.stat().st_size)
    outcome = _check_case(path)
    assert outcome in ("loaded", "GGUFError", "UnsupportedModelError", "ModelNotFoundError")


def test_declared_size_beyond_the_file_is_rejected_before_allocating(tiny_gguf, tmp_path):
    path, _ = tiny_gguf("gemma3")
    spots, _ = _integer_fields(path)
    raw = bytearray(path.read_bytes())
    # The first tensor's first dimension, made enormous.
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    dims = reader.tensors[0].field.parts[3]
    pos = dims.__array_interface__["data"][0] - reader.data.__array_interface__["data"][0]
    raw[pos : pos + 8] = struct.pack("<Q", 2**40)
    bad = tmp_path / "huge.gguf"
    bad.write_bytes(bytes(raw))
    with pytest.raises(gk.GGUFError) as info:
        read_gguf(bad)
    assert str(bad) in str(info.value)
