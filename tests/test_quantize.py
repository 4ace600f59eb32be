"""Weight-only int8 / int4 and Keras' int8 (activations too), with the decode engine."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gemma_keras as gk
from gemma_keras.generation.keras_runner import KerasRunner
from gemma_keras.quantization import INT4_GROUP_SIZE, QUANTIZE_MODES

KERAS_MODE = {"int8": "int8", "int4": "int4", "int8-activations": "int8"}
# Tiny random models (hidden size 32), measured on JAX, torch and TensorFlow alike
# (2026-11-30): the correlation of the next-token logits with float32's was 0.99988
# (int8), 0.99974 (int8-activations) and 0.968 (int4: 16 levels per weight, and random
# weights with so few inputs per output average little of the error away). The bounds
# leave room for other seeds and BLAS orderings; the real model's test bounds perplexity.
MIN_CORRELATION = {"int8": 0.9995, "int4": 0.9, "int8-activations": 0.999}


@pytest.fixture
def fresh_model(tiny_gguf):
    # quantize() changes the model in place, so never the shared fixture.
    path, _ = tiny_gguf("gemma3", ffn=256)
    return gk.load(path)


def _quantized_layers(lm):
    return [layer for layer in lm.backbone._flatten_layers() if getattr(layer, "quantization_mode", None)]


@pytest.mark.parametrize("mode", QUANTIZE_MODES)
def test_each_mode_generates_close_to_float32(fresh_model, mode):
    lm = fresh_model
    ids = lm.tokenizer.encode("the capital of France is Paris")
    before = lm.logits(ids)
    assert lm.quantize(mode) is lm
    assert lm.info.quantization == mode and lm.info.dtype == "float32"
    assert mode in repr(lm.info)
    after = lm.logits(ids)
    assert not np.allclose(before, after, atol=1e-7)  # the weights really changed
    assert np.corrcoef(before, after)[0, 1] > MIN_CORRELATION[mode]
    text = lm.generate("hello", max_new_tokens=6, stop_token_ids=())
    assert "".join(lm.stream("hello", max_new_tokens=6, stop_token_ids=())) == text
    assert isinstance(lm.runner, KerasRunner)  # quantized layers need the Keras layers


@pytest.mark.parametrize("mode", QUANTIZE_MODES)
def test_every_projection_and_the_embedding_are_quantized(fresh_model, mode):
    lm = fresh_model.quantize(mode)
    kinds = {}
    for layer in lm.backbone._flatten_layers():
        kind = type(layer).__name__
        if kind in ("EinsumDense", "ReversibleEmbedding", "Dense", "Embedding"):
            kinds.setdefault(kind, set()).add(layer.quantization_mode)
            if mode == "int8-activations":
                assert layer.inputs_quantizer is not None, layer.name
            else:  # weight-only: the layer's inputs stay float
                assert layer.inputs_quantizer is None, layer.name
    assert kinds == {"EinsumDense": {KERAS_MODE[mode]}, "ReversibleEmbedding": {KERAS_MODE[mode]}}
    embedding = lm.backbone.token_embedding
    assert embedding.tie_weights  # one table for the lookup and the output projection
    assert not any(
        v.dtype == "float32" and v.shape == (embedding.input_dim, embedding.output_dim)
        for v in embedding.weights
    )  # the float table is gone
    if mode == "int4":
        # Group-wise: the feed-forward output projection reads 256 inputs, so 2 groups of 128.
        ffw = next(layer for layer in _quantized_layers(lm) if layer.name == "ffw_linear")
        groups = math.ceil(256 / INT4_GROUP_SIZE)
        assert ffw._int4_block_size == INT4_GROUP_SIZE
        assert tuple(ffw.kernel_scale.shape) == (groups, lm.backbone.hidden_dim)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_tied_output_projection_uses_the_quantized_table_with_float_inputs(fresh_model, mode):
    """The lookup and the output projection read the same quantized table, and the hidden
    states reach it unquantized: the projection is exactly `h @ table.T` in float."""
    from keras import ops

    lm = fresh_model
    embedding = lm.backbone.token_embedding
    original = np.asarray(ops.convert_to_numpy(embedding.embeddings))
    lm.quantize(mode)
    vocab = np.arange(embedding.input_dim, dtype="int32")
    table = np.asarray(ops.convert_to_numpy(embedding(vocab)), dtype=np.float64)  # the lookup
    assert not np.allclose(table, original, atol=1e-6)  # quantized
    assert np.abs(table - original).max() < 0.2 * np.abs(original).max()  # but close
    if mode == "int4":  # at most 16 levels per group (hidden is under one group here)
        assert embedding.output_dim <= INT4_GROUP_SIZE
        assert max(len(np.unique(np.round(row, 6))) for row in table) <= 16
    hidden = np.random.default_rng(0).normal(size=(3, embedding.output_dim)).astype("float32")
    logits = np.asarray(ops.convert_to_numpy(embedding(ops.convert_to_tensor(hidden), reverse=True)))
    np.testing.assert_allclose(logits, hidden @ table.T, rtol=1e-4, atol=1e-4 * np.abs(logits).max())


def test_the_activation_mode_fails_the_float_inputs_check(fresh_model):
    """The check above can fail: with activations quantized, `h @ table.T` is not exact."""
    from keras import ops

    lm = fresh_model.quantize("int8-activations")
    embedding = lm.backbone.token_embedding
    table = np.asarray(ops.convert_to_numpy(embedding(np.arange(embedding.input_dim, dtype="int32"))))
    hidden = np.random.default_rng(0).normal(size=(3, embedding.output_dim)).astype("float32")
    logits = np.asarray(ops.convert_to_numpy(embedding(ops.convert_to_tensor(hidden), reverse=True)))
    exact = hidden.astype(np.float64) @ table.T.astype(np.float64)
    assert np.abs(logits - exact).max() > 1e-3 * np.abs(exact).max()


def test_load_quantizes_after_loading(tiny_gguf):
    path, _ = tiny_gguf("gemma3", ffn=256)
    lm = gk.load(path, quantize="int4")
    assert lm.info.quantization == "int4"
    assert {layer.quantization_mode for layer in _quantized_layers(lm)} == {"int4"}
    assert gk.load(path).info.quantization is None  # the cache keeps float32


@pytest.mark.parametrize("bad", ["int3", "INT8", "", "keras-int8", 8, None])
def test_bad_modes_name_the_choices(fresh_model, bad):
    with pytest.raises(gk.GenerationArgumentError, match="'int8', 'int4', 'int8-activations'"):
        fresh_model.quantize(bad)
    assert fresh_model.info.quantization is None


def test_load_checks_the_mode_before_loading():
    # The file does not exist: a load would raise ModelNotFoundError.
    with pytest.raises(gk.GenerationArgumentError, match="quantize mode must be one of"):
        gk.load("no/such/model.gguf", quantize="int3")


def test_quantize_collects_garbage_once_not_once_per_layer(fresh_model, monkeypatch):
    """Keras runs gc.collect() for every float kernel it drops; in a big process that made
    quantizing the 270M take minutes. `quantize` lets one collection run, at the end."""
    import gc

    calls = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: calls.append(generation) or 0)
    fresh_model.quantize("int8")
    assert len(calls) == 1
    gc.collect(0)
    assert len(calls) == 2  # and gc.collect is ours again


def test_a_large_table_quantized_in_blocks_of_rows_gives_keras_bytes(monkeypatch):
    """`rows_at_a_time` runs Keras' NumPy quantizer over blocks of rows: the same int8 codes and scales
    as Keras' whole-table pass, with temporaries of one block."""
    from keras import ops
    from keras.quantizers import AbsMaxQuantizer
    from keras.src.quantizers import quantizers

    import gemma_keras.quantization as quantization

    monkeypatch.setattr(quantization, "_QUANTIZE_ROWS", 1000)
    rng = np.random.default_rng(0)
    table = (rng.standard_normal((4500, 48)) * rng.uniform(0.01, 3.0, (4500, 1))).astype("float32")
    table[7] = 0.0  # a row of zeros: the scale's epsilon
    quantizer = AbsMaxQuantizer(axis=-1)
    whole = [ops.convert_to_numpy(a) for a in quantizer(table, to_numpy=True)]
    keras_own, calls = quantizers.abs_max_quantize, []
    with quantization.rows_at_a_time():
        blocked = quantizers.abs_max_quantize
        assert blocked is not keras_own
        quantizers.abs_max_quantize = lambda *a: calls.append(a) or blocked(*a)
        try:
            blocks = [ops.convert_to_numpy(a) for a in quantizer(table, to_numpy=True)]
            small = [ops.convert_to_numpy(a) for a in quantizer(table[:999], to_numpy=True)]
        finally:
            quantizers.abs_max_quantize = blocked
    assert len(calls) == 2, "Keras' quantizer did not go through the module's function"
    assert quantizers.abs_max_quantize is keras_own  # restored on the way out
    for want, got in zip(whole, blocks, strict=True):
        assert want.dtype == got.dtype and want.shape == got.shape
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(small[0], whole[0][:999])


def test_quantizing_twice_is_refused(fresh_model):
    fresh_model.quantize("int8")
    with pytest.raises(gk.UnsupportedModelError, match=r"already quantized \(int8\)"):
        fresh_model.quantize("int4")


@pytest.mark.parametrize("command", ["generate", "chat", "serve"])
def test_cli_quantize_flag_takes_the_modes(command):
    from gemma_keras.cli.commands import UsageError, build_parser

    parser = build_parser()
    extra = ["hello"] if command == "generate" else []
    for mode in QUANTIZE_MODES:
        assert parser.parse_args([command, *extra, "--quantize", mode]).quantize == mode
    assert parser.parse_args([command, *extra]).quantize is None
    with pytest.raises(UsageError, match="'int8', 'int4', 'int8-activations'"):
        parser.parse_args([command, *extra, "--quantize", "int3"])
