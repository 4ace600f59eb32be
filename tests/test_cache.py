"""The conversion cache: built once, reused, never left half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gemma_keras as gk
from gemma_keras.sources import cache
from gemma_keras.sources import resolve as sources
from tests.conftest import cache_files


def _count_conversions(monkeypatch) -> list:
    calls = []
    real = sources.convert_gguf

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(sources, "convert_gguf", counting)
    return calls


def test_first_load_converts_and_second_reuses(tiny_gguf, isolated_cache, monkeypatch):
    path, _ = tiny_gguf("gemma3", "Q8_0")
    calls = _count_conversions(monkeypatch)
    first = gk.load(path)
    sha = cache.file_sha256(path)
    entry = isolated_cache / "gguf" / sha
    manifest = cache.read_manifest(entry)
    assert manifest is not None and manifest["source_sha256"] == sha
    assert manifest["architecture"] == "gemma3"
    assert (entry / "config.json").is_file()
    # The weights stay in the GGUF: the entry holds the config and the tokenizer only.
    assert not list(entry.glob("*.weights.*")) and set(manifest["files"]) >= {"config.json", "task.json"}
    second = gk.load(path)
    assert len(calls) == 1
    ids = first.tokenizer.encode("hello world")
    import numpy as np

    np.testing.assert_allclose(first.logits(ids), second.logits(ids), atol=1e-6)
    # Nothing temporary is left next to the entry.
    assert not [p for p in (isolated_cache / "gguf").iterdir() if p.name.endswith(".tmp")]


def test_failed_conversion_leaves_nothing(tiny_gguf, isolated_cache, monkeypatch):
    path, _ = tiny_gguf("gemma2")

    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("gemma_keras.sources.convert.build_backbone", explode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        gk.load(path)
    leftovers = [p for p in cache_files(isolated_cache) if not p.name.endswith(".lock")]
    assert leftovers == []
    assert [p for p in (isolated_cache / "gguf").iterdir() if p.is_dir()] == []


def test_broken_entry_is_rebuilt_not_trusted(tiny_gguf, isolated_cache, monkeypatch):
    path, _ = tiny_gguf("gemma")
    calls = _count_conversions(monkeypatch)
    gk.load(path)
    entry = isolated_cache / "gguf" / cache.file_sha256(path)
    manifest = json.loads((entry / cache.MANIFEST).read_text())
    vocabulary = next(name for name in manifest["files"] if name.endswith(".spm"))
    with open(entry / vocabulary, "r+b") as f:  # a truncated tokenizer file
        f.truncate(100)
    assert cache.read_manifest(entry) is None
    lm = gk.load(path)
    assert len(calls) == 2
    assert cache.read_manifest(entry) is not None
    assert lm.generate("hello", max_new_tokens=2, stop_token_ids=()) is not None


def test_an_entry_that_holds_weights_is_rebuilt_without_them(tiny_gguf, isolated_cache, monkeypatch):
    """Entries of older gemma_keras versions held the float32 weights; their manifests do not say
    where the weights are, and such an entry is rebuilt, not read."""
    path, _ = tiny_gguf("gemma3", "Q8_0")
    calls = _count_conversions(monkeypatch)
    first = gk.load(path).logits([2, 5, 7])
    entry = isolated_cache / "gguf" / cache.file_sha256(path)
    manifest = json.loads((entry / cache.MANIFEST).read_text())
    del manifest["weights"]
    (entry / cache.MANIFEST).write_text(json.dumps(manifest))
    again = gk.load(path).logits([2, 5, 7])
    assert len(calls) == 2 and "weights" in cache.read_manifest(entry)
    np.testing.assert_array_equal(again, first)


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GEMMA_KERAS_CACHE", str(tmp_path / "x"))
    assert cache.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("GEMMA_KERAS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "gemma_keras"


def test_unwritable_cache_gives_a_clear_error(tiny_gguf, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("GEMMA_KERAS_CACHE", str(blocker / "cache"))
    path, _ = tiny_gguf("gemma3")
    with pytest.raises(gk.CacheError, match="GEMMA_KERAS_CACHE"):
        gk.load(path)


def test_flipped_byte_of_the_same_size_fails_the_checksum(tiny_gguf, isolated_cache, monkeypatch):
    path, _ = tiny_gguf("gemma3", "Q4_0")
    calls = _count_conversions(monkeypatch)
    first = gk.load(path).logits([2, 5, 7])
    entry = isolated_cache / "gguf" / cache.file_sha256(path)
    config = entry / "config.json"
    data = bytearray(config.read_bytes())
    data[len(data) // 2] ^= 0x01
    config.write_bytes(bytes(data))
    assert cache.read_manifest(entry, verify=False) is not None  # sizes still match
    assert cache.read_manifest(entry) is None  # the checksum does not
    again = gk.load(path).logits([2, 5, 7])
    assert len(calls) == 2 and cache.read_manifest(entry) is not None
    np.testing.assert_array_equal(again, first)


def test_disk_full_leaves_the_cache_untouched(tiny_gguf, isolated_cache, monkeypatch):
    import errno

    path, _ = tiny_gguf("gemma3")

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("keras_hub.models.CausalLM.save_to_preset", full)
    with pytest.raises(gk.CacheError, match="No space left on device.*nothing was left behind"):
        gk.load(path)
    assert [p for p in cache_files(isolated_cache) if not p.name.endswith(".lock")] == []


def test_leftovers_of_a_killed_conversion_are_removed(tiny_gguf, isolated_cache):
    path, _ = tiny_gguf("gemma2")
    sha = cache.file_sha256(path)
    stale = isolated_cache / "gguf" / f".{sha}.deadbeef.tmp"
    stale.mkdir(parents=True)
    (stale / "model.weights.h5").write_bytes(b"half a file")
    gk.load(path)
    assert not stale.exists()
    assert cache.read_manifest(isolated_cache / "gguf" / sha) is not None


def test_metadata_strings_never_become_paths(tmp_path, isolated_cache):
    from gemma_keras.testing import write_tiny_gguf

    path = tmp_path / "evil.gguf"
    write_tiny_gguf(path, "gemma3")
    data = path.read_bytes().replace(b"tiny-gemma3", b"../../../xx")  # general.name, same length
    path.write_bytes(data)
    gk.load(path)
    names = sorted(p.name for p in (isolated_cache / "gguf").iterdir() if not p.name.endswith(".lock"))
    assert names == [cache.file_sha256(path)]
    assert not (tmp_path / "xx").exists() and not (isolated_cache.parent / "xx").exists()


def test_nothing_unpickles_user_files():
    """No module of ours imports pickle or calls a loader that unpickles."""
    import ast
    from pathlib import Path

    import gemma_keras

    risky = []
    for source in Path(gemma_keras.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "dill", "cloudpickle", "joblib") for n in names):
                    risky.append(f"{source.name}:{node.lineno}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                module = getattr(node.func.value, "id", "")
                # numpy's loader refuses object arrays (pickles) only with a
                # literal allow_pickle=False; torch.load may unpickle at all times.
                refuses_pickles = any(
                    k.arg == "allow_pickle" and isinstance(k.value, ast.Constant) and k.value.value is False
                    for k in node.keywords
                )
                if node.func.attr == "load" and module == "torch":
                    risky.append(f"{source.name}:{node.lineno}")
                if node.func.attr == "load" and module in ("np", "numpy") and not refuses_pickles:
                    risky.append(f"{source.name}:{node.lineno}")
                if any(k.arg == "allow_pickle" for k in node.keywords) and not refuses_pickles:
                    risky.append(f"{source.name}:{node.lineno}")
    assert risky == []
