"""Prefill speed at long prompt lengths: this checkout against an older one, side by side.

    python benchmarks/prefill.py [--backends jax,tensorflow] [--sizes 512,2048,4096]
        [--before /path/to/older/checkout] [--repeat 2]

For each backend and side, one fresh process loads the embedded Gemma 3 270M
(float32) and, per prompt length, runs `lm.generate(prompt, max_new_tokens=1)`
once to compile that shape and then `--repeat` more times; a cell is the
best of those, in prompt tokens per second. The prompt is the same text at
every length (`vs_llama_cpp.long_ids`). `--before DIR` puts another checkout
of this repository first on `sys.path` for its side, as `start_up.py` does.
Each side also prints the first token it picked, so that a change that alters
the output shows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = """
import json, sys, time
sys.path.insert(0, {here!r})
{checkout}
import gemma_keras as gk
gk.use_backend({backend!r})
from vs_llama_cpp import long_ids
lm = gk.load()
out = {{}}
for n in {sizes!r}:
    prompt = long_ids(lm.tokenizer, n)
    first = lm.generate(prompt, max_new_tokens=1, stop_token_ids=())
    times = []
    for _ in range({repeat}):
        start = time.perf_counter()
        lm.generate(prompt, max_new_tokens=1, stop_token_ids=())
        times.append(time.perf_counter() - start)
    out[n] = [n / min(times), first]
print(json.dumps(out))
"""


def measure(backend: str, sizes: list[int], repeat: int, checkout: str | None) -> dict:
    path = f"sys.path.insert(0, {os.path.abspath(checkout)!r})" if checkout else ""
    code = CHILD.format(here=HERE, checkout=path, backend=backend, sizes=sizes, repeat=repeat)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{backend} ({checkout or 'this checkout'}) failed:\n{done.stderr[-3000:]}")
    return {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="jax,tensorflow")
    parser.add_argument("--sizes", default="512,2048,4096")
    parser.add_argument("--before", help="another checkout of gemma_keras to compare with")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    sides = [("before", args.before)] if args.before else []
    sides.append(("now", None))
    print(
        "| backend | prompt tokens | "
        + " | ".join(f"{n} (tok/s)" for n, _ in sides)
        + " | same first token |"
    )
    print("|" + " --- |" * (len(sides) + 3))
    for backend in args.backends.split(","):
        cells = {}
        for name, checkout in sides:
            print(f"measuring {backend} ({name})...", file=sys.stderr, flush=True)
            cells[name] = measure(backend, sizes, args.repeat, checkout)
        for n in sizes:
            speeds = " | ".join(f"{cells[name][n][0]:.0f}" for name, _ in sides)
            same = len({cells[name][n][1] for name, _ in sides}) == 1
            print(f"| {backend} | {n} | {speeds} | {'yes' if same else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
