"""float32 against every quantization mode, one process per mode.

    python benchmarks/quantize.py --backend jax [--modes int8,int4] [--json out.json]

On the embedded real Gemma 3 270M, for float32, bfloat16 (`gk.load(dtype=
"bfloat16")`: weights and activations), int8 and int4 weight-only,
int8-activations (Keras' int8: weights and each layer's inputs) and gguf (the
file's own Q4_K_M blocks, packed for torch's int4 kernel): greedy decode
tokens/s (64 new tokens, after a warm-up decode of the same length), the
resident memory once the model is loaded (and quantized) and once it has
generated, the process's peak, perplexity (through the runner that generates) on a fixed text (the Zen of Python, from the standard
library), and greedy agreement: the share of the 64 greedy tokens, over three
prompts, that match float32's up to the first difference. Each mode runs in
its own process, so that one mode's freed float32 weights do not count in
another's memory.
"""

from __future__ import annotations

import argparse
import codecs
import json
import math
import os
import subprocess
import sys
import time

PROMPTS = ["The capital of France is", "def fibonacci(n):", "The largest planet in our solar system is"]
NEW = 64
MODES = ("float32", "bfloat16", "int8", "int4", "int8-activations", "gguf")
DTYPES = ("float32", "bfloat16")  # modes that are a dtype, not a quantization


def zen_of_python() -> str:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints it
        import this
    return codecs.decode(this.s, "rot13")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def runner_logits(runner, ids: list[int], piece: int = 16):
    """Logits after each of `ids`, fed `piece` at a time, as decoding feeds them (the packed blocks of
    "gguf" serve calls of few rows only)."""
    import numpy as np

    cache, mask = runner.new_cache(1, len(ids)), runner.prepare_mask(np.ones((1, len(ids))))
    parts = []
    for start in range(0, len(ids), piece):
        logits, cache = runner.forward_all(np.asarray([ids[start : start + piece]]), mask, cache, start)
        parts.append(logits[0])
    return np.concatenate(parts)


def perplexity(lm, text: str) -> float:
    """Through the model's runner, which is what generates (for "gguf" on torch: the packed blocks)."""
    import numpy as np

    ids = lm.tokenizer.encode(text)
    logits = runner_logits(lm.runner, ids)[:-1].astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    logprobs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    nll = -logprobs[np.arange(len(ids) - 1), ids[1:]].mean()
    return math.exp(nll)


def measure_one(backend: str, mode: str) -> dict:
    """Runs in the child process: one mode, everything measured."""
    import gc

    import gemma_keras as gk
    from gemma_keras.generation.decode import generate_ids

    gk.use_backend(backend)
    lm = gk.load(dtype=mode) if mode in DTYPES else gk.load(quantize=mode)
    gc.collect()
    r: dict = {"backend": backend, "mode": mode, "rss_loaded_mb": rss_mb()}
    paths = [generate_ids(lm.runner, [lm.tokenizer.encode(p)], NEW)[0] for p in PROMPTS]  # also warms up
    start = time.perf_counter()
    lm.generate(PROMPTS[0], max_new_tokens=NEW, stop_token_ids=())
    r["tokens_per_s"] = NEW / (time.perf_counter() - start)
    r["perplexity"] = perplexity(lm, zen_of_python())
    r["rss_after_mb"] = rss_mb()
    r["peak_rss_mb"] = peak_rss_mb()
    r["paths"] = [list(map(int, p)) for p in paths]
    return r


def agreement(base: list, other: list) -> float:
    agree = total = 0
    for a, b in zip(base, other, strict=True):
        same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        agree += same
        total += len(a)
    return agree / total


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", required=True, choices=["jax", "tensorflow", "torch"])
    parser.add_argument("--modes", default=",".join(MODES[1:]), help="besides float32 (comma-separated)")
    parser.add_argument("--json")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # the child: one mode, JSON on stdout
    args = parser.parse_args()

    if args.only:
        print("RESULT " + json.dumps(measure_one(args.backend, args.only)))
        return 0
    modes = ["float32", *[m for m in args.modes.split(",") if m and m != "float32"]]
    results = []
    print(
        "| backend | mode | tok/s | RSS loaded | RSS after generating | peak RSS | perplexity | greedy agreement |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for mode in modes:  # each row as soon as it is measured: int4 on torch takes long
        proc = subprocess.run(
            [sys.executable, __file__, "--backend", args.backend, "--only", mode],
            capture_output=True,
            text=True,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"{mode} failed (exit {proc.returncode})")
        r = json.loads(lines[-1][len("RESULT ") :])
        results.append(r)
        r["greedy_agreement"] = agreement(results[0]["paths"], r["paths"])
        print(
            f"| {args.backend} | {r['mode']} | {r['tokens_per_s']:.1f} | {r['rss_loaded_mb']:.0f} MB "
            f"| {r['rss_after_mb']:.0f} MB | {r['peak_rss_mb']:.0f} MB | {r['perplexity']:.2f} "
            f"| {r['greedy_agreement']:.0%} |",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
