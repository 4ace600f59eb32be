"""Every subcommand x bad arguments: exit 2, one line on stderr, no traceback, before the model loads.

Each case runs `python -m gemma_keras.cli` in a subprocess, so argparse's
own exits, argv decoding and stdin decoding are what a user gets. Arguments
are passed as bytes (`os.fsencode`), so a byte that is not UTF-8 reaches the
command exactly as a shell would pass it.

The model is a file that does not exist: a case whose message is about the
bad argument, not the missing model, was checked before any load began.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import BACKEND

ROOT = Path(__file__).resolve().parents[1]
BAD = b"caf\xff"  # Latin-1 bytes in a UTF-8 world: Python decodes them to a lone surrogate


def run_cli(
    *args, cwd: Path, stdin: bytes | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GEMMA_KERAS_VERBOSE"}
    env["KERAS_BACKEND"] = BACKEND
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    argv = [os.fsencode(sys.executable), b"-m", b"gemma_keras.cli"]
    argv += [a if isinstance(a, bytes) else os.fsencode(a) for a in args]
    return subprocess.run(argv, input=stdin, capture_output=True, env=env, cwd=cwd, timeout=timeout)


def error_lines(stderr: bytes) -> list[str]:
    return [line for line in stderr.decode("utf-8", "backslashreplace").splitlines() if line.strip()]


M = ("--model", "missing.gguf")  # loading it would fail: the bad argument must fail first
OUT = ("--out", "run")

CASES = {
    "info": [
        (["info", "--nope"], "unrecognized arguments: --nope"),
        (["info", "extra"], "unrecognized arguments: extra"),
        (["info", "--backend", "nope"], "Unknown backend 'nope'"),
        (["info", "--backend", ""], "Unknown backend ''"),
        (["info", "--backend", BAD], "--backend is not valid text"),
    ],
    "generate": [
        (["generate"], "the following arguments are required: prompt"),
        (["generate", "hi", "--nope", *M], "unrecognized arguments: --nope"),
        (["generate", "hi", "--max-new-tokens", "x", *M], "invalid int value: 'x'"),
        (["generate", "hi", "--max-new-tokens", "1.5", *M], "invalid int value: '1.5'"),
        (["generate", "hi", "--temperature", "warm", *M], "invalid float value: 'warm'"),
        (["generate", "hi", "--max-new-tokens", "0", *M], "--max-new-tokens must be >= 1"),
        (["generate", "hi", "--max-new-tokens", "-5", *M], "--max-new-tokens must be >= 1"),
        (["generate", "hi", "--temperature", "-1", *M], "temperature must be >= 0"),
        (["generate", "hi", "--temperature", "nan", *M], "temperature must be finite"),
        (["generate", "hi", "--top-k", "0", *M], "top_k must be a positive integer"),
        (["generate", "hi", "--top-p", "1.5", *M], "top_p must be in (0, 1]"),
        (["generate", "hi", "--seed", "-1", *M], "seed must be an integer >= 0"),
        (["generate", "", *M], "the prompt is empty"),
        (["generate", "hi", "--stop", "", *M], "stop strings must not be empty"),
        (["generate", "hi", "--dtype", "float8", *M], "Unsupported dtype 'float8'"),
        (["generate", "hi", "--dtype", "", *M], "Unsupported dtype ''"),
        (["generate", "hi", "--backend", "nope", *M], "Unknown backend 'nope'"),
        (["generate", "hi", "--model", ""], "--model is not a usable path"),
        (["generate", BAD, *M], "the prompt is not valid text"),
        (["generate", "hi", "--stop", BAD, *M], "--stop is not valid text"),
        (["generate", "hi", "--max-new-tokens", BAD, *M], "invalid int value"),
    ],
    "chat": [
        (["chat", "--nope", *M], "unrecognized arguments: --nope"),
        (["chat", "hello", *M], "unrecognized arguments: hello"),
        (["chat", "--max-new-tokens", "0", *M], "--max-new-tokens must be >= 1"),
        (["chat", "--temperature", "x", *M], "invalid float value: 'x'"),
        (["chat", "--top-p", "0", *M], "top_p must be in (0, 1]"),
        (["chat", "--dtype", "int4", *M], "Unsupported dtype 'int4'"),
        (["chat", "--system", BAD, *M], "--system is not valid text"),
    ],
    "finetune": [
        (["finetune", "train.jsonl", *M], "the following arguments are required: --out"),
        (["finetune", "train.jsonl", *OUT, "--nope", *M], "unrecognized arguments: --nope"),
        (["finetune", "train.jsonl", *OUT, "--lora-rank", "0", *M], "lora_rank must be a positive integer"),
        (["finetune", "train.jsonl", *OUT, "--lora-rank", "x", *M], "invalid int value: 'x'"),
        (
            ["finetune", "train.jsonl", *OUT, "--batch-size", "-2", *M],
            "batch_size must be a positive integer",
        ),
        (["finetune", "train.jsonl", *OUT, "--epochs", "0", *M], "epochs must be a positive integer"),
        (["finetune", "train.jsonl", *OUT, "--checkpoint-every", "0", *M], "checkpoint_every"),
        (["finetune", "train.jsonl", *OUT, "--learning-rate", "nan", *M], "learning_rate must be finite"),
        (["finetune", "train.jsonl", *OUT, "--seed", "-1", *M], "seed must be an integer >= 0"),
        (["finetune", "train.jsonl", *OUT, "--decay", "", *M], "decay must be one of"),
        (["finetune", "train.jsonl", *OUT, "--dtype", "f8", *M], "Unsupported dtype 'f8'"),
        (["finetune", "missing.jsonl", *OUT, *M], "the data file missing.jsonl does not exist"),
        (["finetune", "folder", *OUT, *M], "the data file folder is not a file"),
        (["finetune", "", *OUT, *M], "the data file is not a usable path"),
        (["finetune", "train.jsonl", *OUT, "--validation", "nope.jsonl", *M], "--validation nope.jsonl does"),
        (
            ["finetune", "train.jsonl", *OUT, "--validation", "folder", *M],
            "--validation folder is not a file",
        ),
        (["finetune", "train.jsonl", "--out", "train.jsonl", *M], "--out train.jsonl is a file"),
        (["finetune", "train.jsonl", "--out", "", *M], "--out is not a usable path"),
        (["finetune", "train.jsonl", "--out", "train.jsonl/run", *M], "train.jsonl is not a directory"),
        (["finetune", BAD + b".jsonl", *OUT, *M], "the data file is not valid text"),
        (["finetune", "train.jsonl", *OUT, "--targets", BAD, *M], "--targets is not valid text"),
    ],
    "export": [
        (["export", "missing.gguf"], "the following arguments are required: --to"),
        (["export", "missing.gguf", "--to", "x.gguf", "--nope"], "unrecognized arguments: --nope"),
        (["export", "missing.gguf", "--to", "x", "--format", "zip"], "invalid choice: 'zip'"),
        (["export", "missing.gguf", "--to", "x.gguf", "--dtype", "q4"], "invalid choice: 'q4'"),
        (["export", "missing.gguf", "--to", "x"], "Cannot tell the export format"),
        (["export", "missing.gguf", "--to", "x", "--format", "keras", "--dtype", "f16"], "own dtype"),
        (["export", "missing.gguf", "--to", "", "--format", "keras"], "--to is not a usable path"),
        (["export", "missing.gguf", "--to", "exists.gguf"], "exists.gguf already exists and is a file"),
        (["export", "missing.gguf", "--to", "train.jsonl/x.gguf"], "train.jsonl is not a directory"),
        (["export", "missing.gguf", "--to", BAD + b".gguf"], "--to is not valid text"),
        (["export", "", "--to", "x.gguf"], "the source is not a usable path"),
        (["export", BAD, "--to", "x.gguf"], "the source is not valid text"),
    ],
    "serve": [
        (["serve", "missing.gguf", "--nope"], "unrecognized arguments: --nope"),
        (["serve", "missing.gguf", "--port", "x"], "invalid int value: 'x'"),
        (["serve", "missing.gguf", "--port", "70000"], "--port must be 0..65535"),
        (["serve", "missing.gguf", "--max-batch", "0"], "--max-batch must be >= 1"),
        (["serve", "missing.gguf", "--max-queue", "-1"], "--max-queue must be >= 0"),
        (["serve", "missing.gguf", "--max-body-bytes", "10"], "--max-body-bytes must be >= 1024"),
        (["serve", "missing.gguf", "--grace", "-1"], "--grace must be >= 0"),
        (["serve", "missing.gguf", "--quantize", "int3"], "invalid choice: 'int3'"),
        (["serve", "missing.gguf", "--adapters", "nope.npz"], "--adapters nope.npz does not exist"),
        (["serve", "missing.gguf", "--backend", "nope"], "Unknown backend 'nope'"),
        (["serve", "folder/missing.gguf"], "the model folder/missing.gguf does not exist"),
        (["serve", BAD], "the model is not valid text"),
    ],
}


TABLE = [
    (f"{command}-{i}", args, words)
    for command, cases in CASES.items()
    for i, (args, words) in enumerate(cases)
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("cli-table")
    (work / "train.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    (work / "folder").mkdir()
    (work / "exists.gguf").write_bytes(b"not ours to replace")
    return work


@pytest.fixture(scope="module")
def results(workdir) -> dict[str, subprocess.CompletedProcess]:
    """Every case run once, a few at a time (each is a short-lived process that waits on little)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run_cli, *args, cwd=workdir) for name, args, _ in TABLE}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name, args, words", TABLE, ids=[name for name, _, _ in TABLE])
def test_a_user_mistake_exits_2_with_one_line_before_the_model_loads(results, workdir, name, args, words):
    result = results[name]
    lines = error_lines(result.stderr)
    assert result.returncode == 2, (args, result.returncode, lines)
    assert len(lines) == 1 and lines[0].startswith("gemma-keras: error: "), lines
    assert words in lines[0], lines
    assert "Traceback" not in lines[0]
    if "missing.gguf" in args:
        assert "missing.gguf" not in lines[0], lines  # the argument was checked before the load
    assert (workdir / "exists.gguf").read_bytes() == b"not ours to replace"
    assert not (workdir / "run").exists()


def test_every_subcommand_is_in_the_table():
    from gemma_keras.cli import build_parser

    assert set(CASES) == set(build_parser().commands)


def test_bad_bytes_on_chat_stdin_print_one_error_and_the_session_goes_on(tiny_gguf, tmp_path):
    path, _ = tiny_gguf("gemma3")
    stdin = b"hello " + BAD + b"\n\xfe\xff\nhello\n/exit\n"
    result = run_cli("chat", "--model", str(path), "--max-new-tokens", "3", cwd=tmp_path, stdin=stdin)
    err = result.stderr.decode("utf-8", "backslashreplace")
    assert result.returncode == 0, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("gemma-keras: error:")]
    assert len(errors) == 2, err  # one line per bad line
    assert "this line is not valid text" in errors[0] and "0xff" in errors[0]
    replies = [line for line in result.stdout.decode().splitlines() if "gemma> " in line]
    assert len(replies) == 1  # the good line after the bad ones still got its reply
