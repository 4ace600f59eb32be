"""Each weight is laid out on the mesh as the layout rules say, for any number of KV heads."""

from __future__ import annotations

import numpy as np
import pytest

import gemma_keras as gk
from gemma_keras.distribution import axes_for, layout_map
from tests.conftest import ARCHITECTURES

pytestmark = pytest.mark.distributed


def _spec(variable) -> tuple:
    spec = tuple(variable.value.sharding.spec)
    return spec + (None,) * (len(variable.shape) - len(spec))


@pytest.mark.parametrize("kv_heads", [1, 4])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_weights_are_sharded_as_the_rules_say(tiny_gguf, arch, kv_heads):
    path, _ = tiny_gguf(arch, kv_heads=kv_heads)
    dist = gk.distribute(data_parallel=2, model_parallel=4)
    lm = gk.load(path)
    weights = {v.path: v for v in lm.backbone.weights}
    for name, v in weights.items():
        expected = axes_for(name, v.shape, 4)
        assert _spec(v) == expected, name
        shard = v.value.addressable_shards[0].data.shape
        want = tuple(d // 4 if a == "model" else d for d, a in zip(v.shape, expected, strict=True))
        assert shard == want, name
        assert len(v.value.sharding.device_set) == 8, name

    # The tiny sizes are chosen so each fallback happens: the vocabulary
    # (457) does not divide by 4, so the embedding splits its width; one KV
    # head stays whole; four KV heads split.
    kv = "model" if kv_heads == 4 else None
    assert _spec(weights["token_embedding/embeddings"]) == (None, "model")
    assert _spec(weights["decoder_block_1/attention/query/kernel"]) == ("model", None, None)
    assert _spec(weights["decoder_block_1/attention/key/kernel"]) == (kv, None, None)
    assert _spec(weights["decoder_block_1/attention/value/kernel"]) == (kv, None, None)
    assert _spec(weights["decoder_block_1/attention/attention_output/kernel"]) == ("model", None, None)
    assert _spec(weights["decoder_block_1/ffw_gating/kernel"]) == (None, "model")
    assert _spec(weights["decoder_block_1/ffw_linear/kernel"]) == ("model", None)
    assert _spec(weights["final_normalization/scale"]) == (None,)

    # layout_map, from the config alone, gives every variable the layout it got.
    for source in (lm.backbone.get_config(), lm.backbone):
        explicit = layout_map(source, dist.device_mesh)
        for name, v in weights.items():
            layout = explicit[name]
            axes = tuple(layout.axes) if layout is not None else (None,) * len(v.shape)
            assert axes == _spec(v), name


def test_data_parallel_replicates_every_weight(tiny_gguf):
    path, _ = tiny_gguf("gemma3", kv_heads=1)
    gk.distribute(data_parallel=8)
    lm = gk.load(path)
    for v in lm.backbone.weights:
        assert _spec(v) == (None,) * len(v.shape), v.path
        assert len(v.value.sharding.device_set) == 8, v.path


def test_kerashub_layout_map_cannot_place_one_kv_head(tiny_model):
    """Why gemma_keras has its own rules: KerasHub's map splits even a single KV head."""
    import jax
    import keras
    import keras_hub

    mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"), keras.distribution.list_devices())
    key = "decoder_block_0/attention/key/kernel"
    theirs = keras_hub.models.GemmaBackbone.get_layout_map(mesh)[key]
    one_head = np.zeros((1, 32, 8), np.float32)
    with pytest.raises(ValueError, match="evenly divide"):
        jax.device_put(one_head, theirs.backend_layout)
    ours = layout_map(tiny_model("gemma", kv_heads=1), mesh)[key]
    placed = jax.device_put(one_head, ours.backend_layout)
    assert placed.sharding.is_fully_replicated


def test_distribute_after_load_leaves_that_model_on_one_device(tiny_gguf):
    path, _ = tiny_gguf("gemma", kv_heads=1)
    lm = gk.load(path)
    gk.distribute(data_parallel=2, model_parallel=4)
    before = lm.generate("hello", max_new_tokens=4, stop_token_ids=())
    assert len(lm.backbone.weights[0].value.sharding.device_set) == 1
    assert isinstance(before, str)
    np.testing.assert_equal(gk.distribution.current().device_mesh.shape, (2, 4))


def test_gemma4_layers_of_every_shape_are_sharded_and_generate_as_unsharded(tiny_gguf):
    """Gemma 4's wider global heads, fewer global KV heads, KV-shared layers, per-layer inputs and experts."""
    import keras_hub

    from gemma_keras.formats.gguf_reader import read_gguf
    from gemma_keras.formats.model_info import ModelInfo
    from gemma_keras.formats.sentencepiece import GemmaTokenizer

    path, _ = tiny_gguf("gemma3")
    tokenizer = GemmaTokenizer(read_gguf(path).tokenizer_proto())
    config = dict(
        vocabulary_size=tokenizer.vocabulary_size,
        image_size=None,
        num_layers=6,
        num_query_heads=4,
        num_key_value_heads=4,
        hidden_dim=32,
        intermediate_dim=64,
        head_dim=8,
        global_head_dim=16,
        num_global_key_value_heads=1,
        sliding_window_size=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
        num_kv_shared_layers=2,
        hidden_size_per_layer_input=4,
        enable_moe_block=True,
        num_experts=4,
        expert_intermediate_dim=6,  # the axis (4) does not divide it: experts are split whole
        num_experts_per_token=2,
        global_rope_partial_rotary_factor=0.25,
        dtype="float32",
    )

    def build():
        backbone = keras_hub.models.Gemma4Backbone(**config)
        causal_lm = keras_hub.models.Gemma4CausalLM(backbone=backbone, preprocessor=None)
        info = ModelInfo(
            architecture="gemma4", source="random", context_length=512, dtype="float32", backend="jax"
        )
        return gk.Gemma(causal_lm, tokenizer, info)

    dist = gk.distribute(data_parallel=2, model_parallel=4)
    lm = build()
    weights = {v.path: v for v in lm.backbone.weights}
    for name, v in weights.items():
        assert _spec(v) == axes_for(name, v.shape, 4), name
    assert _spec(weights["decoder_block_0/attention/key/kernel"]) == ("model", None, None)  # 4 KV heads
    assert _spec(weights["decoder_block_2/attention/key/kernel"]) == (None, None, None)  # 1 global KV head
    assert _spec(weights["decoder_block_0/moe_expert_bank/gate_proj"]) == ("model", None, None)
    assert _spec(weights["decoder_block_0/moe_expert_bank/down_proj"]) == ("model", None, None)
    assert _spec(weights["per_layer_model_projection/kernel"]) == (None, "model")
    explicit = layout_map(lm, dist.device_mesh)
    for name, v in weights.items():
        layout = explicit[name]
        assert (tuple(layout.axes) if layout is not None else (None,) * len(v.shape)) == _spec(v), name

    values = {name: np.asarray(v.value) for name, v in weights.items()}
    sharded = lm.generate("hello world", max_new_tokens=8, stop_token_ids=())
    gk.distribute(None)
    plain = build()
    for v in plain.backbone.weights:
        v.assign(values[v.path])
    assert plain.generate("hello world", max_new_tokens=8, stop_token_ids=()) == sharded


def test_gemma3n_is_sharded_and_generates_as_unsharded():
    """Gemma 3n's Dense projections, AltUp and per-layer tables (the GGUF llama.cpp's converter wrote)."""
    from pathlib import Path

    path = Path(__file__).parents[1] / "data" / "converted" / "gemma3n.gguf"
    gk.distribute(data_parallel=2, model_parallel=4)
    lm = gk.load(path)
    weights = {v.path: v for v in lm.backbone.weights}
    for name, v in weights.items():
        assert _spec(v) == axes_for(name, v.shape, 4), name
    block = "text_model/decoder_block_0/"
    assert _spec(weights[block + "attention/q_proj/kernel"]) == (None, "model")
    assert _spec(weights[block + "attention/o_proj/kernel"]) == ("model", None)
    assert _spec(weights[block + "mlp/down_proj/kernel"]) == ("model", None)
    # 461 rows: the model axis does not divide the vocabulary, so the tables split by width
    assert _spec(weights["text_model/embed_tokens/embedding/embeddings"]) == (None, "model")
    assert _spec(weights["text_model/embed_tokens_per_layer/embedding/embeddings"]) == (None, "model")
    sharded = lm.generate("hello world", max_new_tokens=8, stop_token_ids=())
    gk.distribute(None)
    assert gk.load(path).generate("hello world", max_new_tokens=8, stop_token_ids=()) == sharded
