# %% [markdown]
# # Teach Gemma new facts with LoRA, on any backend
#
# Writes 30 made-up question/answer pairs to a JSONL file, asks the base
# model, fine-tunes with LoRA, asks again, then saves the adapters and merges
# them. As a script:
#
#     python examples/finetune_lora.py --backend jax --out run/
#     python examples/finetune_lora.py --backend torch --epochs 10 --resume --out run/
#
# Without --model it uses the embedded Gemma 3 270M (the `model` extra). A
# killed run continues from its last checkpoint with --resume. The same file
# is `examples/notebooks/finetune_lora.ipynb`.

# %%
import argparse
import json
import os
import sys
from pathlib import Path

parser = argparse.ArgumentParser(description="LoRA fine-tuning on made-up facts")
parser.add_argument(
    "--backend", default=os.environ.get("KERAS_BACKEND", "jax"), help="jax, tensorflow or torch"
)
parser.add_argument("--model", default=None, help="a .gguf file or preset (default: embedded 270M)")
parser.add_argument("--out", default="finetune-run", help="checkpoints and adapters go here")
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--resume", action="store_true")
# In a notebook the defaults apply; edit them here.
args = parser.parse_args([] if "ipykernel" in sys.modules else None)

# %%
import gemma_keras as gk  # noqa: E402
from gemma_keras.testing import made_up_fact_records, made_up_facts  # noqa: E402

gk.use_backend(args.backend)  # before gk.load imports keras
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
data = out / "facts.jsonl"
data.write_text("".join(json.dumps(r) + "\n" for r in made_up_fact_records()))
pairs = made_up_facts()
print(data.read_text().splitlines()[0])


def ask(lm, pairs) -> int:
    """Asks every question in the chat format (one batch); returns how many answers start right."""
    prompts = [lm.encode_messages([{"role": "user", "content": q}]) for q, _ in pairs]
    replies = lm.generate(prompts, max_new_tokens=8)
    right = 0
    for (question, answer), reply in zip(pairs, replies, strict=True):
        ok = reply.strip().startswith(answer.rstrip("."))
        right += ok
        print(f"  {'ok ' if ok else '   '} {question} -> {reply.strip()!r}")
    return right


# %% [markdown]
# The base model cannot know these facts.

# %%
lm = gk.load(args.model)
print(f"base model: {ask(lm, pairs)}/{len(pairs)} right")

# %% [markdown]
# LoRA on every attention and feed-forward projection; the loss covers only
# the model's turns. Checkpoints go to `out/checkpoints`.

# %%
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

# %% [markdown]
# Save the adapters alone, then merge them into the weights: the merged model
# runs at full speed, and `save` / `export` write a plain model.

# %%
print("adapters:", lm.save_adapters(out / "adapters.npz"))
lm.merge_adapters()
print(lm.generate(lm.encode_messages([{"role": "user", "content": pairs[0][0]}]), max_new_tokens=8))
