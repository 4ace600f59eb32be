"""A GGUF tensor's blocks as codes, scales and zeros per 32 inputs (`formats.gguf_blocks`); numpy only."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from gemma_keras.errors import GGUFError, UnsupportedModelError
from gemma_keras.formats import gguf_blocks
from gemma_keras.formats.gguf_blocks import GROUP, group_codes, matmul_weights, requantize
from gemma_keras.testing import _k_quant_blocks

EXACT = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K")


def _raw(name: str, w: np.ndarray, rng) -> np.ndarray:
    if name.endswith("_K"):
        return _k_quant_blocks(name, w.shape, rng)
    if name in ("F16", "F32"):
        return w.astype(np.float16 if name == "F16" else np.float32)
    return quantize(w, GGMLQuantizationType[name])


def _codes_and_values(name: str, shape: tuple[int, int], seed: int):
    """A random tensor stored as `name`: its `GroupCodes`, and the values gguf-py dequantizes."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape).astype(np.float32)
    raw = _raw(name, w, rng)
    qtype = GGMLQuantizationType[name]
    return group_codes(raw, qtype, shape), dequantize(raw, qtype).reshape(shape)


@pytest.mark.parametrize("name", EXACT)
def test_block_types_are_held_exactly(name):
    codes, want = _codes_and_values(name, (6, 512), seed=1)
    assert codes.exact and codes.codes.dtype == np.uint8
    assert codes.scale.shape == codes.zero.shape == (6, 512 // GROUP)
    assert int(codes.codes.max()) < (16 if codes.bits == 4 else 256)
    assert codes.bits == (4 if name in ("Q4_0", "Q4_1", "Q4_K") else 8)
    np.testing.assert_array_equal(codes.dequantize(), want)


@pytest.mark.parametrize("name", ["Q6_K", "Q3_K", "F16", "F32"])
def test_other_types_are_requantized_within_half_a_step(name):
    codes, want = _codes_and_values(name, (4, 256), seed=2)
    assert not codes.exact and codes.bits == 8
    step = np.repeat(codes.scale, GROUP, axis=1)
    assert np.all(np.abs(codes.dequantize() - want) <= step / 2 + 1e-6 * np.abs(want).max())
    assert not np.array_equal(codes.dequantize(), want)  # requantized: not the file's values


@pytest.mark.parametrize(
    "name",
    [
        "F32",
        "F16",
        "BF16",
        "Q4_0",
        "Q4_1",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "IQ4_NL",
    ],
)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_dequantize_gives_gguf_py_values_across_calls(name, monkeypatch):
    """Random bytes are valid blocks of every type (a NaN scale decodes to NaNs in both)."""
    from gguf import GGML_QUANT_SIZES

    qtype = GGMLQuantizationType[name]
    values, size = GGML_QUANT_SIZES[qtype]
    raw = np.random.default_rng(3).integers(0, 256, size=7 * size * (4096 // values), dtype=np.uint8)
    monkeypatch.setattr(gguf_blocks, "_VALUES_PER_CALL", 1000)  # several calls, the last one short
    got = gguf_blocks.dequantize(raw, qtype)
    assert got.dtype == np.float32 and got.shape == (7 * 4096,)
    np.testing.assert_array_equal(got, dequantize(raw, qtype).reshape(-1))


def test_dequantize_refuses_bytes_that_are_not_whole_blocks():
    with pytest.raises(ValueError, match="not whole Q4_K blocks"):
        gguf_blocks.dequantize(np.zeros(145, np.uint8), GGMLQuantizationType.Q4_K)


def test_requantize_keeps_zero_groups():
    w = np.zeros((2, 64), dtype=np.float32)
    w[1, 40] = 3.0
    codes = requantize(w)
    np.testing.assert_allclose(codes.dequantize(), w, atol=1e-7)


def test_bad_shapes_are_refused():
    w = np.ones((2, 64), dtype=np.float32)
    raw = quantize(w, GGMLQuantizationType.Q8_0)
    with pytest.raises(ValueError, match="groups of 32"):
        group_codes(raw, GGMLQuantizationType.Q8_0, (4, 24))
    with pytest.raises(ValueError, match="do not hold"):
        group_codes(raw, GGMLQuantizationType.Q8_0, (4, 64))


def test_matmul_weights_name_every_projection(tiny_gguf):
    from gemma_keras.architectures import GEMMA3

    path, expected = tiny_gguf("gemma3", "Q8_0")
    got = dict(matmul_weights(path, GEMMA3))
    layers = {k.split(".")[1] for k in got if k.startswith("transformer_layers.")}
    assert layers == {"0", "1"}
    assert {k.split(".", 2)[2] for k in got if k.startswith("transformer_layers.0.")} == {
        "attention.query_dense.kernel",
        "attention.key_dense.kernel",
        "attention.value_dense.kernel",
        "attention.output_dense.kernel",
        "gating_ffw.kernel",
        "gating_ffw_2.kernel",
        "ffw_linear.kernel",
    }
    np.testing.assert_array_equal(
        got["token_embedding.embeddings"].dequantize(), expected["token_embd.weight"]
    )
    np.testing.assert_array_equal(
        got["transformer_layers.1.ffw_linear.kernel"].dequantize(), expected["blk.1.ffn_down.weight"]
    )


def test_gemma4_blocks_are_refused(tiny_gguf):
    from gemma_keras.architectures.registry import by_name

    path, _ = tiny_gguf("gemma3", "Q8_0")
    with pytest.raises(UnsupportedModelError, match="Gemma 1, 2 and 3 GGUF"):
        next(matmul_weights(path, by_name("gemma4")))


def test_a_short_tensor_names_itself(tmp_path, tiny_gguf):
    from gemma_keras.architectures import GEMMA3

    path, _ = tiny_gguf("gemma3", "Q8_0")
    data = bytearray(path.read_bytes())
    bad = tmp_path / "short.gguf"
    bad.write_bytes(bytes(data[: len(data) - 4096]))
    with pytest.raises(GGUFError):
        list(matmul_weights(bad, GEMMA3))
