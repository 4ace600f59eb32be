"""The gemma-keras command."""

from __future__ import annotations

import io

from gemma_keras import cli
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
