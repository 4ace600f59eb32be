"""gemma_keras against llama.cpp on the same GGUF, one table: every row of issue #13's targets.

    python benchmarks/vs_llama_cpp.py --llama-python /path/to/venv/bin/python \
        [--runs jax:float32,torch:gguf,tensorflow:float32] [--long] [--json out.json]

The file is the embedded Gemma 3 270M (Q4_K_M). llama.cpp runs through
llama-cpp-python (`--llama-python`: a Python that has `llama_cpp`, built from
its source package; not a dependency of gemma_keras, so not part of CI),
with 2 threads, as ours. Each run (backend:quantize mode) is measured in its
own process, one after another, so that runs do not share cores or memory.
Rows:

- decode tok/s: 64 greedy tokens after a short prompt, after a warm-up of
  the same length (both sides include the short prefill);
- perplexity on the Zen of Python, the same token ids on both sides (ours
  through the runner that generates);
- prefill tok/s at 512 and 2,048 prompt tokens (and 8,192 with `--long`):
  ours is `generate(ids, max_new_tokens=1)` after a warm-up of the same
  length, llama.cpp is `eval(ids)`;
- start-up: the wall time of a fresh process that imports, loads (warm
  cache) and generates one token, and that process's peak RSS; for
  llama.cpp the same through llama-cpp-python (its Python import included);
- the cache entry of the embedded model (ours; llama.cpp reads the GGUF);
- chat: time to the first token of the 10th turn over the 1st, same message
  length, on the first run's backend (`lm.chat`, which keeps the cache).

Ratios are ours over llama.cpp's (for perplexity and times: lower is better).
Numbers on a shared 2-core machine are noisy; this reports what one run saw.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

NEW = 64
PROMPT = "The capital of France is"
CHAT_TURNS = 10


def zen_of_python() -> str:
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13")


def long_ids(tokenizer, n: int) -> list[int]:
    """`n` token ids of real text: the Zen of Python over and over, after BOS."""
    body = tokenizer.encode(zen_of_python(), add_bos=False)
    ids = tokenizer.encode("", add_bos=True)
    while len(ids) < n:
        ids += body
    return ids[:n]


def perplexity_from(logits, ids: list[int]) -> float:
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)[: len(ids) - 1]
    logits -= logits.max(axis=-1, keepdims=True)
    logprobs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return math.exp(-logprobs[np.arange(len(ids) - 1), ids[1:]].mean())


# --- the children ---------------------------------------------------------------
def ours(backend: str, mode: str, sizes: list[int], chat: bool) -> dict:

    import gemma_keras as gk

    gk.use_backend(backend)
    lm = gk.load(quantize=None if mode == "float32" else mode)
    r: dict = {}
    lm.generate(PROMPT, max_new_tokens=NEW, stop_token_ids=())  # warm-up: compiles every shape used
    start = time.perf_counter()
    lm.generate(PROMPT, max_new_tokens=NEW, stop_token_ids=())
    r["decode_tok_s"] = NEW / (time.perf_counter() - start)
    from quantize import runner_logits  # benchmarks/quantize.py, beside this file

    ids = lm.tokenizer.encode(zen_of_python())
    r["perplexity"] = perplexity_from(runner_logits(lm.runner, ids), ids)
    r["zen_ids"] = ids
    for n in sizes:
        prompt = long_ids(lm.tokenizer, n)
        lm.generate(prompt, max_new_tokens=1, stop_token_ids=())  # warm-up at this length
        start = time.perf_counter()
        lm.generate(prompt, max_new_tokens=1, stop_token_ids=())
        r[f"prefill_{n}_tok_s"] = n / (time.perf_counter() - start)
    if chat:
        r["chat_ttft"] = chat_ttft(lm)
    return r


def chat_ttft(lm) -> list[float]:
    """Time to the first streamed piece of each of `CHAT_TURNS` replies, after a warm-up conversation."""
    words = zen_of_python().split()
    messages = [" ".join(words[i * 9 : i * 9 + 40]) for i in range(CHAT_TURNS)]  # about the same length
    times = []
    for warm in (True, False):
        conversation = lm.chat()
        for message in messages:
            start = time.perf_counter()
            stream = conversation.stream(message, max_new_tokens=16, stop_token_ids=())
            next(iter(stream))
            if not warm:
                times.append(time.perf_counter() - start)
            for _ in stream:
                pass
    return times


def llama(model: str, sizes: list[int], zen_ids: list[int]) -> dict:
    import numpy as np
    from llama_cpp import Llama

    n_ctx = max([*sizes, len(zen_ids)]) + NEW + 8
    # logits_all=True would make every prefill compute the 262k-row output projection at every position:
    # only the perplexity needs that, so it gets its own instance.
    scorer = Llama(model_path=model, n_ctx=n_ctx, logits_all=True, n_threads=2, verbose=False, seed=0)
    scorer.eval(zen_ids)
    r: dict = {"perplexity": perplexity_from(np.asarray(scorer.scores[: len(zen_ids)]), zen_ids)}
    del scorer
    llm = Llama(model_path=model, n_ctx=n_ctx, n_threads=2, verbose=False, seed=0)
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True)

    def decode() -> float:
        start = time.perf_counter()
        for i, _ in enumerate(
            llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True)
        ):
            if i + 1 == NEW:
                break
        return NEW / (time.perf_counter() - start)

    decode()
    r["decode_tok_s"] = decode()
    body = zen_ids[1:]
    for n in sizes:
        ids = zen_ids[:1]
        while len(ids) < n:
            ids += body
        ids = ids[:n]
        for _ in range(2):  # the second is measured
            llm.reset()
            start = time.perf_counter()
            llm.eval(ids)
            took = time.perf_counter() - start
        r[f"prefill_{n}_tok_s"] = n / took
    return r


# --- the parent -----------------------------------------------------------------
def child(python: str, args: list[str]) -> dict:
    proc = subprocess.run([python, __file__, *args], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"{' '.join(args)} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT ") :])


def timed_process(command: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status:
        raise SystemExit(f"{command[:3]} failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def startup(backend: str, mode: str, checkout: str | None = None) -> tuple[float, float]:
    """A fresh process that loads and generates one token; `checkout`: another copy of gemma_keras to run."""
    quantize = "None" if mode == "float32" else repr(mode)
    code = f"import gemma_keras as gk; gk.use_backend({backend!r}); gk.load(quantize={quantize}).generate('Hi', max_new_tokens=1)"
    if checkout:
        # First on sys.path, before the directory `-c` puts there and any editable install.
        code = f"import sys; sys.path.insert(0, {os.path.abspath(checkout)!r}); " + code
    return timed_process([sys.executable, "-c", code])


def llama_startup(python: str, model: str) -> tuple[float, float]:
    code = (
        "from llama_cpp import Llama; "
        f"Llama(model_path={model!r}, n_threads=2, verbose=False)('Hi', max_tokens=1)"
    )
    return timed_process([python, "-c", code])


def cache_entry_mb() -> float:
    from gemma_keras.sources import cache
    from gemma_keras.sources.embedded import embedded_package

    entry = cache.cache_dir() / "gguf" / embedded_package().EXPECTED_SHA256
    return sum(p.stat().st_size for p in entry.rglob("*") if p.is_file()) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llama-python", required=False)
    parser.add_argument("--runs", default="jax:float32,torch:gguf,tensorflow:float32")
    parser.add_argument("--long", action="store_true", help="also prefill 8,192 tokens (minutes)")
    parser.add_argument("--json")
    parser.add_argument("--ours", help=argparse.SUPPRESS)  # child: backend:mode[:chat]
    parser.add_argument("--llama", help=argparse.SUPPRESS)  # child: the model path
    parser.add_argument("--sizes", default="512,2048", help=argparse.SUPPRESS)
    parser.add_argument("--zen-ids", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.ours:
        backend, mode, *chat = args.ours.split(":")
        print("RESULT " + json.dumps(ours(backend, mode, sizes, bool(chat))))
        return 0
    if args.llama:
        print("RESULT " + json.dumps(llama(args.llama, sizes, json.loads(args.zen_ids))))
        return 0
    if not args.llama_python:
        parser.error("--llama-python is required (a Python with llama_cpp installed)")
    if args.long:
        sizes.append(8192)
    from gemma_keras.sources.embedded import embedded_gguf

    model = str(embedded_gguf()[0])
    runs = [tuple(r.split(":")) for r in args.runs.split(",")]
    results: dict = {"runs": {}, "sizes": sizes}
    for i, (backend, mode) in enumerate(runs):
        tag = f"{backend}:{mode}" + (":chat" if i == 0 else "")
        print(f"measuring {backend} {mode}...", file=sys.stderr, flush=True)
        r = child(sys.executable, ["--ours", tag, "--sizes", ",".join(map(str, sizes))])
        r["startup_s"], r["peak_rss_mb"] = startup(backend, mode)
        results["runs"][f"{backend} {mode}"] = r
    first = next(iter(results["runs"].values()))
    print("measuring llama.cpp...", file=sys.stderr, flush=True)
    lr = child(
        args.llama_python,
        ["--llama", model, "--sizes", ",".join(map(str, sizes)), "--zen-ids", json.dumps(first["zen_ids"])],
    )
    lr["startup_s"], lr["peak_rss_mb"] = llama_startup(args.llama_python, model)
    results["llama.cpp"] = lr
    results["cache_entry_mb"] = cache_entry_mb()
    results["gguf_mb"] = os.path.getsize(model) / 2**20
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def print_table(results: dict) -> None:
    lr = results["llama.cpp"]
    runs = results["runs"]
    names = list(runs)
    print("| measure | llama.cpp | " + " | ".join(f"ours: {n}" for n in names) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in names) + " |")

    def row(label: str, key: str, fmt: str) -> None:
        cells = []
        for n in names:
            ours_value = runs[n][key]
            ratio = ours_value / lr[key]
            cells.append(f"{ours_value:{fmt}} ({ratio:.2f}x)")
        print(f"| {label} | {lr[key]:{fmt}} | " + " | ".join(cells) + " |")

    row("decode tok/s, batch 1", "decode_tok_s", ".1f")
    row("perplexity, Zen of Python", "perplexity", ".3f")
    for n in results["sizes"]:
        row(f"prefill tok/s, {n} tokens", f"prefill_{n}_tok_s", ".0f")
    row("start-up to first token, warm cache (s)", "startup_s", ".1f")
    row("peak RSS of that process (MB)", "peak_rss_mb", ".0f")
    print(
        f"| cache entry, embedded model (MB) | none: reads the {results['gguf_mb']:.0f} MB GGUF "
        f"| {results['cache_entry_mb']:.0f} |"
    )
    ttft = next(iter(runs.values())).get("chat_ttft")
    if ttft:
        print(
            f"| chat TTFT turn {len(ttft)} / turn 1 ({names[0]}) | - | "
            f"{ttft[-1]:.2f} s / {ttft[0]:.2f} s = {ttft[-1] / ttft[0]:.2f}x |"
        )


if __name__ == "__main__":
    sys.exit(main())
