"""Layout rules, layout maps and distribute()'s errors: no devices needed, every backend.

Sharding itself is tested in tests/distributed (nox -s tests_distributed).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gemma_keras as gk
from gemma_keras.distribution import MODEL, axes_for, layout_map
from tests.conftest import BACKEND

KEY = "decoder_block_3/attention/key/kernel"


@pytest.mark.parametrize(
    ("kv_heads", "model_size", "expected"),
    [
        (1, 4, (None, None, None)),  # multi-query: the one KV head stays whole
        (2, 4, (None, None, None)),  # 4 does not divide 2
        (4, 4, (MODEL, None, None)),
        (8, 4, (MODEL, None, None)),
        (8, 1, (None, None, None)),  # no model axis to split over
    ],
)
def test_kv_heads_split_only_when_the_model_axis_divides_them(kv_heads, model_size, expected):
    assert axes_for(KEY, (kv_heads, 2048, 256), model_size) == expected


def test_embedding_falls_back_to_its_width_then_to_replication():
    assert axes_for("token_embedding/embeddings", (256000, 2048), 8) == (MODEL, None)
    assert axes_for("token_embedding/embeddings", (457, 32), 4) == (None, MODEL)
    assert axes_for("token_embedding/embeddings", (457, 30), 4) == (None, None)


def test_paths_inside_a_model_and_unknown_paths():
    assert axes_for("gemma_causal_lm/gemma_backbone/" + KEY, (8, 64, 8), 2) == (MODEL, None, None)
    assert axes_for("decoder_block_0/ffw_linear/kernel", (64, 32), 8) == (MODEL, None)
    assert axes_for("decoder_block_0/ffw_gating_2/kernel", (32, 64), 8) == (None, MODEL)
    # Norms, LoRA factors and anything unknown: replicated.
    assert axes_for("decoder_block_0/pre_ffw_norm/scale", (32,), 8) == (None,)
    assert axes_for("decoder_block_0/attention/query/lora_kernel_a", (8, 32, 4), 8) == (None,) * 3
    assert axes_for("decoder_block_0/attention/key/kernel/output", (8, 32, 4), 8) == (None,) * 3


def _mesh(model_size: int):
    import keras

    devices = [f"cpu:{i}" for i in range(2 * model_size)]
    return keras.distribution.DeviceMesh((2, model_size), ("batch", MODEL), devices)


def _config(gemma3: bool, vocab: int, heads: int, kv: int, hidden: int, head_dim: int, ffn: int) -> dict:
    config = {
        "vocabulary_size": vocab,
        "num_layers": 2,
        "num_query_heads": heads,
        "num_key_value_heads": kv,
        "hidden_dim": hidden,
        "head_dim": head_dim,
        "intermediate_dim": ffn if gemma3 else 2 * ffn,
    }
    if gemma3:
        config["global_rope_scaling_factor"] = 1.0
    return config


@settings(max_examples=60, deadline=None)
@given(
    gemma3=st.booleans(),
    vocab=st.integers(1, 300),
    kv=st.integers(1, 8),
    groups=st.integers(1, 4),
    hidden=st.integers(1, 64),
    head_dim=st.integers(1, 16),
    ffn=st.integers(1, 96),
    model_size=st.sampled_from([1, 2, 3, 4, 8]),
)
def test_layout_map_shards_only_divisible_dims(gemma3, vocab, kv, groups, hidden, head_dim, ffn, model_size):
    config = _config(gemma3, vocab, kv * groups, kv, hidden, head_dim, ffn)
    shapes = gk.distribution.variable_shapes(config)
    found = layout_map(config, _mesh(model_size))
    for path, shape in shapes.items():
        layout = found[path]
        axes = tuple(layout.axes) if layout is not None else (None,) * len(shape)
        for axis, dim in zip(axes, shape, strict=True):
            assert axis is None or dim % model_size == 0, (path, shape, axes)
    # Query heads and their output projection are split alike, and so are the feed-forward pair.
    q = found["decoder_block_1/attention/query/kernel"].axes[0]
    assert found["decoder_block_1/attention/attention_output/kernel"].axes[0] == q
    assert (
        found["decoder_block_1/ffw_gating/kernel"].axes[1]
        == found["decoder_block_1/ffw_linear/kernel"].axes[0]
    )
    assert (q == MODEL) == (model_size > 1 and (kv * groups) % model_size == 0)


def test_layout_map_reads_the_gemma3_feed_forward_width():
    # Gemma 1/2 blocks use intermediate_dim // 2, Gemma 3 blocks all of it.
    gemma2 = gk.distribution.variable_shapes(_config(False, 256, 4, 1, 32, 8, 48))
    gemma3 = gk.distribution.variable_shapes(_config(True, 256, 4, 1, 32, 8, 48))
    assert (
        gemma2["decoder_block_0/ffw_gating/kernel"] == gemma3["decoder_block_0/ffw_gating/kernel"] == (32, 48)
    )


def test_layout_map_errors_name_the_problem():
    with pytest.raises(gk.DistributionError, match="lacks intermediate_dim"):
        layout_map({"vocabulary_size": 8, "num_query_heads": 1, "num_key_value_heads": 1,
                    "hidden_dim": 8, "head_dim": 8}, _mesh(2))  # fmt: skip
    with pytest.raises(gk.DistributionError, match="got int"):
        layout_map(3, _mesh(2))
    import keras

    flat = keras.distribution.DeviceMesh((2,), ("data",), ["cpu:0", "cpu:1"])
    with pytest.raises(gk.DistributionError, match="axis named 'model'"):
        layout_map(_config(False, 8, 1, 1, 8, 8, 8), flat)


@pytest.mark.skipif(BACKEND == "jax", reason="the refusal is for TensorFlow and torch")
def test_distribute_names_jax_on_other_backends():
    with pytest.raises(gk.BackendError, match=r"needs the JAX backend.*KERAS_BACKEND=jax"):
        gk.distribute(model_parallel=2)
    assert gk.distribute(None) is None  # turning off never fails


@pytest.mark.skipif(BACKEND != "jax", reason="distribute() runs on JAX only")
def test_distribute_checks_its_sizes():
    import keras

    n = keras.distribution.get_device_count()
    try:
        with pytest.raises(gk.DistributionError, match=r"model_parallel=.* does not divide"):
            gk.distribute(model_parallel=n + 1)
        with pytest.raises(gk.DistributionError, match=r"data_parallel=2 x model_parallel=1 = 2 devices"):
            gk.distribute(data_parallel=2, devices=keras.distribution.list_devices()[:1])
        for bad in (0, -1, 1.5, True):
            with pytest.raises(gk.DistributionError, match="model_parallel must be a positive integer"):
                gk.distribute(model_parallel=bad)
        dist = gk.distribute(data_parallel=n)
        assert isinstance(dist, keras.distribution.DataParallel)
        assert gk.distribution.current() is dist is keras.distribution.distribution()
    finally:
        gk.distribute(None)
    assert gk.distribution.current() is None


def test_distribution_module_does_not_import_keras():
    env = {k: v for k, v in os.environ.items() if k != "KERAS_HOME"}
    code = (
        "import sys, gemma_keras as gk\n"
        "gk.distribution.axes_for('token_embedding/embeddings', (8, 8), 2)\n"
        "assert gk.distribution.current() is None\n"
        "gk.distribute(None)\n"
        "print('keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]
