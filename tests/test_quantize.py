"""int8 weight quantization through Keras, with the decode engine."""

from __future__ import annotations

import numpy as np
import pytest

import gemma_keras as gk
from gemma_keras.generation.keras_runner import KerasRunner


@pytest.fixture
def fresh_model(tiny_gguf):
    # quantize() changes the model in place, so never the shared fixture.
    path, _ = tiny_gguf("gemma3", ffn=256)
    return gk.load(path)


def test_int8_model_generates_close_to_float32(fresh_model):
    lm = fresh_model
    ids = lm.tokenizer.encode("the capital of France is Paris")
    before = lm.logits(ids)
    assert lm.quantize("int8") is lm
    assert lm.info.quantization == "int8" and lm.info.dtype == "float32"
    modes = {getattr(layer, "quantization_mode", None) for layer in lm.backbone._flatten_layers()}
    assert "int8" in modes
    after = lm.logits(ids)
    assert not np.allclose(before, after, atol=1e-7)  # the weights really changed
    assert np.corrcoef(before, after)[0, 1] > 0.99
    text = lm.generate("hello", max_new_tokens=6, stop_token_ids=())
    assert "".join(lm.stream("hello", max_new_tokens=6, stop_token_ids=())) == text
    assert isinstance(lm.runner, KerasRunner)  # quantized layers need the Keras layers


def test_bad_quantize_calls(fresh_model):
    with pytest.raises(gk.GenerationArgumentError, match="'int8'"):
        fresh_model.quantize("int4")
    fresh_model.quantize("int8")
    with pytest.raises(gk.UnsupportedModelError, match="already quantized"):
        fresh_model.quantize("int8")
