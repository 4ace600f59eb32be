"""What a user of `pip install '.[jax,model,serve,structured]'` does, in a virtualenv that holds nothing else.

`nox -s install_check` runs this with only the README's install: no test
extra, so a dependency that only the test tools bring in (as safetensors
once was) fails here. Each step prints one line; any failure exits non-zero.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

NOISE = ("absl::InitializeLog", "oneDNN", "cuInit", "normalizer.cc", "cudart_stub")


def step(name: str) -> None:
    print(f"install_check: {name}", flush=True)


def main() -> None:
    for extra_only in ("pytest", "transformers", "hypothesis"):
        if importlib.util.find_spec(extra_only) is not None:
            sys.exit(f"install_check: {extra_only} is installed, so this venv is not a plain user install")

    import gemma_keras as gk
    from gemma_keras.testing import write_tiny_gguf

    tmp = Path(tempfile.mkdtemp(prefix="gk-install-check-"))
    gguf = tmp / "tiny.gguf"
    write_tiny_gguf(gguf, "gemma3")

    step("load and generate")
    lm = gk.load(gguf)
    text = lm.generate("hello", max_new_tokens=4, stop_token_ids=())
    assert "".join(lm.stream("hello", max_new_tokens=4, stop_token_ids=())) == text

    step("export: Keras preset, safetensors, GGUF, and read each back")
    for dest, fmt in ((tmp / "preset", "keras"), (tmp / "hf", "safetensors"), (tmp / "m.gguf", "gguf")):
        lm.export(dest, format=fmt)
        assert gk.load(dest).generate("hello", max_new_tokens=4, stop_token_ids=()) == text, fmt

    step("fine-tune two steps and save adapters")
    records = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(4)]
    lm.finetune(records, lora_rank=2, max_steps=2, batch_size=2, sequence_length=32, verbose=False)
    lm.save_adapters(tmp / "adapters.npz")

    step("the command line: export to safetensors, quietly")
    cmd = [
        sys.executable,
        "-m",
        "gemma_keras.cli",
        "export",
        str(gguf),
        "--to",
        str(tmp / "hf2"),
        "--format",
        "safetensors",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    assert out.returncode == 0, out.stderr
    noisy = [line for line in out.stderr.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, f"third-party log lines on stderr: {noisy}"

    step("structured output, and the server answering over HTTP")
    # No extra keys: a random model may otherwise open a second key and run out of tokens
    # inside it, which is truncated JSON by design (finish_reason "length").
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    assert isinstance(json.loads(lm.generate("hello", max_new_tokens=16, json_schema=schema))["ok"], bool)
    from gemma_keras.serving.server import Server

    server = Server(lm, port=0, max_batch=2).start()
    try:
        body = {
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 16,
            "response_format": {"type": "json_schema", "json_schema": {"name": "ok", "schema": schema}},
        }
        request = urllib.request.Request(
            server.url + "/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            reply = json.loads(response.read())
        assert isinstance(json.loads(reply["choices"][0]["message"]["content"])["ok"], bool)
    finally:
        server.stop()

    step("the embedded model")
    real = gk.load()
    assert real.generate("The capital of France is", max_new_tokens=4).strip(), (
        "no text from the embedded model"
    )
    step("all good")


if __name__ == "__main__":
    main()
