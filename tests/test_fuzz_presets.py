"""Mutation fuzzing of Keras presets and transformers checkpoints, with no process abort allowed.

A Keras preset declares its sizes in `config.json` and `task.json`, and
KerasHub builds the model from them before it reads a weight: a
`vocabulary_size` of 10**12 once made XLA abort the process on JAX (exit
134), where no `except` can help. `formats/preset_check.py` now bounds every
declared size first. This fuzz proves it from the outside: tiny Gemma,
Gemma 2 and Gemma 3 presets (`lm.save`) and checkpoints
(`lm.export(format="safetensors")`) are mutated (sizes set to 0, -1, 2**31,
10**12, 2**63, NaN, inf, the wrong type or deleted; the two configs made to
disagree; JSON files truncated, garbled, emptied or deleted; weights files
truncated, garbled or emptied; safetensors headers and shard indexes forged)
and loaded with `gk.load` in a subprocess (`tests/preset_fuzz.py`).

A case passes when the load succeeds or raises a `GemmaKerasError` that
names the directory and the field or file at fault. A worker killed by a
signal fails the test, naming the case; the next worker carries on after it,
so one run reports every such case. The case list is explicit and the byte
garbling seeded, so CI repeats the same cases, in every backend session.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BACKEND
from tests.preset_fuzz import ARCHITECTURES, MARK, build_cases

REPO = Path(__file__).resolve().parent.parent
DEADLINE_S = 600
# Every backend runs every case (40-55 s each on two idle cores; the abort was
# JAX's, but a build that passes the checks runs on the session's backend).
# GEMMA_KERAS_PRESET_FUZZ_STRIDE=n runs every n-th case, for a quick look.
STRIDE = int(os.environ.get("GEMMA_KERAS_PRESET_FUZZ_STRIDE") or 1)


@pytest.fixture(scope="module")
def corpus(tiny_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("preset-fuzz")
    for arch in ARCHITECTURES:
        lm = tiny_model(arch)
        lm.save(root / f"{arch}-keras")
        lm.export(root / f"{arch}-hf", format="safetensors")
    return root


def _run_worker(root: Path, start: int, options: list[str], timeout: float):
    """Runs every `STRIDE`-th case from `start`: the records, the case that killed the worker, its log."""
    env = dict(
        os.environ,
        KERAS_BACKEND=BACKEND,
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        GEMMA_KERAS_CACHE=str(root / "cache"),
        GEMMA_KERAS_OFFLINE="1",
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.preset_fuzz", str(root), str(start), str(STRIDE), *options],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        out, err, status = proc.stdout, proc.stderr, f"exit status {proc.returncode}"
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err, status = "", f"no answer within {timeout:.0f} s"
    records, started = {}, None
    for line in out.splitlines():
        if line.startswith(MARK):
            record = json.loads(line[len(MARK) :])
            if "start" in record:
                started = record["start"]
            else:
                records[record["done"]] = record
    killer = started if started is not None and started not in records else None
    return records, killer, f"{status}; stderr ends: {err[-1500:]}"


def _fuzz(root: Path, only: tuple[str, ...] = (), without_checks: bool = False):
    """Runs the cases, restarting after any that kills the worker: (cases, records, killed)."""
    cases = build_cases(root)
    options = [f"--only={case_id}" for case_id in only] + (["--without-checks"] if without_checks else [])
    wanted = [i for i in range(0, len(cases), STRIDE) if not only or cases[i].id in only]
    records: dict[int, dict] = {}
    killed: dict[str, str] = {}
    start, began = 0, time.monotonic()
    while start < len(cases):
        left = DEADLINE_S - (time.monotonic() - began)
        assert left > 0, f"the fuzz ran past {DEADLINE_S} s at case {start} ({cases[start].id})"
        got, killer, log = _run_worker(root, start, options, left)
        records.update(got)
        if killer is None:
            missing = [i for i in wanted if i >= start and i not in records]
            assert not missing, f"the worker stopped before case {cases[missing[0]].id}: {log}"
            break
        killed[cases[killer].id] = log
        start = killer + STRIDE
    return cases, records, killed


def test_mutated_presets_and_checkpoints_never_abort(corpus):
    cases, records, killed = _fuzz(corpus)
    if os.environ.get("GEMMA_KERAS_FUZZ_RECORDS"):  # every case's outcome and message, for a report
        Path(os.environ["GEMMA_KERAS_FUZZ_RECORDS"]).write_text(json.dumps(records, indent=1))
    outcomes = collections.Counter(r["outcome"] for r in records.values())
    outcomes.update({"killed the process": len(killed)})
    ran = len(range(0, len(cases), STRIDE))
    print(
        f"\nPreset fuzz outcomes ({BACKEND}):", dict(sorted(outcomes.items())), "total", ran, "of", len(cases)
    )
    problems = {
        r["id"]: f"{r['problem']}: {r['outcome']}: {r.get('message', '')}"
        for r in records.values()
        if "problem" in r
    }
    assert not killed, f"cases that killed the process: {killed}"
    assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())
    # The fuzz must exercise both ends: clean loads and refusals.
    assert outcomes["loaded"] >= len(ARCHITECTURES) and outcomes["SourceError"] > ran // 2


@pytest.mark.skipif(BACKEND != "jax", reason="the abort was XLA's; torch and TensorFlow raised")
def test_the_harness_sees_the_abort_when_the_checks_are_off(corpus):
    """Without `check_model_dir`, the issue's case still kills a JAX worker, and the fuzz names it."""
    case = "gemma3-keras/task.json/vocabulary_size=1000000000000"
    following = "gemma3-keras/both/dropout=0.0"  # loads, checked or not
    _, records, killed = _fuzz(corpus, only=(case, following), without_checks=True)
    assert list(killed) == [case] and "exit status -6" in killed[case]
    assert [r["id"] for r in records.values()] == [following]  # a new worker carried on after it
