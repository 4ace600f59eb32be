"""Our `generate` against KerasHub's own `generate`, same weights, one process.

    python benchmarks/generate.py --backend jax [--new-tokens 128] [--json out.json]

Measured on the embedded real Gemma 3 270M, float32, batch 1, greedy:

- load: cold (GGUF assembly + conversion into an empty cache) and warm (from
  the cache) for us; KerasHub's `Gemma3CausalLM.from_preset` on the same
  cached preset (it cannot read GGUF);
- time to first token: ours from the call to the first token; KerasHub does
  not stream, so its first token arrives with the whole call;
- decode tokens/s for `--new-tokens` new tokens after a compile call, as
  new tokens over the whole call (prefill included), for both;
- a new length: a second call with 8 fewer new tokens (the same cache
  bucket for us), as a ratio to a repeated identical call (KerasHub
  recompiles for every new `max_length`);
- `stream` against `generate` for the same tokens, batch 8 against batch 1,
  and the resident memory after warm-up and after ten more calls (it must not
  grow with the number of calls);
- peak RSS of the process.

Speed is reported as ratios measured side by side in this run; no number here
is a pass/fail threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

PROMPT = "The capital of France is"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", required=True, choices=["jax", "tensorflow", "torch"])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--skip-cold", action="store_true", help="reuse the normal cache instead of an empty one"
    )
    args = parser.parse_args()

    tmp_cache = None
    if not args.skip_cold:
        tmp_cache = tempfile.mkdtemp(prefix="gk-bench-cache-")
        os.environ["GEMMA_KERAS_CACHE"] = tmp_cache

    import gemma_keras as gk

    gk.use_backend(args.backend)

    n = args.new_tokens
    r: dict = {"backend": args.backend, "new_tokens": n, "prompt": PROMPT}
    lm, r["ours_load_cold_s"] = timed(gk.load)
    lm, r["ours_load_warm_s"] = timed(gk.load)
    # KerasHub reads a Keras preset; the GGUF cache entry holds no weights, so one is written here.
    # lm.save refuses an existing directory that is not its own preset, so the preset goes inside one.
    preset_dir = tempfile.mkdtemp(prefix="gemma-keras-bench-preset-")
    entry = str(lm.save(os.path.join(preset_dir, "preset")))

    def ours(tokens: int) -> str:
        return lm.generate(PROMPT, max_new_tokens=tokens, stop_token_ids=())

    _, r["ours_first_call_s"] = timed(lambda: ours(n))  # compiles
    _, r["ours_repeat_s"] = timed(lambda: ours(n))
    _, r["ours_new_length_s"] = timed(lambda: ours(n - 8))
    start = time.perf_counter()
    stream = lm.stream(PROMPT, max_new_tokens=n, stop_token_ids=())
    next(stream)
    r["ours_ttft_s"] = time.perf_counter() - start
    stream.close()
    r["ours_tokens_per_s"] = n / r["ours_repeat_s"]
    r["ours_decode_only_tokens_per_s"] = (n - 1) / (r["ours_repeat_s"] - r["ours_ttft_s"])
    _, r["ours_stream_s"] = timed(lambda: "".join(lm.stream(PROMPT, max_new_tokens=n, stop_token_ids=())))
    r["stream_over_generate"] = r["ours_stream_s"] / r["ours_repeat_s"]
    batch = [PROMPT] * 8
    lm.generate(batch, max_new_tokens=n, stop_token_ids=())  # compile batch 8
    _, r["ours_batch8_s"] = timed(lambda: lm.generate(batch, max_new_tokens=n, stop_token_ids=()))
    r["batch8_tokens_per_s"] = 8 * n / r["ours_batch8_s"]
    r["batch8_over_batch1"] = r["batch8_tokens_per_s"] / r["ours_tokens_per_s"]
    r["rss_now_after_warmup_mb"] = current_rss_mb()
    for _ in range(10):
        ours(n)
    r["rss_now_after_10_more_calls_mb"] = current_rss_mb()
    r["rss_after_ours_mb"] = peak_rss_mb()

    from gemma_keras.backend import keras_hub_with_tensorflow

    keras_hub_with_tensorflow()  # its preprocessor needs the TensorFlow that gemma_keras hid from it
    import keras_hub

    hub, r["kerashub_load_warm_s"] = timed(lambda: keras_hub.models.Gemma3CausalLM.from_preset(entry))
    shutil.rmtree(preset_dir, ignore_errors=True)
    hub.compile(sampler="greedy")
    prompt_len = len(lm.tokenizer.encode(PROMPT))

    def theirs(tokens: int):
        return hub.generate(PROMPT, max_length=prompt_len + tokens, stop_token_ids=None)

    _, r["kerashub_first_call_s"] = timed(lambda: theirs(n))
    _, r["kerashub_repeat_s"] = timed(lambda: theirs(n))
    _, r["kerashub_new_length_s"] = timed(lambda: theirs(n - 8))
    r["kerashub_ttft_s"] = r["kerashub_repeat_s"]
    r["kerashub_tokens_per_s"] = n / r["kerashub_repeat_s"]
    r["peak_rss_mb"] = peak_rss_mb()

    r["decode_speed_ratio"] = r["ours_tokens_per_s"] / r["kerashub_tokens_per_s"]
    r["ours_new_length_ratio"] = r["ours_new_length_s"] / r["ours_repeat_s"]
    r["kerashub_new_length_ratio"] = r["kerashub_new_length_s"] / r["kerashub_repeat_s"]
    r["same_text"] = (
        ours(n) == hub.generate(PROMPT, max_length=prompt_len + n, stop_token_ids=None)[len(PROMPT) :]
    )

    print(json.dumps(r, indent=2))
    print(
        f"| {args.backend} | {r['ours_load_cold_s']:.1f} s | {r['ours_load_warm_s']:.1f} s "
        f"| {r['kerashub_load_warm_s']:.1f} s | {r['ours_ttft_s'] * 1000:.0f} ms "
        f"| {r['ours_tokens_per_s']:.1f} | {r['kerashub_tokens_per_s']:.1f} "
        f"| {r['decode_speed_ratio']:.2f}x | {r['ours_new_length_ratio']:.2f}x "
        f"| {r['kerashub_new_length_ratio']:.2f}x | {r['peak_rss_mb']:.0f} MB |"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    if tmp_cache:
        shutil.rmtree(tmp_cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
