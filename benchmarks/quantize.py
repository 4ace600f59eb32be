"""int8 weight quantization against float32, same model, one process.

    python benchmarks/quantize.py --backend jax [--json out.json]

On the embedded real Gemma 3 270M: greedy decode tokens/s (64 new tokens),
the resident memory after load and after quantization, perplexity on a fixed
text (the Zen of Python, from the standard library), and greedy agreement:
the share of the 64 greedy tokens, over three prompts, that match float32's
up to the first difference.
"""

from __future__ import annotations

import argparse
import codecs
import json
import math
import os
import sys
import time

PROMPTS = ["The capital of France is", "def fibonacci(n):", "The largest planet in our solar system is"]
NEW = 64


def zen_of_python() -> str:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints it
        import this
    return codecs.decode(this.s, "rot13")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def perplexity(lm, text: str) -> float:
    import numpy as np

    ids = lm.tokenizer.encode(text)
    logits = lm.score(ids)[:-1].astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    logprobs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    nll = -logprobs[np.arange(len(ids) - 1), ids[1:]].mean()
    return math.exp(nll)


def measure(lm) -> dict:
    from gemma_keras.generation.decode import generate_ids

    paths = [generate_ids(lm.runner, [lm.tokenizer.encode(p)], NEW)[0] for p in PROMPTS]
    start = time.perf_counter()
    lm.generate(PROMPTS[0], max_new_tokens=NEW, stop_token_ids=())
    seconds = time.perf_counter() - start
    return {"tokens_per_s": NEW / seconds, "paths": paths, "perplexity": perplexity(lm, zen_of_python())}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", required=True, choices=["jax", "tensorflow", "torch"])
    parser.add_argument("--json")
    args = parser.parse_args()

    import gemma_keras as gk

    gk.use_backend(args.backend)
    lm = gk.load()
    r: dict = {"backend": args.backend, "rss_float32_mb": rss_mb()}
    base = measure(lm)
    lm.quantize("int8")
    import gc

    gc.collect()
    r["rss_int8_mb"] = rss_mb()
    quant = measure(lm)
    agree = total = 0
    for a, b in zip(base["paths"], quant["paths"], strict=True):
        same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        agree += same
        total += len(a)
    r.update(
        float32_tokens_per_s=base["tokens_per_s"],
        int8_tokens_per_s=quant["tokens_per_s"],
        float32_perplexity=base["perplexity"],
        int8_perplexity=quant["perplexity"],
        greedy_agreement=agree / total,
    )
    print(json.dumps(r, indent=2))
    print(
        f"| {args.backend} | {r['float32_tokens_per_s']:.1f} | {r['int8_tokens_per_s']:.1f} "
        f"| {r['rss_float32_mb']:.0f} MB | {r['rss_int8_mb']:.0f} MB "
        f"| {r['float32_perplexity']:.2f} | {r['int8_perplexity']:.2f} | {r['greedy_agreement']:.0%} |"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
