"""Two processes on loopback train one data-parallel LoRA step and agree with one device."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gemma_keras as gk
from tests.conftest import free_port
from tests.distributed.lora_step import BATCH, enable_lora, fixed_batch, train_step

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 240  # seconds; a hung collective fails the test instead of blocking CI


def test_two_processes_train_one_data_parallel_step(tiny_gguf, tmp_path):
    path, _ = tiny_gguf("gemma3", kv_heads=1)
    port = free_port()
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    procs, outs, logs = [], [], []
    for i in range(2):
        # A cache per process: the test is about training, not about two
        # processes converting the same file at once.
        env_i = dict(env, GEMMA_KERAS_CACHE=str(tmp_path / f"cache{i}"))
        outs.append(tmp_path / f"out{i}.npz")
        logs.append((tmp_path / f"log{i}.txt").open("w"))
        cmd = [
            sys.executable,
            "-m",
            "tests.distributed.mp_worker",
            str(port),
            str(i),
            str(path),
            str(outs[i]),
        ]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env_i, stdout=logs[i], stderr=subprocess.STDOUT))
    try:
        for p in procs:
            p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the two processes did not finish within {TIMEOUT} s:\n{_tails(tmp_path)}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    assert [p.returncode for p in procs] == [0, 0], _tails(tmp_path)

    got = [dict(np.load(o)) for o in outs]
    assert got[0].keys() == got[1].keys()
    # Keras' own random init of the LoRA factors agrees: distribute() shared one seed.
    for key in got[0]:
        np.testing.assert_array_equal(got[0][key], got[1][key], err_msg=key)

    # generate cannot run across processes yet, and says so.
    assert bool(got[0]["generate_refused"])

    # And the step equals one device's step on the whole batch (both halves).
    gk.distribute(None)
    lm = gk.load(path)
    enable_lora(lm)
    x, y, weight = fixed_batch(lm.tokenizer.vocabulary_size)
    assert x["token_ids"].shape[0] == BATCH
    loss, weights = train_step(lm, x, y, weight)
    assert float(got[0]["loss"]) == pytest.approx(loss, abs=1e-5)
    assert len(weights) == sum(k.startswith("trained:") for k in got[0])
    for name, value in weights.items():
        np.testing.assert_allclose(got[0][f"trained:{name}"], value, atol=1e-5, rtol=0, err_msg=name)


def _tails(tmp_path: Path) -> str:
    return "\n".join(
        f"--- process {i} ---\n" + (tmp_path / f"log{i}.txt").read_text()[-3000:] for i in range(2)
    )
