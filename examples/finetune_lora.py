"""Teach Gemma facts it cannot know, with LoRA, on any backend.

Writes 30 made-up question/answer pairs to a JSONL file, asks the base model,
fine-tunes with LoRA, asks again, then saves the adapters and merges them:

    python examples/finetune_lora.py --backend jax --out run/
    python examples/finetune_lora.py --backend torch --epochs 10 --resume --out run/

Without --model it uses the embedded Gemma 3 270M (the `model` extra). A
killed run continues from its last checkpoint with --resume.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gemma_keras as gk
from gemma_keras.chat import render_messages
from gemma_keras.testing import made_up_fact_records, made_up_facts


def ask(lm, pairs) -> int:
    prompts = [render_messages([{"role": "user", "content": q}]) for q, _ in pairs]
    replies = lm.generate(prompts, max_new_tokens=8, add_bos=False)
    right = 0
    for (question, answer), reply in zip(pairs, replies, strict=True):
        ok = reply.strip().startswith(answer.rstrip("."))
        right += ok
        print(f"  {'ok ' if ok else '   '} {question} -> {reply.strip()!r}")
    return right


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=None, help="jax, tensorflow or torch")
    parser.add_argument("--model", default=None, help="a .gguf file or preset (default: embedded 270M)")
    parser.add_argument("--out", default="finetune-run", help="checkpoints and adapters go here")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    if args.backend:
        gk.use_backend(args.backend)  # before gk.load imports keras
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "facts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in made_up_fact_records()))

    lm = gk.load(args.model)
    pairs = made_up_facts()
    print(f"base model: {ask(lm, pairs)}/{len(pairs)} right")
    result = lm.finetune(
        data,
        lora_rank=8,
        lora_alpha=16,
        epochs=args.epochs,
        batch_size=2,
        learning_rate=2e-3,
        sequence_length=64,
        out_dir=out,
        resume=args.resume,
    )
    print(
        f"trained {result.steps} steps, final loss {result.train_loss:.3f}, {result.tokens_per_second:.0f} tok/s"
    )
    print(f"after fine-tuning: {ask(lm, pairs)}/{len(pairs)} right")
    print("adapters:", lm.save_adapters(out / "adapters.npz"))
    lm.merge_adapters()  # full speed again; lm.save / lm.export now write a plain model
    print(lm.chat().send(pairs[0][0], max_new_tokens=8))


if __name__ == "__main__":
    main()
