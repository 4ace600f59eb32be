"""Start-up to the first token and peak RSS, per backend: this checkout, an older one, and llama.cpp.

    python benchmarks/start_up.py [--backends jax,torch,tensorflow] [--modes float32]
        [--before /path/to/older/checkout] [--llama-python /path/to/venv/bin/python] [--repeat 3]

Each measurement is a fresh process that imports gemma_keras, loads the
embedded Gemma 3 270M from a warm cache and generates one token, as issue
#13's start-up row asks (`vs_llama_cpp.startup`). Its wall time and peak RSS
(`ru_maxrss`) are recorded; the table shows the median of `--repeat` runs.
`--before DIR` runs the same command with `DIR` (another checkout of this
repository, for example a `git worktree` of an older commit) first on
`sys.path`, so both sides run in one session, one after the other.
`--llama-python` adds llama.cpp through llama-cpp-python, as in
`vs_llama_cpp.py`. One untimed run per backend first warms the caches (the
conversion cache, and JAX's compiled programs where this checkout keeps them).
"""

from __future__ import annotations

import argparse
import statistics
import sys

from vs_llama_cpp import llama_startup, startup  # benchmarks/vs_llama_cpp.py, beside this file


def median_of(measure, args: tuple, repeat: int) -> tuple[float, float]:
    runs = [measure(*args) for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="jax,torch,tensorflow")
    parser.add_argument("--modes", default="float32")
    parser.add_argument("--before", help="another checkout of gemma_keras to compare with")
    parser.add_argument("--llama-python", help="a Python with llama_cpp installed")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sides = [("now", None)] + ([("before", args.before)] if args.before else [])
    rows = []
    for backend in args.backends.split(","):
        for mode in args.modes.split(","):
            cells = {}
            for name, checkout in sides:
                print(f"measuring {backend} {mode} ({name})...", file=sys.stderr, flush=True)
                startup(backend, mode, checkout)  # warm-up
                cells[name] = median_of(startup, (backend, mode, checkout), args.repeat)
            rows.append((backend, mode, cells))
    llama = None
    if args.llama_python:
        from gemma_keras.sources.embedded import embedded_gguf

        model = str(embedded_gguf()[0])
        print("measuring llama.cpp...", file=sys.stderr, flush=True)
        llama_startup(args.llama_python, model)  # warm-up: the file in the page cache
        llama = median_of(llama_startup, (args.llama_python, model), args.repeat)
    print_table(rows, sides, llama)
    return 0


def print_table(rows, sides, llama) -> None:
    names = [name for name, _ in sides]
    head = ["backend", "mode"] + [f"{n}: s / MB" for n in names]
    if "before" in names:
        head += ["now / before (s)", "now / before (MB)"]
    if llama:
        head += ["now / llama.cpp (s)", "now / llama.cpp (MB)"]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for backend, mode, cells in rows:
        now = cells["now"]
        line = [backend, mode] + [f"{cells[n][0]:.1f} / {cells[n][1]:.0f}" for n in names]
        if "before" in cells:
            line += [f"{now[0] / cells['before'][0]:.2f}x", f"{now[1] / cells['before'][1]:.2f}x"]
        if llama:
            line += [f"{now[0] / llama[0]:.1f}x", f"{now[1] / llama[1]:.1f}x"]
        print("| " + " | ".join(line) + " |")
    if llama:
        print(f"\nllama.cpp: {llama[0]:.2f} s, {llama[1]:.0f} MB")


if __name__ == "__main__":
    sys.exit(main())
