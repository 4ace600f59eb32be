"""The server under 1, 8 and 32 concurrent streams, against KerasHub's static batch on the same prompts.

    python benchmarks/serve.py --backend jax [--new-tokens 64] [--json out.json]

Starts `gemma-keras serve`'s server in this process on a loopback port with
the embedded real Gemma 3 270M (float32, `max_batch` 32), and drives it
with the official `openai` client from C threads, each sending streamed
completions back to back. The threads run in a child process (`--clients
process`, the default), as real clients run outside the server; with
`--clients thread` they run in the server's process and take its GIL in
turns with the engine. Every request generates exactly `--new-tokens`
tokens (`ignore_eos`), greedy.

Reported per concurrency C: aggregate generated tokens/s over the wall time
of the whole run, and time to first token p50/p99 (from sending the request
to the first streamed token, queueing included).

The reference is KerasHub's `Gemma3CausalLM.generate` on the same cached
weights, in static batches of C of the same prompts, as a server without
continuous batching would run them: tokens/s over the whole call, and its
"first token", which arrives with the whole batch.
llama.cpp's `llama-server` is not built here, so it is not compared.

Speed is reported as ratios measured side by side in this run; no number here
is a pass/fail threshold.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time

WORDS = ["France", "Paris", "the model", "a river", "the sea", "music", "winter", "a city"]


def prompts(count: int) -> list[str]:
    return [f"Tell me about {WORDS[i % len(WORDS)]} number {i}." for i in range(count)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def drive(client, model: str, concurrency: int, per_stream: int, new_tokens: int) -> dict:
    texts = prompts(concurrency * per_stream)
    ttfts: list[float] = []
    tokens = [0]
    lock = threading.Lock()

    def worker(k: int) -> None:
        for j in range(per_stream):
            sent = time.perf_counter()
            first = None
            stream = client.completions.create(
                model=model,
                prompt=texts[k * per_stream + j],
                max_tokens=new_tokens,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
            for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].text:
                    first = time.perf_counter() - sent
                if chunk.usage is not None:
                    with lock:
                        tokens[0] += chunk.usage.completion_tokens
            with lock:
                ttfts.append(first if first is not None else float("nan"))

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": len(texts),
        "tokens": tokens[0],
        "wall_s": wall,
        "tokens_per_s": tokens[0] / wall,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p99_s": percentile(ttfts, 0.99),
    }


def drive_elsewhere(url: str, model: str, concurrency: int, per_stream: int, new_tokens: int) -> dict:
    """`drive` from a child process: the clients parse their streams without taking the server's GIL,
    as clients on other processes or machines do; they still share this machine's cores."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_drive_in_child, (url, model, concurrency, per_stream, new_tokens))


def _drive_in_child(url: str, model: str, concurrency: int, per_stream: int, new_tokens: int) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
    return drive(client, model, concurrency, per_stream, new_tokens)


def kerashub(hub, lm, concurrency: int, new_tokens: int) -> dict:
    batch = prompts(concurrency)
    longest = max(len(lm.tokenizer.encode(p)) for p in batch)
    max_length = longest + new_tokens
    hub.generate(batch, max_length=max_length, stop_token_ids=None)  # compiles
    start = time.perf_counter()
    hub.generate(batch, max_length=max_length, stop_token_ids=None)
    wall = time.perf_counter() - start
    # Rows shorter than the longest prompt get more than new_tokens; count what a server would return.
    return {
        "concurrency": concurrency,
        "tokens_per_s": concurrency * new_tokens / wall,
        "first_token_s": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", required=True, choices=["jax", "tensorflow", "torch"])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--levels", default="1,8,32", help="concurrency levels")
    parser.add_argument("--no-kerashub", action="store_true")
    parser.add_argument(
        "--clients",
        choices=["process", "thread"],
        default="process",
        help="run the client threads in a child process (default) or in this one, beside the server",
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    import gemma_keras as gk

    gk.use_backend(args.backend)
    from openai import OpenAI

    from gemma_keras.serving.server import Server

    levels = [int(x) for x in args.levels.split(",")]
    lm = gk.load()
    started = time.perf_counter()
    server = Server(lm, port=0, max_batch=max(levels), max_queue=4 * max(levels)).start()
    results: dict = {
        "backend": args.backend,
        "new_tokens": args.new_tokens,
        "ready_s": time.perf_counter() - started,
    }
    client = OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=3600)
    model = server.state.model_name
    results["ours"] = []
    try:
        late = server.state.metrics.late_compiles
        for c in levels:
            per_stream = 4 if c == 1 else 2 if c <= 8 else 1
            compiled = late._value.get()
            if args.clients == "process":
                row = drive_elsewhere(server.url, model, c, per_stream, args.new_tokens)
            else:
                row = drive(client, model, c, per_stream, args.new_tokens)
            row["clients"] = args.clients
            # Shapes compiled while serving (each stops the batch for seconds); the warm-up should leave none.
            row["compiles_after_ready"] = int(late._value.get() - compiled)
            results["ours"].append(row)
            print(json.dumps(row), flush=True)
    finally:
        server.stop()
    single = results["ours"][0]["tokens_per_s"]
    for row in results["ours"]:
        row["over_single_stream"] = row["tokens_per_s"] / single
    if not args.no_kerashub:
        from gemma_keras.backend import keras_hub_with_tensorflow

        keras_hub_with_tensorflow()  # its preprocessor needs the TensorFlow that gemma_keras hid from it
        import keras_hub

        # KerasHub reads a Keras preset; the GGUF cache entry holds no weights, so one is written here.
        # lm.save refuses an existing directory that is not its own preset, so the preset goes inside one.
        with tempfile.TemporaryDirectory(prefix="gemma-keras-bench-preset-") as tmp:
            hub = keras_hub.models.Gemma3CausalLM.from_preset(str(lm.save(f"{tmp}/preset")))
        hub.compile(sampler="greedy")
        results["kerashub"] = [kerashub(hub, lm, c, args.new_tokens) for c in levels]
        for ours, theirs in zip(results["ours"], results["kerashub"], strict=True):
            ours["over_kerashub_static"] = ours["tokens_per_s"] / theirs["tokens_per_s"]
    print(json.dumps(results, indent=2))
    print(f"ready after {results['ready_s']:.1f} s (load excluded; warm-up at max_batch {max(levels)})")
    print(
        "| backend | streams | tokens/s | x single stream | TTFT p50 | TTFT p99 | compiles after ready "
        "| KerasHub static tokens/s | ours / KerasHub |"
    )
    for i, row in enumerate(results["ours"]):
        hub = results.get("kerashub", [{}] * len(levels))[i]
        print(
            f"| {args.backend} | {row['concurrency']} | {row['tokens_per_s']:.1f} | {row['over_single_stream']:.2f}x "
            f"| {row['ttft_p50_s'] * 1000:.0f} ms | {row['ttft_p99_s'] * 1000:.0f} ms "
            f"| {row['compiles_after_ready']} | {hub.get('tokens_per_s', float('nan')):.1f} | {row.get('over_kerashub_static', float('nan')):.2f}x |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
