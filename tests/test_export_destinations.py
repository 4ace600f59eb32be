"""Export destinations: written whole or not at all, and requests no writer can serve.

The crash test with a killed process is in test_export_crash.py; the
guarantees are listed in docs/export.md#crash-safety.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import re
import shutil
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

import gemma_keras as gk
from gemma_keras.errors import FinetuneError
from gemma_keras.formats import staging as export_mod
from gemma_keras.training.lora import lora_layers
from tests.test_export import fresh, leftovers
from tests.test_finetune import FAST, RECORDS

# The module (gemma_keras.formats re-exports its `export` function under the same name).
export_module = importlib.import_module("gemma_keras.formats.export")

# --- destinations ---------------------------------------------------------------------------
FORMATS = {"keras": "preset", "safetensors": "hf", "gguf": "m.gguf"}
# Our own export of another kind: a directory of the other directory format, a file where a
# directory goes, and a directory where a file goes.
OTHER_KIND = {"keras": "safetensors", "safetensors": "gguf", "gguf": "keras"}
SETUPS = (
    "user_dir",
    "user_file",
    "foreign_gguf",
    "symlink",
    "ours_plus_user_file",
    "other_kind",
    "same_kind",
)


@pytest.fixture(scope="module")
def own_exports(tiny_model, tmp_path_factory):
    """One export of each format, from the gemma2 model; tests copy them (copies stay ours)."""
    root = tmp_path_factory.mktemp("own")
    lm = tiny_model("gemma2")
    return {fmt: lm.export(root / name, format=fmt) for fmt, name in FORMATS.items()}


def _place(own, fmt: str, dest: Path) -> None:
    source = own[fmt]
    if source.is_dir():
        shutil.copytree(source, dest, symlinks=True)
    else:
        shutil.copy2(source, dest)


def snapshot(path: Path) -> dict:
    """Everything at `path`, links not followed: names, types, modes, bytes, link targets."""
    found = {}
    inside = sorted(path.rglob("*")) if path.is_dir() and not path.is_symlink() else []
    for p in [path, *inside]:
        st = os.lstat(p)
        rel = p.relative_to(path).as_posix()
        if stat.S_ISLNK(st.st_mode):
            found[rel] = ("link", os.readlink(p))
        elif stat.S_ISREG(st.st_mode):
            found[rel] = ("file", st.st_mode, p.read_bytes())
        else:
            found[rel] = ("other", st.st_mode)
    return found


def _arrange(setup: str, fmt: str, dest: Path, own, tiny_gguf) -> list[Path]:
    """Puts `setup` at `dest`; returns the paths whose contents must survive a refusal."""
    if setup == "user_dir":
        (dest / "sub").mkdir(parents=True)
        (dest / "notes.txt").write_text("my notes")
        (dest / "sub" / "data.bin").write_bytes(bytes(range(256)))
    elif setup == "user_file":
        dest.write_bytes(b"my own bytes\n")
    elif setup == "foreign_gguf":  # a valid Gemma GGUF that gemma_keras did not write
        shutil.copy2(tiny_gguf("gemma3")[0], dest)
    elif setup == "symlink":  # even a link to our own export of the same kind
        target = dest.parent / "target"
        _place(own, fmt, target)
        dest.symlink_to(target)
        return [dest, target]
    elif setup == "ours_plus_user_file":  # our export, and a file the user added to it
        if fmt == "gguf":
            _place(own, "keras", dest)
        else:
            _place(own, fmt, dest)
        (dest / "my-notes.txt").write_text("mine")
    elif setup == "other_kind":
        _place(own, OTHER_KIND[fmt], dest)
    else:
        _place(own, fmt, dest)
    return [dest]


def _exported_architecture(dest: Path) -> str:
    if dest.is_dir():
        return json.loads((dest / "gemma_keras.json").read_text())["architecture"]
    from gguf import GGUFReader

    return GGUFReader(dest).fields["general.architecture"].contents()


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_only_our_own_export_of_the_same_kind_is_ever_replaced(
    tiny_model, tiny_gguf, own_exports, tmp_path, monkeypatch, fmt, setup, overwrite
):
    dest = tmp_path / FORMATS[fmt]
    kept = _arrange(setup, fmt, dest, own_exports, tiny_gguf)
    before = {p: snapshot(p) for p in kept}
    writes = []
    writer = export_module._WRITERS[fmt]
    monkeypatch.setitem(export_module._WRITERS, fmt, lambda *a: writes.append(a) or writer(*a))
    lm = tiny_model("gemma3")
    if setup == "same_kind" and overwrite:
        assert lm.export(dest, format=fmt, overwrite=True) == dest
        assert _exported_architecture(dest) == "gemma3"  # was gemma2's
        assert gk.load(dest).info.architecture == "gemma3"
    else:
        with pytest.raises(gk.ExportError) as info:
            lm.export(dest, format=fmt, overwrite=overwrite)
        message = str(info.value)
        assert str(dest) in message
        if setup == "same_kind":  # ours: it only needs overwrite=True
            assert "already exists" in message and "overwrite=True" in message
        else:  # not ours: overwrite=True would not help, so it is not offered
            assert "left untouched" in message and "remove" in message
            assert "pass overwrite=True" not in message
        assert writes == []  # refused before any work
        assert {p: snapshot(p) for p in kept} == before
    assert not leftovers(tmp_path, dest.name)


@pytest.mark.parametrize(
    "setup, described",
    [
        ("user_dir", "a directory holding 2 entries ('notes.txt', 'sub')"),
        ("user_file", "a file of 13 bytes"),
        ("foreign_gguf", "a GGUF file not written by gemma_keras"),
        ("symlink", "a symbolic link"),
        ("other_kind", "a Keras preset written by gemma_keras"),
    ],
)
def test_a_refusal_says_what_is_there(tiny_model, tiny_gguf, own_exports, tmp_path, setup, described):
    dest = tmp_path / "m.gguf"
    _arrange(setup, "gguf", dest, own_exports, tiny_gguf)
    with pytest.raises(gk.ExportError, match=re.escape(described)):
        tiny_model("gemma3").export(dest, overwrite=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_pipe_at_the_destination_is_refused_unopened(tiny_model, tmp_path, fmt):
    dest = tmp_path / FORMATS[fmt]
    os.mkfifo(dest)  # opening it to read would block: the check must only lstat it
    with pytest.raises(gk.ExportError, match="device, pipe or socket"):
        tiny_model("gemma3").export(dest, format=fmt, overwrite=True)
    assert stat.S_ISFIFO(os.lstat(dest).st_mode)


def test_an_export_from_before_manifest_kinds_is_still_ours(tiny_model, own_exports, tmp_path):
    dest = tmp_path / "preset"
    _place(own_exports, "keras", dest)
    manifest = json.loads((dest / "gemma_keras.json").read_text())
    del manifest["kind"]
    (dest / "gemma_keras.json").write_text(json.dumps(manifest))
    tiny_model("gemma3").save(dest, overwrite=True)
    assert _exported_architecture(dest) == "gemma3"


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_parent_that_is_a_file_is_refused_before_the_work(tiny_model, tmp_path, fmt):
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    dest = blocker / "sub" / FORMATS[fmt]
    with pytest.raises(
        gk.ExportError, match=f"{re.escape(str(blocker))} is a file of 4 bytes, not a directory"
    ):
        tiny_model("gemma3").export(dest, format=fmt)
    assert blocker.read_text() == "mine" and sorted(tmp_path.iterdir()) == [blocker]


def test_missing_parents_are_created(tiny_model, tmp_path):
    dest = tiny_model("gemma3").export(tmp_path / "a" / "b" / "m.gguf")
    assert dest.is_file()


def _make_unwritable(path: Path, monkeypatch, how: str) -> None:
    """chmod (skipped where it has no effect: running as root), or a simulated read-only directory."""
    if how == "chmod":
        path.chmod(0o555)
        if os.access(path, os.W_OK):
            path.chmod(0o755)
            pytest.skip("chmod does not stop this user (root) from writing")
        return
    real = os.access

    def access(p, mode, *args, **kwargs):
        if Path(p) == path and mode & os.W_OK:
            return False
        return real(p, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("how", ["chmod", "simulated"])
def test_an_unwritable_parent_is_refused_before_the_work(tiny_model, tmp_path, monkeypatch, how):
    parent = tmp_path / "ro"
    parent.mkdir()
    _make_unwritable(parent, monkeypatch, how)
    try:
        with pytest.raises(gk.ExportError, match="cannot be written to") as info:
            tiny_model("gemma3").export(parent / "m.gguf")
        assert str(parent) in str(info.value)
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_the_destination_is_checked_again_before_it_is_replaced(
    tiny_model, own_exports, tmp_path, monkeypatch
):
    """Something the user puts at the destination while the export runs is never replaced."""
    dest = tmp_path / "preset"
    _place(own_exports, "keras", dest)
    writer = export_module._WRITERS["keras"]

    def meanwhile(*args):
        writer(*args)
        shutil.rmtree(dest)
        dest.mkdir()
        (dest / "notes.txt").write_text("written while exporting")

    monkeypatch.setitem(export_module._WRITERS, "keras", meanwhile)
    with pytest.raises(gk.ExportError, match="left untouched"):
        tiny_model("gemma3").save(dest, overwrite=True)
    assert (dest / "notes.txt").read_text() == "written while exporting"
    assert sorted(p.name for p in dest.iterdir()) == ["notes.txt"]
    assert not leftovers(tmp_path, dest.name)


@pytest.mark.parametrize("atomic_swap", [True, False])
def test_what_appears_after_the_last_check_is_put_back(
    tiny_model, own_exports, tmp_path, monkeypatch, atomic_swap
):
    """The narrowest race: replaced between the last check and the swap. The swap is undone."""
    dest = tmp_path / "m.gguf"
    _place(own_exports, "gguf", dest)
    real_check = export_mod.check_destination
    calls = []

    def check(*args, **kwargs):  # staged checks on entry, and again just before publishing...
        calls.append(1)
        result = real_check(*args, **kwargs)
        if len(calls) == 2:  # ...where our export passes, and then the user's file takes its place
            dest.unlink()
            dest.write_bytes(b"the user's file")
        return result

    monkeypatch.setattr(export_mod, "check_destination", check)
    if not atomic_swap:
        monkeypatch.setattr(export_mod, "_renameat2", lambda src, dst, flags: False)
    with pytest.raises(gk.ExportError, match="replaced by something else"):
        tiny_model("gemma3").export(dest, overwrite=True)
    assert len(calls) == 2
    assert dest.read_bytes() == b"the user's file"
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

        def write_manifest(entry, info, kind=None):  # runs after the preset is written
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


# --- fine-tuning's out_dir and save_adapters: the same policy ---------------------------------
def _untrained(tiny_gguf):
    return gk.load(tiny_gguf("gemma3")[0])  # a model of its own: fine-tuning changes it


def _tree(root: Path) -> dict:
    return {p: snapshot(p) for p in [root, *sorted(root.rglob("*"))] if not p.is_symlink()}


@pytest.mark.parametrize(
    "case", ["a_file", "under_a_file", "adapters_is_a_dir", "foreign_adapters", "symlink"]
)
def test_a_bad_out_dir_fails_before_the_model_changes(tiny_gguf, tmp_path, case):
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    out_dir, named = {
        "a_file": (blocker, blocker),
        "under_a_file": (blocker / "run", blocker),
        "adapters_is_a_dir": (tmp_path / "run", tmp_path / "run" / "adapters.npz"),
        "foreign_adapters": (tmp_path / "run", tmp_path / "run" / "adapters.npz"),
        "symlink": (tmp_path / "link", tmp_path / "link"),
    }[case]
    if case == "adapters_is_a_dir":
        (named / "kept").mkdir(parents=True)
    elif case == "foreign_adapters":
        named.parent.mkdir()
        np.savez(named, mine=np.arange(3))
    elif case == "symlink":  # a link to a file (a link to a directory is a fine out_dir)
        out_dir.symlink_to(blocker)
    before = _tree(tmp_path)
    lm = _untrained(tiny_gguf)
    with pytest.raises(FinetuneError) as info:
        lm.finetune(RECORDS, max_steps=1, out_dir=out_dir, **FAST)
    assert str(named) in str(info.value)
    assert lora_layers(lm.backbone) == []  # the model did not change
    assert _tree(tmp_path) == before


def test_out_dir_is_checked_before_the_data_is_read(tiny_gguf, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    lm = _untrained(tiny_gguf)
    with pytest.raises(FinetuneError, match="not a directory"):  # not the DataError the records give
        lm.finetune([{"no": "fields we know"}], out_dir=blocker, **FAST)
    assert lora_layers(lm.backbone) == []


@pytest.mark.parametrize("exists", [True, False])
@pytest.mark.parametrize("how", ["chmod", "simulated"])
def test_an_unwritable_out_dir_fails_before_the_model_changes(tiny_gguf, tmp_path, monkeypatch, how, exists):
    readonly = tmp_path / "ro"
    readonly.mkdir()
    out_dir = readonly if exists else readonly / "run"
    _make_unwritable(readonly, monkeypatch, how)
    lm = _untrained(tiny_gguf)
    try:
        with pytest.raises(FinetuneError, match="cannot be written to") as info:
            lm.finetune(RECORDS, max_steps=1, out_dir=out_dir, **FAST)
        assert str(readonly) in str(info.value)
        assert list(readonly.iterdir()) == []
    finally:
        readonly.chmod(0o755)
    assert lora_layers(lm.backbone) == []


def test_an_out_dir_that_exists_needs_only_itself_writable(tmp_path, monkeypatch):
    from gemma_keras.training.checkpoints import check_run_directory

    parent = tmp_path / "ro"
    (parent / "run").mkdir(parents=True)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")  # a link to a directory: written into
    _make_unwritable(parent, monkeypatch, "simulated")
    assert check_run_directory(parent / "run") == parent / "run"
    assert check_run_directory(tmp_path / "link") == tmp_path / "link"
    with pytest.raises(FinetuneError, match="cannot be written to"):
        check_run_directory(parent / "new-run")


def test_a_missing_out_dir_and_its_parents_are_created(tiny_gguf, tmp_path):
    out_dir = tmp_path / "a" / "b" / "run"
    _untrained(tiny_gguf).finetune(RECORDS[:4], max_steps=1, out_dir=out_dir, **FAST)
    assert (out_dir / "adapters.npz").is_file() and len(list((out_dir / "checkpoints").iterdir())) == 1


def _no_space(file, **arrays):
    file.write(b"\0" * 100)  # part of the archive
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_checkpointing_is_a_finetune_error(tiny_gguf, tmp_path, monkeypatch):
    from gemma_keras.training import lora

    monkeypatch.setattr(lora.np, "savez", _no_space)
    run = tmp_path / "run"
    with pytest.raises(FinetuneError, match="No space left") as info:
        _untrained(tiny_gguf).finetune(RECORDS[:4], max_steps=1, out_dir=run, **FAST)
    assert str(run / "checkpoints" / "step-00000001.npz") in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert [p for p in run.rglob("*") if p.is_file()] == []  # no half-written file, no temporary


@pytest.fixture(scope="module")
def adapted(tiny_gguf):
    lm = gk.load(tiny_gguf("gemma3")[0])
    lm.finetune(RECORDS[:4], max_steps=1, **FAST)
    return lm


@pytest.mark.parametrize(
    "case",
    ["a_dir", "npz_is_a_dir", "under_a_file", "foreign_file", "symlink", "read_only", "read_only_chmod"],
)
def test_save_adapters_refuses_what_it_cannot_write(adapted, tmp_path, monkeypatch, case):
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    path, named = tmp_path / "adapters.npz", tmp_path / "adapters.npz"
    if case == "a_dir":
        path = named = tmp_path / "adapters"
        (path / "kept").mkdir(parents=True)
    elif case == "npz_is_a_dir":
        (path / "kept").mkdir(parents=True)
    elif case == "under_a_file":
        path, named = blocker / "adapters.npz", blocker
    elif case == "foreign_file":
        np.savez(path, mine=np.arange(3))
    elif case == "symlink":
        path.symlink_to(blocker)
    else:
        path = tmp_path / "ro" / "adapters.npz"
        path.parent.mkdir()
        named = path.parent
        _make_unwritable(path.parent, monkeypatch, "chmod" if case == "read_only_chmod" else "simulated")
    before = _tree(tmp_path)
    try:
        with pytest.raises(FinetuneError) as info:
            adapted.save_adapters(path)
        assert str(named) in str(info.value)
        assert _tree(tmp_path) == before
    finally:
        if (tmp_path / "ro").exists():
            (tmp_path / "ro").chmod(0o755)


def test_save_adapters_replaces_our_own_file_and_survives_a_full_disk(
    adapted, tiny_gguf, tmp_path, monkeypatch
):
    from gemma_keras.training import lora

    path = tmp_path / "adapters.npz"
    lora.write_npz(path, {"old": np.zeros(3)}, {"format": lora.FORMAT, "kind": "adapters"})
    assert adapted.save_adapters(path) == path  # ours: replaced
    ids = adapted.tokenizer.encode("question 2")
    np.testing.assert_allclose(
        _untrained(tiny_gguf).load_adapters(path).logits(ids), adapted.logits(ids), atol=1e-5
    )
    saved = path.read_bytes()
    monkeypatch.setattr(lora.np, "savez", _no_space)
    with pytest.raises(FinetuneError, match="No space left") as info:
        adapted.save_adapters(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == saved and sorted(tmp_path.iterdir()) == [path]
