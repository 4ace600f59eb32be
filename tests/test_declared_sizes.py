"""Sizes and numbers that files declare are bounded before anything is built.

Values of the right type but an impossible size (a context length of 0, a
window wider than the context, a NaN epsilon, a negative soft cap, a
vocabulary of 10**12 in a preset, an adapter rank its factors do not have)
are refused when the file is read, with an error that names the file and
the key, instead of failing later or never. `tests/test_fuzz_presets.py`
mutates whole directories; these tests name each bound.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import gemma_keras as gk
from gemma_keras.architectures.registry import by_name
from gemma_keras.formats.gguf_reader import read_gguf
from gemma_keras.formats.preset_check import check_model_dir, implied_parameters
from tests.conftest import JAX_SESSION_ONLY

# Reading files involves no Keras backend.
pytestmark = JAX_SESSION_ONLY

NAN, INF = float("nan"), float("inf")


def _patched(path: Path, key: str, value, out: Path) -> Path:
    """A copy of a GGUF file with one scalar metadata value overwritten in place (same type)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    field = reader.fields[key]
    part = field.parts[field.data[0]]
    offset = part.__array_interface__["data"][0] - reader.data.__array_interface__["data"][0]
    raw = bytearray(path.read_bytes())
    packed = np.array([value], dtype=part.dtype).tobytes()
    raw[offset : offset + len(packed)] = packed
    out.write_bytes(bytes(raw))
    return out


@pytest.mark.parametrize(
    "arch, key, value",
    [
        ("gemma3", "context_length", 0),
        ("gemma3", "context_length", 8),
        ("gemma3", "context_length", 2**32 - 1),
        ("gemma", "context_length", 2**24 + 1),
        ("gemma3", "attention.sliding_window", 0),
        ("gemma3", "attention.sliding_window", 4096),  # wider than the 512-token context
        ("gemma2", "attention.sliding_window", 2**31),
        ("gemma3", "attention.layer_norm_rms_epsilon", NAN),
        ("gemma3", "attention.layer_norm_rms_epsilon", INF),
        ("gemma", "attention.layer_norm_rms_epsilon", 0.0),
        ("gemma", "attention.layer_norm_rms_epsilon", -1e-6),
        ("gemma2", "attention.layer_norm_rms_epsilon", 1.5),
        ("gemma2", "attn_logit_softcapping", NAN),
        ("gemma2", "attn_logit_softcapping", -50.0),
        ("gemma2", "final_logit_softcapping", INF),
        ("gemma2", "final_logit_softcapping", -30.0),
        ("gemma3", "rope.scaling.factor", NAN),
        ("gemma3", "rope.scaling.factor", INF),
        ("gemma3", "rope.scaling.factor", -8.0),
        ("gemma3", "rope.scaling.factor", 1e9),
        ("gemma3", "block_count", 2**31),
        ("gemma3", "attention.head_count", 0),
        ("gemma2", "attention.key_length", 2**20),
        ("gemma", "feed_forward_length", 2**30),
    ],
)
def test_impossible_gguf_metadata_is_refused_naming_the_key(tiny_gguf, tmp_path, arch, key, value):
    source, _ = tiny_gguf(arch, rope_scaling=8.0) if key.startswith("rope.scaling") else tiny_gguf(arch)
    bad = _patched(source, f"{arch}.{key}", value, tmp_path / "bad.gguf")
    with pytest.raises(gk.GGUFError) as info:
        read_gguf(bad)
    assert str(bad) in str(info.value) and f"{arch}.{key}" in str(info.value)


def test_a_nan_rope_base_is_refused(tiny_gguf, tmp_path):
    source, _ = tiny_gguf("gemma3")
    bad = _patched(source, "gemma3.rope.freq_base", NAN, tmp_path / "bad.gguf")
    with pytest.raises(gk.UnsupportedModelError, match="rope.freq_base"):
        read_gguf(bad)


def test_sane_gguf_metadata_still_reads(tiny_gguf, tmp_path):
    source, _ = tiny_gguf("gemma3", rope_scaling=8.0)
    model = read_gguf(_patched(source, "gemma3.context_length", 16, tmp_path / "ok.gguf"))
    assert model.context_length == 16 and model.backbone_config["global_rope_scaling_factor"] == 8.0


# --- preset and checkpoint directories --------------------------------------------------------
@pytest.fixture(scope="module")
def directories(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("declared")
    made = {}
    for arch in ("gemma", "gemma2", "gemma3"):
        lm = tiny_model(arch)
        made[f"{arch}-keras"] = lm.save(root / f"{arch}-keras")
        made[f"{arch}-hf"] = lm.export(root / f"{arch}-hf", format="safetensors")
    return made


def _copy(directories, name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(directories[name], dest)
    return dest


def _edit(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "name", ["gemma-keras", "gemma2-keras", "gemma3-keras", "gemma-hf", "gemma2-hf", "gemma3-hf"]
)
def test_written_presets_and_checkpoints_pass(directories, name):
    arch = check_model_dir(directories[name])
    assert arch.name == name.split("-")[0]


def test_the_parameter_count_matches_what_keras_hub_records(directories):
    for arch in ("gemma", "gemma2", "gemma3"):
        path = directories[f"{arch}-keras"]
        config = json.loads((path / "config.json").read_text())["config"]
        metadata = json.loads((path / "metadata.json").read_text())
        assert implied_parameters(by_name(arch), config) == metadata["parameter_count"]


def test_a_vocabulary_of_10_12_in_task_json_is_refused_before_keras_hub_builds(
    directories, tmp_path, monkeypatch
):
    """The report's case: on JAX, XLA aborted the process (exit 134) while building this."""
    from gemma_keras.sources import resolve

    preset = _copy(directories, "gemma3-keras", tmp_path)
    _edit(preset / "task.json", lambda t: t["config"]["backbone"]["config"].update(vocabulary_size=10**12))

    def never(*args, **kwargs):
        raise AssertionError("KerasHub was asked to build the preset")

    monkeypatch.setattr(resolve, "_from_preset", never)
    with pytest.raises(
        gk.SourceError, match=r"task.json: vocabulary_size = 1000000000000 is not a valid size"
    ):
        gk.load(preset)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_layers", 0, "num_layers = 0 is not a valid size"),
        ("head_dim", 2**63, "head_dim = 9223372036854775808 is not a valid size"),
        ("hidden_dim", "32", "hidden_dim = '32' is not a valid size"),
        ("num_key_value_heads", 3, "does not divide"),
        ("sliding_window_size", 2**20, "larger than the context length"),
        ("layer_norm_epsilon", NAN, "layer_norm_epsilon = nan is not valid"),
        ("final_logit_soft_cap", -1.0, "final_logit_soft_cap = -1.0 is not valid"),
        ("global_rope_scaling_factor", 0.0, "global_rope_scaling_factor = 0.0 is not valid"),
        ("use_sliding_window_attention", "yes", "is not true or false"),
    ],
)
def test_impossible_preset_sizes_are_refused_naming_file_and_field(
    directories, tmp_path, field, value, message
):
    preset = _copy(directories, "gemma3-keras", tmp_path)
    keys = {"config.json": ("config",), "task.json": ("config", "backbone", "config")}
    # The same value in both files: the bound itself must catch it, not the comparison.
    for name, at in keys.items():
        _edit(preset / name, lambda d, at=at: _dig(d, at).update({field: value}))
    with pytest.raises(gk.SourceError) as info:
        check_model_dir(preset)
    assert str(preset) in str(info.value) and message in str(info.value)


def _dig(data, keys):
    for key in keys:
        data = data[key]
    return data


def test_config_and_task_must_agree(directories, tmp_path):
    preset = _copy(directories, "gemma2-keras", tmp_path)
    _edit(preset / "task.json", lambda t: t["config"]["backbone"]["config"].update(hidden_dim=64))
    with pytest.raises(
        gk.SourceError, match="config.json and .*task.json disagree on hidden_dim: 32 against 64"
    ):
        check_model_dir(preset)


def test_sizes_that_the_weights_file_cannot_hold_are_refused(directories, tmp_path):
    preset = _copy(directories, "gemma-keras", tmp_path)
    for name, at in (("config.json", ("config",)), ("task.json", ("config", "backbone", "config"))):
        _edit(preset / name, lambda d, at=at: _dig(d, at).update(vocabulary_size=2**22, hidden_dim=2**12))
    with pytest.raises(
        gk.SourceError,
        match=r"config.json: declares [\d,]+ parameters .*model.weights.h5 holds 208,336 bytes",
    ):
        check_model_dir(preset)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(parameter_count=10**12), "metadata.json: declares 1,000,000,000,000 parameters"),
        (lambda m: m.update(parameter_count=-1), "parameter_count = -1 is not a valid size"),
    ],
)
def test_metadata_parameter_count_is_bounded(directories, tmp_path, edit, message):
    preset = _copy(directories, "gemma3-keras", tmp_path)
    _edit(preset / "metadata.json", edit)
    with pytest.raises(gk.SourceError, match=message):
        check_model_dir(preset)


@pytest.mark.parametrize("value", [0, 8, 10**12, "512"])
def test_manifest_context_length_is_bounded(directories, tmp_path, value):
    preset = _copy(directories, "gemma3-keras", tmp_path)
    _edit(preset / "gemma_keras.json", lambda m: m.update(context_length=value))
    with pytest.raises(gk.SourceError, match="gemma_keras.json: context_length = .* is not a valid size"):
        check_model_dir(preset)


def test_a_truncated_weights_file_is_named(directories, tmp_path):
    preset = _copy(directories, "gemma3-keras", tmp_path)
    weights = preset / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:-1])
    with pytest.raises(gk.SourceError, match=r"model.weights.h5 is truncated"):
        check_model_dir(preset)


@pytest.mark.parametrize(
    "key, value, error, message",
    [
        ("vocab_size", 10**12, gk.SourceError, "vocab_size = 1000000000000 is not a valid size"),
        ("intermediate_size", 0, gk.SourceError, "intermediate_size = 0 is not a valid size"),
        ("max_position_embeddings", 2**40, gk.SourceError, "max_position_embeddings = 1099511627776"),
        ("sliding_window", 10**6, gk.SourceError, "larger than the context length 512"),
        ("rms_norm_eps", -1.0, gk.SourceError, "rms_norm_eps = -1.0 is not valid"),
        ("eos_token_id", [1, 10**9], gk.SourceError, "eos_token_id = 1000000000 is not a valid size"),
        ("rope_theta", 500.0, gk.UnsupportedModelError, "rope_theta is 500"),
        ("query_pre_attn_scalar", 100, gk.UnsupportedModelError, "query_pre_attn_scalar is 100"),
        (
            "model_type",
            "llama",
            gk.UnsupportedModelError,
            "model_type 'llama' is not a model gemma_keras loads",
        ),
    ],
)
def test_impossible_checkpoint_config_is_refused(directories, tmp_path, key, value, error, message):
    checkpoint = _copy(directories, "gemma3-hf", tmp_path)
    _edit(checkpoint / "config.json", lambda c: c.update({key: value}))
    with pytest.raises(error) as info:
        check_model_dir(checkpoint)
    assert str(checkpoint) in str(info.value) and message in str(info.value)


@pytest.mark.parametrize(
    "forge, message",
    [
        (
            lambda raw, n: (2**63).to_bytes(8, "little") + raw[8:],
            "header length is 9,223,372,036,854,775,808",
        ),
        (lambda raw, n: raw + b"\0", "the tensors cover"),
        (lambda raw, n: raw[: 8 + n + 10], "outside the"),
    ],
)
def test_safetensors_headers_are_checked_against_the_file(directories, tmp_path, forge, message):
    checkpoint = _copy(directories, "gemma3-hf", tmp_path)
    weights = checkpoint / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(forge(raw, int.from_bytes(raw[:8], "little")))
    with pytest.raises(gk.SourceError, match=message):
        check_model_dir(checkpoint)


# transformers' config.json of real models: the bounds must leave them alone.
REAL_CONFIGS = {
    "gemma-2b": dict(
        model_type="gemma", vocab_size=256000, hidden_size=2048, intermediate_size=16384,
        num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1, head_dim=256,
        max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0, rope_scaling=None,
        bos_token_id=2, eos_token_id=1, pad_token_id=0,
    ),
    "gemma-2-27b": dict(
        model_type="gemma2", vocab_size=256000, hidden_size=4608, intermediate_size=36864,
        num_hidden_layers=46, num_attention_heads=32, num_key_value_heads=16, head_dim=128,
        query_pre_attn_scalar=144, max_position_embeddings=8192, sliding_window=4096,
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0, rms_norm_eps=1e-6, rope_theta=10000.0,
        eos_token_id=[1, 107],
    ),
    "gemma-3-1b-it": dict(
        model_type="gemma3_text", vocab_size=262144, hidden_size=1152, intermediate_size=6912,
        num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
        query_pre_attn_scalar=256, max_position_embeddings=32768, sliding_window=512,
        attn_logit_softcapping=None, final_logit_softcapping=None, rms_norm_eps=1e-6,
        rope_theta=1000000, rope_scaling=None, eos_token_id=[1, 106],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REAL_CONFIGS))
def test_real_model_configs_pass_every_config_check(tmp_path, name):
    (tmp_path / "config.json").write_text(json.dumps(REAL_CONFIGS[name]))
    # The config passes; only the (absent) weights stop the check.
    with pytest.raises(gk.SourceError, match="holds no weights"):
        check_model_dir(tmp_path)


def test_an_adapter_file_declaring_a_rank_its_factors_lack_is_refused(tiny_model, tmp_path):
    """The rank in an adapter file's header is allocated before the factors are read: bound it by them."""
    from gemma_keras.training import lora

    lm = tiny_model("gemma3")
    header = {
        "format": lora.FORMAT,
        "kind": "adapters",
        "rank": 10**12,
        "alpha": 1.0,
        "targets": ["query", "value"],
        "model": lora.model_signature(lm.backbone),
    }
    path = tmp_path / "forged.npz"
    lora.write_npz(path, {"x/a": np.zeros((4, 2), np.float32)}, header)
    with pytest.raises(gk.FinetuneError, match="declares rank 1000000000000, but its factors have rank"):
        lm.load_adapters(path)
    assert lora.lora_settings(lm.backbone) is None  # nothing was enabled
