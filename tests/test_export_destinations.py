"""Export destinations: written whole or not at all, and requests no writer can serve.

The crash test with a killed process is in test_export_crash.py; the
guarantees are listed in docs/export.md#crash-safety.
"""

from __future__ import annotations

import errno
import json
import os
import threading

import pytest

import gemma_keras as gk
from gemma_keras.formats import staging as export_mod
from tests.test_export import fresh, leftovers

# --- destinations -----------------------------------------------------------------------------
FORMATS = {"keras": "preset", "safetensors": "hf", "gguf": "m.gguf"}


@pytest.mark.parametrize("format", FORMATS)
def test_existing_destination_needs_overwrite(tiny_model, tmp_path, format):
    lm = tiny_model("gemma3")
    dest = tmp_path / FORMATS[format]
    dest.mkdir() if format != "gguf" else dest.write_text("keep me")
    with pytest.raises(gk.ExportError, match="overwrite=True") as info:
        lm.export(dest, format=format)
    assert str(dest) in str(info.value) and "--overwrite" in str(info.value)
    assert dest.exists() and not leftovers(tmp_path, dest.name)
    lm.export(dest, format=format, overwrite=True)
    assert gk.load(dest).info.architecture == "gemma3"
    assert not leftovers(tmp_path, dest.name)


def _fail_partway(monkeypatch, format):
    """Makes the writer of `format` run out of space after writing part of its output."""
    enospc = OSError(errno.ENOSPC, "No space left on device")
    if format == "gguf":
        import gguf

        def tensors(self, *args, **kwargs):
            self.fout[0].write(b"\0" * 1000)  # part of the tensor data
            raise enospc

        monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", tensors)
    elif format == "safetensors":
        from gemma_keras.formats import hf_checkpoint as hf_export

        def write_json(path, content):  # runs after model.safetensors is written
            raise enospc

        monkeypatch.setattr(hf_export, "write_json", write_json)
    else:
        from gemma_keras.formats import keras_preset

        def write_manifest(entry, info):  # runs after the preset is written
            assert (entry / "model.weights.h5").exists()
            raise enospc

        monkeypatch.setattr(keras_preset, "write_manifest", write_manifest)


@pytest.mark.parametrize("existing", [False, True])
@pytest.mark.parametrize("format", FORMATS)
def test_disk_full_mid_write_leaves_nothing(tiny_model, tmp_path, monkeypatch, format, existing):
    lm = tiny_model("gemma3")
    dest = tmp_path / FORMATS[format]
    if existing:
        lm.export(dest, format=format, dtype="f32" if format == "gguf" else None)
        before = sorted((p.relative_to(dest).as_posix(), p.stat().st_size) for p in [dest, *dest.rglob("*")])
    _fail_partway(monkeypatch, format)
    with pytest.raises(gk.ExportError, match="No space left") as info:
        lm.export(dest, format=format, overwrite=existing)
    assert str(dest) in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert not leftovers(tmp_path, dest.name)
    if existing:  # the previous export is untouched and still loads
        assert (
            sorted((p.relative_to(dest).as_posix(), p.stat().st_size) for p in [dest, *dest.rglob("*")])
            == before
        )
        monkeypatch.undo()
        assert gk.load(dest).info.architecture == "gemma3"
    else:
        assert not os.path.lexists(dest)


def test_overwrite_never_leaves_the_destination_missing(tiny_gguf, tiny_model, tmp_path):
    probe_a, probe_b = tmp_path / "a", tmp_path / "b"
    probe_a.mkdir(), probe_b.mkdir()
    try:
        swapped = export_mod._renameat2(probe_a, probe_b, export_mod._RENAME_EXCHANGE)
    except OSError:
        swapped = False
    if not swapped:
        pytest.skip("this filesystem has no renameat2 exchange; docs/export.md describes the fallback")
    dest = tmp_path / "hf"
    tiny_model("gemma2").export(dest, format="safetensors")
    seen_missing = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            if not (dest / "config.json").exists():
                seen_missing.append(True)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for arch in ["gemma3", "gemma2", "gemma3"]:
            tiny_model(arch).export(dest, format="safetensors", overwrite=True)
    finally:
        stop.set()
        watcher.join()
    assert not seen_missing
    assert json.loads((dest / "config.json").read_text())["model_type"] == "gemma3_text"
    assert not leftovers(tmp_path, "hf")


def test_overwrite_without_atomic_swap_restores_the_old_export(tiny_model, tmp_path, monkeypatch):
    lm = tiny_model("gemma3")
    dest = lm.export(tmp_path / "m.gguf", dtype="f32")
    old = dest.read_bytes()
    monkeypatch.setattr(export_mod, "_renameat2", lambda src, dst, flags: False)
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # moving the new file in fails after the old one moved aside
            raise OSError(errno.EIO, "I/O error")
        real_rename(src, dst)

    monkeypatch.setattr(export_mod.os, "rename", rename)
    with pytest.raises(gk.ExportError, match="I/O error"):
        lm.export(dest, dtype="f16", overwrite=True)
    assert dest.read_bytes() == old
    assert not leftovers(tmp_path, dest.name)
    monkeypatch.setattr(export_mod.os, "rename", real_rename)
    lm.export(dest, dtype="f16", overwrite=True)  # the fallback path, when it works
    assert dest.read_bytes() != old and not leftovers(tmp_path, dest.name)


def test_temporaries_of_killed_exports_are_cleared(tiny_model, tmp_path):
    dead = tmp_path / ".m.gguf.999999999.abc.tmp"
    dead.write_bytes(b"half a file")
    ours = tmp_path / f".m.gguf.{os.getpid()}.xyz.tmp"  # a live process's: kept
    ours.write_bytes(b"in progress")
    tiny_model("gemma3").export(tmp_path / "m.gguf")
    assert not dead.exists() and ours.exists()


def test_exported_files_have_ordinary_permissions(tiny_model, tmp_path):
    dest = tiny_model("gemma3").export(tmp_path / "m.gguf")
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~umask


# --- what cannot be exported -----------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dest": "model-dir"}, "Cannot tell the export format"),
        ({"dest": "x", "format": "onnx"}, "Unknown export format 'onnx'"),
        ({"dest": "x.gguf", "dtype": "q4_k"}, "dtype 'q4_k' is not offered for gguf"),
        ({"dest": "x", "format": "safetensors", "dtype": "q8_0"}, "not offered for safetensors"),
        ({"dest": "x", "format": "keras", "dtype": "f16"}, "keeps the model's own dtype"),
    ],
)
def test_bad_requests_are_clear_errors(tiny_model, tmp_path, kwargs, message):
    kwargs = dict(kwargs, dest=tmp_path / kwargs["dest"])
    with pytest.raises(gk.ExportError, match=message):
        tiny_model("gemma3").export(**kwargs)
    assert list(tmp_path.iterdir()) == []


def test_a_keras_quantized_model_is_refused(tiny_gguf, tmp_path):
    lm = fresh(tiny_gguf, "gemma2").quantize("int8")
    for format in FORMATS:
        with pytest.raises(gk.ExportError, match="quantized"):
            lm.export(tmp_path / FORMATS[format], format=format)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "arch, change, message",
    [
        ("gemma2", {"use_sliding_window_attention": False}, "always uses sliding-window"),
        ("gemma3", {"query_head_dim_normalize": False}, "scales queries differently"),
    ],
)
def test_a_model_gguf_cannot_describe_is_refused(tiny_gguf, tmp_path, monkeypatch, arch, change, message):
    # KerasHub can build these; llama.cpp's Gemma loader would run them differently.
    lm = fresh(tiny_gguf, arch)
    config = dict(lm.backbone.get_config(), **change)
    monkeypatch.setattr(lm.backbone, "get_config", lambda: config)
    with pytest.raises(gk.ExportError, match=message):
        lm.export(tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []
