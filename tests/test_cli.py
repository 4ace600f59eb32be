"""The gemma-keras command."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import pytest

from gemma_keras.backend.keras_hub_import import KERAS_HUB_TENSORFLOW_ENV
from gemma_keras.cli import commands as cli
from tests.conftest import BACKEND


def test_info_lists_backends_versions_devices_and_dtype(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"selected backend: {BACKEND}" in out
    assert "devices: cpu:0" in out
    assert "dtype on" in out and "float32" in out


def test_generate_streams_the_same_text_as_no_stream(tiny_gguf, tiny_model, capsys):
    path, _ = tiny_gguf("gemma3")
    expected = tiny_model("gemma3").generate("hello", max_new_tokens=6)
    assert cli.main(["generate", "hello", "--model", str(path), "--max-new-tokens", "6", "--no-stream"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert cli.main(["generate", "hello", "--model", str(path), "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_generate_passes_sampling_flags(tiny_gguf, tiny_model, capsys):
    path, _ = tiny_gguf("gemma3")
    args = ["--temperature", "0.9", "--top-k", "5", "--seed", "4", "--max-new-tokens", "6"]
    assert cli.main(["generate", "hello", "--model", str(path), "--no-stream", *args]) == 0
    expected = tiny_model("gemma3").generate("hello", max_new_tokens=6, temperature=0.9, top_k=5, seed=4)
    assert capsys.readouterr().out == expected + "\n"


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert cli.main(["generate", "hello", "--temperature", "-1"]) == 2
    assert "temperature must be >= 0" in capsys.readouterr().err
    assert cli.main(["generate", "hello", "--model", str(tmp_path / "missing.gguf")]) == 2
    err = capsys.readouterr().err
    assert "missing.gguf" in err and "Traceback" not in err
    assert cli.main(["generate", "hello", "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens" in capsys.readouterr().err


def test_chat_repl_streams_resets_and_exits(tiny_gguf, tiny_model):
    path, _ = tiny_gguf("gemma3")
    args = cli.build_parser().parse_args(["chat", "--model", str(path), "--max-new-tokens", "4"])
    stdin = io.StringIO("hello\n/reset\nhello\n/exit\nnever read\n")
    stdout = io.StringIO()
    assert cli._cmd_chat(args, stdin=stdin, stdout=stdout) == 0
    out = stdout.getvalue()
    assert "(history cleared)" in out
    replies = [line.split("gemma> ", 1)[1] for line in out.splitlines() if "gemma> " in line]
    assert len(replies) == 2 and replies[0] == replies[1]  # same first turn after /reset
    assert "never read" not in out


def test_chat_notes_dropped_turns_on_stderr(tiny_gguf, tiny_model, capsys):
    path, _ = tiny_gguf("gemma3")  # context 512
    args = cli.build_parser().parse_args(["chat", "--model", str(path), "--max-new-tokens", "300"])
    line = "the capital of France is Paris " * 4
    stdout = io.StringIO()
    assert cli._cmd_chat(args, stdin=io.StringIO(f"{line}\n" * 6), stdout=stdout) == 0
    err = capsys.readouterr().err
    assert "gemma-keras: note: the conversation no longer fit the context of 512 tokens" in err
    assert "Traceback" not in err and "(error" not in stdout.getvalue()


def test_finetune_writes_adapters_and_resumes(tiny_gguf, tmp_path, capsys):
    import json

    import gemma_keras as gk
    from tests.test_finetune import RECORDS

    path, _ = tiny_gguf("gemma3")
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\nnot json\n")
    out = tmp_path / "run"
    args = [
        "finetune",
        str(data),
        "--model",
        str(path),
        "--out",
        str(out),
        "--lora-rank",
        "4",
        "--batch-size",
        "4",
        "--sequence-length",
        "64",
        "--learning-rate",
        "0.01",
        "--quiet",
    ]
    assert cli.main(args) == 2
    assert "train.jsonl:11: not valid JSON" in capsys.readouterr().err
    assert cli.main([*args, "--skip-bad-records", "--max-steps", "2"]) == 0
    report = capsys.readouterr().out
    assert "trained 2 steps on 10 records, 1 bad records skipped" in report
    assert (out / "adapters.npz").exists()
    lm = gk.load(path).load_adapters(out / "adapters.npz")
    assert lm.backbone._gemma_keras_lora["rank"] == 4
    assert cli.main([*args, "--skip-bad-records", "--max-steps", "2", "--resume"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out


NOISE = ("absl::InitializeLog", "oneDNN", "cuInit", "normalizer.cc", "cudart_stub")


def _run_cli(*args: str, **env_updates: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "GEMMA_KERAS_VERBOSE")}
    env.update(KERAS_BACKEND=BACKEND, **env_updates)
    return subprocess.run(
        [sys.executable, "-m", "gemma_keras.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_third_party_log_lines_are_hidden_unless_verbose(tiny_gguf):
    path, _ = tiny_gguf("gemma3")
    args = ("generate", "hello", "--model", str(path), "--max-new-tokens", "2", "--no-stream")
    # TensorFlow writes most of these lines, and off its backend it is imported only on request.
    tf = {KERAS_HUB_TENSORFLOW_ENV: "1"}
    quiet = _run_cli(*args, **tf)
    assert quiet.returncode == 0, quiet.stderr
    assert [line for line in quiet.stderr.splitlines() if any(n in line for n in NOISE)] == []
    loud = _run_cli(*args, "--verbose", **tf)
    assert loud.returncode == 0 and loud.stdout == quiet.stdout
    assert any(n in loud.stderr for n in NOISE)  # the lines exist; --verbose shows them


def test_chat_warns_when_the_model_is_not_instruction_tuned(tiny_gguf, tmp_path):
    from gemma_keras.testing import write_tiny_gguf

    path, _ = tiny_gguf("gemma3")
    args = cli.build_parser().parse_args(["chat", "--model", str(path), "--max-new-tokens", "2"])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli._cmd_chat(args, stdin=io.StringIO("/exit\n"), stdout=io.StringIO()) == 0
    assert "not an instruction-tuned one" in err.getvalue()
    tuned = tmp_path / "tiny-it.gguf"
    write_tiny_gguf(tuned, "gemma3", name="gemma-3-tiny-it")
    args = cli.build_parser().parse_args(["chat", "--model", str(tuned), "--max-new-tokens", "2"])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli._cmd_chat(args, stdin=io.StringIO("/exit\n"), stdout=io.StringIO()) == 0
    assert "instruction-tuned" not in err.getvalue()


def test_finetune_flags_are_checked_before_the_model_loads(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "hello"}\n')
    missing = str(tmp_path / "missing.gguf")  # loading it would fail: the flag must fail first
    base = ["finetune", str(data), "--out", str(tmp_path / "run"), "--model", missing]
    for flags, words in (
        (["--lora-rank", "0"], "lora_rank must be a positive integer"),
        (["--learning-rate", "5"], "learning_rate"),
        (["--decay", "sideways"], "decay must be one of"),
        (["--targets", "query,nope"], "unknown LoRA target 'nope'"),
    ):
        assert cli.main([*base, *flags]) == 2
        err = capsys.readouterr().err
        assert words in err and "missing.gguf" not in err, err


def test_every_subcommand_has_working_help(capsys):
    for command in ("info", "generate", "chat", "finetune", "export"):
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, "--help"])
        assert exit_.value.code == 0, command
        assert "--verbose" in capsys.readouterr().out
