"""Bad input gets a clear error that names it, and leaves nothing in the cache."""

from __future__ import annotations

import time

import pytest

import gemma_keras as gk
from tests.conftest import cache_files


def _no_cache_entries(cache_root):
    entries = [p for p in cache_files(cache_root) if not p.name.endswith(".lock")]
    assert entries == [], entries


@pytest.mark.parametrize("keep", [8, 24, 200, 0.5, 0.97])
def test_truncated_gguf(tiny_gguf, tmp_path, isolated_cache, keep):
    path, _ = tiny_gguf("gemma3")
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(data[:cut])
    with pytest.raises(gk.GGUFError) as info:
        gk.load(bad)
    assert str(bad) in str(info.value)
    assert "truncated" in str(info.value) or "corrupt" in str(info.value)
    _no_cache_entries(isolated_cache)


def test_not_a_gguf_file(tmp_path, isolated_cache):
    bad = tmp_path / "model.gguf"
    bad.write_text("this is a text file, not a model")
    with pytest.raises(gk.GGUFError, match="is not a GGUF file"):
        gk.load(bad)
    _no_cache_entries(isolated_cache)


def test_non_gemma_architecture(tmp_path, isolated_cache):
    import gguf
    import numpy as np

    path = tmp_path / "llama.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(gk.UnsupportedModelError, match="holds a 'llama' model.*gemma, gemma2, gemma3"):
        gk.load(path)
    _no_cache_entries(isolated_cache)


def test_missing_file(tmp_path):
    with pytest.raises(gk.ModelNotFoundError, match="no such file"):
        gk.load(tmp_path / "missing.gguf")


def test_directory_without_config(tmp_path):
    with pytest.raises(gk.ModelNotFoundError, match="no config.json"):
        gk.load(tmp_path)


def test_unknown_preset_name_suggests_close_ones():
    with pytest.raises(gk.ModelNotFoundError, match="not a file, a directory or a known Gemma preset"):
        gk.load("gemma3_instruct_1bb")
    with pytest.raises(gk.ModelNotFoundError, match="Did you mean 'gemma3_instruct_1b'"):
        gk.load("gemma3_instruct_1bb")


@pytest.mark.parametrize(
    "source, hub",
    [
        ("hf://google/gemma-3-1b-it", "Hugging Face"),
        ("kaggle://keras/gemma3/keras/gemma3_1b", "Kaggle"),
        ("gemma3_instruct_1b", "Kaggle"),
    ],
)
def test_hub_without_network_fails_at_once(source, hub, isolated_cache):
    start = time.monotonic()
    with pytest.raises(gk.HubUnavailableError, match=f"from {hub}.*local path"):
        gk.load(source)
    assert time.monotonic() - start < 5
    _no_cache_entries(isolated_cache)


def test_unreachable_hub_is_reported_without_hanging(monkeypatch):
    from gemma_keras.sources import hub as sources

    monkeypatch.delenv("GEMMA_KERAS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(sources.socket, "create_connection", refuse)
    with pytest.raises(gk.HubUnavailableError, match="huggingface.co cannot be reached"):
        gk.load("hf://google/gemma-3-1b-it")


def test_kaggle_without_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("GEMMA_KERAS_OFFLINE")
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    with pytest.raises(gk.HubUnavailableError, match="no Kaggle credentials"):
        gk.load("kaggle://keras/gemma3/keras/gemma3_1b")


@pytest.mark.parametrize("source", [123, 4.5, ["a.gguf"], ""])
def test_source_of_wrong_type(source):
    with pytest.raises(gk.SourceError):
        gk.load(source)


@pytest.mark.parametrize("prompt", ["", [""], ["ok", ""], [], [-1], [1.5], ["ok", 2.0], 5, None])
def test_empty_or_wrong_prompt(tiny_model, prompt):
    lm = tiny_model("gemma3")
    with pytest.raises(gk.GenerationArgumentError, match="prompt"):
        lm.generate(prompt, max_new_tokens=2)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"seed": -1}, "seed"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": -3}, "max_new_tokens"),
        ({"max_new_tokens": 1.5}, "max_new_tokens"),
        ({"max_new_tokens": 10**9}, "context"),
        ({"stop_token_ids": [10**9]}, "stop_token_ids"),
        ({"stop_token_ids": "eos"}, "stop_token_ids"),
    ],
)
def test_bad_generation_arguments(tiny_model, kwargs, name):
    lm = tiny_model("gemma3")
    with pytest.raises(gk.GenerationArgumentError, match=name):
        lm.generate("hello", **kwargs)


def test_preset_smuggling_a_lambda_is_refused(tiny_gguf, tmp_path, isolated_cache):
    """A preset whose config carries code is refused before any code runs."""
    import json

    path, _ = tiny_gguf("gemma3")
    preset = tmp_path / "evil_preset"
    gk.load(path).save(preset)
    marker = tmp_path / "pwned"
    code = f"lambda x: __import__('pathlib').Path({str(marker)!r}).write_text('x') or x"
    evil_layer = {
        "module": "keras.layers",
        "class_name": "Lambda",
        "registered_name": None,
        "config": {"name": "evil", "function": {"class_name": "__lambda__", "config": {"code": code}}},
    }
    # Gemma3Backbone deserializes its `vision_encoder` argument as a layer:
    # the place a tampered preset would hide code.
    config = json.loads((preset / "config.json").read_text())
    config["config"]["vision_encoder"] = evil_layer
    (preset / "config.json").write_text(json.dumps(config))
    task = json.loads((preset / "task.json").read_text())
    task["config"]["backbone"]["config"]["vision_encoder"] = evil_layer
    (preset / "task.json").write_text(json.dumps(task))
    with pytest.raises(gk.SourceError, match="Refused to load.*safe_mode"):
        gk.load(preset)
    assert not marker.exists()
