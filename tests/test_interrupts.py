"""SIGINT and SIGTERM stop fine-tuning, conversion and export at a safe point, on every backend.

The reported bug: SIGINT sent to `gemma-keras finetune` right after its first
checkpoint was dropped on JAX (Python raised `KeyboardInterrupt` inside
JAX's garbage-collection callback, which swallowed it) and training ran to
the end. Stop requests are now only recorded by the signal handler and
honoured after a whole optimizer step, with a checkpoint of that step.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import gemma_keras as gk
from gemma_keras import interrupts
from gemma_keras.training.lora import read_npz
from tests.conftest import BACKEND

ROOT = Path(__file__).resolve().parents[1]
RECORDS = [{"prompt": f"question {i}", "response": f"answer number {i}"} for i in range(10)]
CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler, whatever the test runner was started with (a background job ignores it)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
    interrupts.clear()


def _signal_inside_a_gc_callback(signum: int) -> None:
    """Delivers `signum` while a garbage-collection callback runs, as JAX's `_xla_gc_callback` does."""
    fired = []

    def callback(phase, info):
        if phase == "start" and not fired:
            fired.append(True)
            signal.raise_signal(signum)  # Python runs the handler here, inside the callback

    gc.callbacks.append(callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)


# --- the mechanism ---------------------------------------------------------------------------------


def test_without_deferral_a_sigint_inside_a_gc_callback_is_lost(python_sigint, monkeypatch):
    # The bug as it was: the KeyboardInterrupt is "ignored" (reported as unraisable) and nothing stops.
    ignored = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: ignored.append(unraisable.exc_type))
    _signal_inside_a_gc_callback(signal.SIGINT)  # returns as if nothing happened
    assert ignored == [KeyboardInterrupt]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_deferred_records_the_signal_and_check_raises_it(python_sigint, signum):
    before = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    with pytest.raises(gk.Interrupted) as caught:
        with interrupts.deferred():
            _signal_inside_a_gc_callback(signum)
            assert interrupts.requested() == signum  # recorded, not raised
            interrupts.check()
    assert isinstance(caught.value, KeyboardInterrupt)
    assert caught.value.signum == signum and caught.value.exit_code == CODES[signum]
    assert pickle.loads(pickle.dumps(caught.value)).exit_code == CODES[signum]
    assert {s: signal.getsignal(s) for s in interrupts.SIGNALS} == before
    assert interrupts.requested() is None


def test_a_request_nobody_checked_goes_to_the_previous_handler_on_exit(python_sigint):
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            with interrupts.deferred():  # nested: shares the outer handlers
                signal.raise_signal(signal.SIGINT)
            assert interrupts.requested() == signal.SIGINT
    assert interrupts.requested() is None


def test_raising_raises_at_once_and_ends_with_a_dropped_request(python_sigint, monkeypatch):
    with pytest.raises(KeyboardInterrupt) as caught:
        with interrupts.raising():
            signal.raise_signal(signal.SIGINT)
    assert isinstance(caught.value, gk.Interrupted) and caught.value.signum == signal.SIGINT
    # Raised inside a GC callback, the exception is dropped; the command still ends as interrupted.
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: None)
    with pytest.raises(KeyboardInterrupt) as caught:
        with interrupts.raising():
            _signal_inside_a_gc_callback(signal.SIGINT)
            assert interrupts.requested() == signal.SIGINT
    assert isinstance(caught.value, gk.Interrupted) and interrupts.requested() is None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_deferred_does_nothing_outside_the_main_thread(python_sigint):
    errors = []

    def work():
        try:
            with interrupts.deferred():
                interrupts.check()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert errors == [] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


SECOND_SIGNAL = textwrap.dedent(
    """
    import os, signal, time
    from gemma_keras import interrupts

    with interrupts.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        print("recorded", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)  # asked twice: quit now
        time.sleep(60)
    """
)


def test_a_second_signal_while_one_is_pending_quits_at_once():
    child = subprocess.run(
        [sys.executable, "-c", SECOND_SIGNAL], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert child.stdout == "recorded\n" and child.returncode == -signal.SIGTERM, child.stderr


# --- fine-tuning through the API -------------------------------------------------------------------

FAST = dict(lora_rank=4, batch_size=2, sequence_length=32, learning_rate=1e-2, verbose=False)


def test_finetune_api_raises_interrupted_after_a_whole_step_with_its_checkpoint(
    tiny_gguf, tmp_path, monkeypatch, python_sigint
):
    from gemma_keras.training.checkpoints import Checkpoints

    path, _ = tiny_gguf("gemma3")
    save = Checkpoints.save
    steps_saved = []

    def save_then_signal(self, model, plan, step, history):
        written = save(self, model, plan, step, history)
        steps_saved.append(step)
        if len(steps_saved) == 1:  # right after the first checkpoint, inside a GC callback (the bug)
            _signal_inside_a_gc_callback(signal.SIGINT)
        return written

    monkeypatch.setattr(Checkpoints, "save", save_then_signal)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt) as caught:  # not lost: training did not run on to step 8
        gk.load(path).finetune(RECORDS, max_steps=8, out_dir=out, checkpoint_every=2, **FAST)
    stop = caught.value
    assert isinstance(stop, gk.Interrupted) and not isinstance(stop, Exception)
    assert (stop.signum, stop.step, stop.total_steps, stop.exit_code) == (signal.SIGINT, 2, 8, 130)
    assert stop.checkpoint == str(out / "checkpoints" / "step-00000002.npz") and steps_saved == [2]
    assert "stopped by SIGINT at step 2 of 8" in str(stop) and "resume=True" in str(stop)
    header, _ = read_npz(Path(stop.checkpoint), "checkpoint")
    assert header["step"] == 2
    assert not (out / "adapters.npz").exists()


def test_an_interrupt_between_checkpoints_saves_the_step_it_stopped_at(
    tiny_gguf, tmp_path, monkeypatch, python_sigint
):
    from gemma_keras.training import loop

    path, _ = tiny_gguf("gemma3")
    batches = loop._batches

    def signal_in_step_three(*args):
        for i, batch in enumerate(batches(*args)):
            if i == 2:  # SIGINT arrives while step 3 runs, between two checkpoints (every 4)
                signal.raise_signal(signal.SIGINT)
            yield batch

    monkeypatch.setattr(loop, "_batches", signal_in_step_three)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt) as caught:
        gk.load(path).finetune(RECORDS, max_steps=8, out_dir=out, checkpoint_every=4, **FAST)
    stop = caught.value
    assert isinstance(stop, gk.Interrupted)
    assert (stop.signum, stop.step, stop.exit_code) == (signal.SIGINT, 3, 130)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000003.npz"]
    header, _ = read_npz(out / "checkpoints" / "step-00000003.npz", "checkpoint")
    assert header["step"] == 3 and len(header["history"]) == 3


# --- conversion and export, in process -------------------------------------------------------------


def test_an_interrupted_conversion_caches_nothing(tiny_gguf, isolated_cache, monkeypatch, python_sigint):
    from gemma_keras.sources import convert

    source, _ = tiny_gguf("gemma3", seed=7)  # not converted by any other test
    report = convert._report

    def signal_between_layers(progress, stage, fraction):
        if stage == "dequantizing weights" and fraction == 0.05:  # before layer 0 is filled
            signal.raise_signal(signal.SIGINT)
        report(progress, stage, fraction)

    monkeypatch.setattr(convert, "_report", signal_between_layers)
    with pytest.raises(KeyboardInterrupt) as caught:
        gk.load(source)
    assert isinstance(caught.value, gk.Interrupted)
    assert "nothing was added to the cache" in str(caught.value)
    left = [p.name for p in (isolated_cache / "gguf").iterdir()]
    assert [n for n in left if not n.endswith(".lock")] == [], left  # no entry, no temporary
    monkeypatch.setattr(convert, "_report", report)
    assert gk.load(source).generate("hello", max_new_tokens=2) is not None  # converts cleanly next time


def test_an_interrupted_gguf_export_leaves_no_destination_and_no_temporary(
    tiny_model, tmp_path, monkeypatch, python_sigint
):
    import gguf

    lm = tiny_model("gemma3")
    dest = tmp_path / "out" / "m.gguf"
    dest.parent.mkdir()
    write = gguf.GGUFWriter.write_tensors_to_file

    def half_then_signal(self, *args, **kwargs):
        self.fout[0].write(b"\0" * 4096)  # half the file is on disk, nothing published yet
        self.fout[0].flush()
        signal.raise_signal(signal.SIGINT)
        return write(self, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", half_then_signal)
    with pytest.raises(KeyboardInterrupt) as caught:
        lm.export(dest)
    assert isinstance(caught.value, gk.Interrupted)
    assert str(caught.value) == f"export to {dest} stopped by SIGINT; nothing was written to {dest}."
    assert list(dest.parent.iterdir()) == []


# --- the command line, in subprocesses -------------------------------------------------------------


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GEMMA_KERAS_VERBOSE"}
    env["KERAS_BACKEND"] = BACKEND
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def _spawn(args: list[str], **env) -> subprocess.Popen:
    # Started with the parent's SIGINT at Python's default (see `python_sigint`), as a terminal's
    # Ctrl-C finds it; a child of a background job would inherit an ignored SIGINT.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    return subprocess.Popen(args, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _messages(stderr: str) -> list[str]:
    """Our lines on stderr, progress lines ("[gemma-keras] loading...") left out."""
    return [line for line in stderr.splitlines() if line.startswith("gemma-keras:")]


def _steps(checkpoints: Path) -> list[int]:
    return sorted(int(p.name[5:13]) for p in checkpoints.glob("step-*.npz")) if checkpoints.is_dir() else []


def _wait(condition, child: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if child.poll() is not None:
            raise AssertionError(f"the child ended before {what}: {child.returncode}\n{child.stderr.read()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)  # poll fast: the moment right after a checkpoint is the one that was lost


def test_cli_finetune_stops_on_sigint_and_sigterm_at_several_moments_and_resumes(
    tiny_gguf, tmp_path, python_sigint
):
    path, _ = tiny_gguf("gemma3")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(f'{{"prompt": "q{i}", "response": "answer {i}"}}\n' for i in range(10)))
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    command = [sys.executable, "-m", "gemma_keras.cli", "finetune", str(data), "--model", str(path)]
    command += ["--out", str(out), "--max-steps", "30", "--checkpoint-every", "1", "--batch-size", "2"]
    command += ["--sequence-length", "32", "--lora-rank", "2", "--quiet"]

    reached = 0
    # SIGINT the moment the first checkpoint appears (the reported bug), then, resumed, SIGTERM a few
    # steps later.
    for signum, after, extra in ((signal.SIGINT, 1, []), (signal.SIGTERM, 3, ["--resume"])):
        child = _spawn([*command, *extra])
        wanted = reached + after
        try:
            _wait(lambda: any(s >= wanted for s in _steps(checkpoints)), child, f"step {wanted}")  # noqa: B023
            child.send_signal(signum)
            _, stderr = child.communicate(timeout=300)
        finally:
            child.kill()
        assert child.returncode == CODES[signum], stderr
        assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
        (line,) = _messages(stderr)
        step = int(line.split("interrupted at step ", 1)[1].split()[0])
        assert reached + after <= step < 30, line
        assert line.endswith(" --resume") and "resume with: gemma-keras finetune " in line, line
        assert f"step-{step:08d}.npz" in line
        assert _steps(checkpoints)[-1] == step  # the step it stopped at is saved
        for checkpoint in checkpoints.iterdir():  # every file there is whole
            header, arrays = read_npz(checkpoint, "checkpoint")
            assert header["step"] == int(checkpoint.name[5:13]) and arrays
        assert not (out / "adapters.npz").exists()
        reached = step

    done = subprocess.run([*command, "--resume"], env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "trained 30 steps" in done.stdout
    assert (out / "adapters.npz").exists()


EXPORT_CHILD = textwrap.dedent(
    """
    import sys, time
    from gemma_keras import interrupts
    from gemma_keras.cli import main
    from gemma_keras.formats import keras_preset

    marker = sys.argv[1]

    def slow(*args, **kwargs):  # after the preset's own files are written, before the manifest
        open(marker, "w").write("writing")
        deadline = time.monotonic() + 120
        while interrupts.requested() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # a writer that goes on until the signal comes

    keras_preset.write_manifest = slow
    sys.exit(main(sys.argv[2:]))
    """
)


def test_cli_export_sigterm_leaves_no_destination_and_no_temporary(
    tiny_gguf, tiny_model, tmp_path, python_sigint
):
    # Without the handler, SIGTERM's default action would kill the process and leave the temporary.
    source, _ = tiny_gguf("gemma3")
    tiny_model("gemma3")  # converted into the shared cache, so the child only exports
    dest, marker = tmp_path / "out" / "preset", tmp_path / "marker"
    args = ["export", str(source), "--to", str(dest), "--format", "keras"]
    child = _spawn([sys.executable, "-c", EXPORT_CHILD, str(marker), *args])
    try:
        _wait(marker.exists, child, "the writer")
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=300)
    finally:
        child.kill()
    assert child.returncode == 143, stderr
    (line,) = _messages(stderr)
    assert (
        line
        == f"gemma-keras: interrupted: export to {dest} stopped by SIGTERM; nothing was written to {dest}."
    )
    assert not os.path.lexists(dest)
    assert list(dest.parent.iterdir()) == []  # no temporary either
