"""Our model against llama.cpp on the same GGUF: last-token logits and 16 greedy tokens.

    python benchmarks/llama_cpp_parity.py --llama-python /path/to/venv/bin/python [--real] [--backend jax]

`--llama-python` is a Python that has `llama_cpp` (llama-cpp-python, built
from its source package: `pip install llama-cpp-python==0.3.36`, about 10
minutes on 2 cores); llama.cpp is not a dependency of gemma_keras, so this
check is not part of CI. Each file is run in llama.cpp (its default
settings: f16 KV cache, its own CPU kernels) and in gemma_keras (float32):

- the Gemma 4 and Gemma 3n GGUFs in `tests/data/converted/`, written by
  llama.cpp's own `convert_hf_to_gguf.py` from tiny random checkpoints;
- our GGUF export of each Gemma 4 model (`lm.export(...)`, f16);
- with `--real`, our f16 GGUF export of the embedded real Gemma 3 270M.

It prints, per file and prompt, the largest logit difference and whether the
greedy tokens are the same. llama.cpp computes in its own precision (f16
weights, f16 or f32 accumulations), so logits differ by a few 1e-3; the
tokens should not. A file llama.cpp refuses is reported with its reason.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "converted"
PROMPTS = [
    "the capital of France is Paris and the model of the world",
    "hello world model user the of and is in to",
]
NEW_TOKENS = 16


def worker(job_file: str) -> None:
    """Runs in the llama_cpp Python: last-token logits and greedy tokens for each prompt."""
    import numpy as np
    from llama_cpp import Llama

    job = json.loads(Path(job_file).read_text())
    llm = Llama(model_path=job["model"], n_ctx=512, logits_all=True, verbose=True, n_threads=2, seed=0)
    results = []
    for ids in job["prompts"]:
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        tokens = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            tokens.append(int(token))
            if len(tokens) == job["new_tokens"]:
                break
        results.append({"logits": logits.tolist(), "tokens": tokens})
    print(json.dumps(results))


def llama_cpp(python: str, model: Path, prompts: list[list[int]]) -> list[dict] | str:
    """llama.cpp's results, or the reason it failed."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"model": str(model), "prompts": prompts, "new_tokens": NEW_TOKENS}, f)
    try:
        run = subprocess.run(
            [python, __file__, "--worker", f.name], capture_output=True, text=True, timeout=600
        )
    finally:
        os.unlink(f.name)
    if run.returncode:
        lines = [
            line for line in run.stderr.splitlines() if "error" in line.lower() or "assert" in line.lower()
        ]
        return (lines or run.stderr.splitlines()[-1:] or [f"exit {run.returncode}"])[0].strip()
    return json.loads(run.stdout)


def compare(python: str, name: str, path: Path, lm) -> list[dict]:
    import numpy as np

    prompts = [lm.tokenizer.encode(p) for p in PROMPTS]
    theirs = llama_cpp(python, path, prompts)
    if isinstance(theirs, str):
        print(f"{name}: llama.cpp refused it: {theirs}")
        return [{"file": name, "error": theirs}]
    rows = []
    for ids, result in zip(prompts, theirs, strict=True):
        ours = lm.logits(ids)
        diff = float(np.abs(np.asarray(result["logits"])[: ours.shape[0]] - ours).max())
        text = lm.generate(ids, max_new_tokens=NEW_TOKENS, stop_token_ids=())
        same = text == lm.tokenizer.decode(result["tokens"])
        rows.append({"file": name, "prompt_tokens": len(ids), "max_logit_diff": diff, "same_tokens": same})
        print(f"{name}: {len(ids)} prompt tokens, max |logit diff| {diff:.2e}, same greedy tokens: {same}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-python", help="a Python interpreter with llama_cpp installed")
    parser.add_argument("--backend", default="jax")
    parser.add_argument("--real", action="store_true", help="also our export of the real Gemma 3 270M")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    if not args.llama_python:
        parser.error("--llama-python is required (a Python with llama_cpp installed)")
    os.environ["KERAS_BACKEND"] = args.backend
    import gemma_keras as gk

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("kv_shared", "moe", "gemma3n"):
            path = DATA / f"{name}.gguf"
            lm = gk.load(path)
            rows += compare(args.llama_python, f"converter's {name}.gguf", path, lm)
            if lm.info.architecture == "gemma4":
                exported = lm.export(Path(tmp) / f"{name}-ours.gguf")
                rows += compare(args.llama_python, f"our export of {name}", exported, gk.load(exported))
        if args.real:
            lm = gk.load()
            exported = lm.export(Path(tmp) / "gemma3-270m-f16.gguf")
            rows += compare(args.llama_python, "our f16 export of the real Gemma 3 270M", exported, lm)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
