"""Killed processes and concurrent first loads never leave a broken cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

import gemma_keras as gk
from gemma_keras.sources import cache
from tests.conftest import BACKEND

CHILD = textwrap.dedent(
    """
    import sys, time
    import gemma_keras as gk
    from gemma_keras.sources import resolve as sources

    real = sources.convert_gguf
    marker, pause = sys.argv[2], float(sys.argv[3])

    def convert(model_info, out_dir, progress):
        built = real(model_info, out_dir, progress)
        open(marker, "a").write("converted\\n")
        time.sleep(pause)  # the preset is written, the entry not yet renamed
        return built

    sources.convert_gguf = convert
    lm = gk.load(sys.argv[1])
    print("GENERATED", repr(lm.generate("hello", max_new_tokens=3, stop_token_ids=())))
    """
)


def _spawn(gguf: Path, marker: Path, cache_root: Path, pause: float) -> subprocess.Popen:
    env = dict(os.environ, GEMMA_KERAS_CACHE=str(cache_root), KERAS_BACKEND=BACKEND, GEMMA_KERAS_OFFLINE="1")
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(gguf), str(marker), str(pause)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the child never reached the conversion"
        time.sleep(0.2)


def test_sigkill_during_first_conversion_then_recovery(tiny_gguf, tmp_path, isolated_cache):
    path, _ = tiny_gguf("gemma3", "Q8_0")
    marker = tmp_path / "marker"
    child = _spawn(path, marker, isolated_cache, pause=600)
    _wait_for(marker, child)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    sha = cache.file_sha256(path)
    root = isolated_cache / "gguf"
    assert not (root / sha).exists()  # nothing was published
    assert list(root.glob(f".{sha}.*.tmp"))  # the half-built entry is still there
    # The next run recovers on its own: it rebuilds and clears the leftovers.
    lm = gk.load(path)
    assert cache.read_manifest(root / sha) is not None
    assert not list(root.glob(f".{sha}.*.tmp"))
    assert lm.generate("hello", max_new_tokens=3, stop_token_ids=()) is not None


def test_two_processes_loading_the_same_file_first_time(tiny_gguf, tmp_path, isolated_cache):
    path, _ = tiny_gguf("gemma2", "Q8_0")
    marker = tmp_path / "conversions"
    children = [_spawn(path, marker, isolated_cache, pause=1.0) for _ in range(2)]
    outputs = [child.communicate(timeout=600) for child in children]
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err[-3000:]
        assert "GENERATED" in out
    assert marker.read_text().count("converted") == 1  # the lock made one convert, one wait
    generated = [out.split("GENERATED", 1)[1].strip() for out, _ in outputs]
    assert generated[0] == generated[1]
    entries = [p for p in (isolated_cache / "gguf").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and cache.read_manifest(entries[0]) is not None


FINETUNE_CHILD = textwrap.dedent(
    """
    import sys, time
    import gemma_keras as gk
    from gemma_keras.training import checkpoints as ft
    from tests.test_finetune import FAST, RECORDS

    real_save = ft.Checkpoints.save

    def slow_save(self, *args, **kwargs):
        path = real_save(self, *args, **kwargs)
        time.sleep(0.3)  # time for the parent's SIGKILL to land between steps
        return path

    ft.Checkpoints.save = slow_save
    lm = gk.load(sys.argv[1])
    lm.finetune(RECORDS, epochs=3, out_dir=sys.argv[2], checkpoint_every=1, **FAST)
    """
)


def test_sigkill_during_finetune_then_resume_matches_an_uninterrupted_run(tiny_gguf, tmp_path):
    from gemma_keras.training.lora import adapter_arrays, read_npz
    from tests.test_finetune import FAST, RECORDS

    path, _ = tiny_gguf("gemma3")
    run = tmp_path / "run"
    env = dict(os.environ, KERAS_BACKEND=BACKEND, GEMMA_KERAS_OFFLINE="1", PYTHONPATH=os.getcwd())
    proc = subprocess.Popen(
        [sys.executable, "-c", FINETUNE_CHILD, str(path), str(run)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(run / "checkpoints" / "step-00000003.npz", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "adapters.npz").exists()
    saved = sorted((run / "checkpoints").iterdir())
    assert saved and all(p.name.startswith("step-") and p.suffix == ".npz" for p in saved), saved
    for checkpoint in saved:
        read_npz(checkpoint, "checkpoint")  # every file left is whole

    resumed = gk.load(path)
    result = resumed.finetune(RECORDS, epochs=3, out_dir=run, resume=True, **FAST)
    assert 3 <= result.resumed_from < 9 and result.steps == 9
    full = gk.load(path)
    full.finetune(RECORDS, epochs=3, **FAST)
    expected, got = adapter_arrays(full.backbone), adapter_arrays(resumed.backbone)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], atol=1e-6, err_msg=key)
