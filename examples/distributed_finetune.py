"""LoRA fine-tuning and generation sharded over a ("batch", "model") device mesh (JAX).

On a machine without accelerators it simulates 8 CPU devices, so it runs
anywhere. With the tiny random model it takes well under a minute:

    python examples/distributed_finetune.py --tiny
    python examples/distributed_finetune.py --data-parallel 4 --model-parallel 2 --tiny
    python examples/distributed_finetune.py          # the embedded Gemma 3 270M
    python examples/distributed_finetune.py --model path/to/gemma.gguf --steps 20

On a multi-host TPU or GPU cluster, run the same script on every host after
`jax.distributed.initialize()` (see docs/distribution.md); each host then
feeds its own share of every batch.
"""

from __future__ import annotations

import argparse
import os
import tempfile

# Must be set before JAX starts; it only affects the CPU platform.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import numpy as np  # noqa: E402

import gemma_keras as gk  # noqa: E402

TEXTS = [
    "The capital of France is Paris.",
    "Paris is the capital of France.",
    "hello world, the model is in Paris.",
    "France is a country and Paris is its capital.",
]


def batch(lm, texts: list[str], rows: int, length: int):
    """Token ids, padding mask, next-token labels and their weights, as numpy."""
    ids = np.zeros((rows, length + 1), np.int32)
    for row in range(rows):
        encoded = lm.tokenizer.encode(texts[row % len(texts)])[: length + 1]
        ids[row, : len(encoded)] = encoded
    mask = (ids != lm.tokenizer.pad_id).astype(np.int32)
    x = {"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1]}
    return x, ids[:, 1:], mask[:, 1:].astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-parallel", type=int, default=2)
    parser.add_argument("--model-parallel", type=int, default=4)
    parser.add_argument("--model", default=None, help="a .gguf file or preset (default: embedded 270M)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Gemma 3 instead")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rank", type=int, default=4)
    args = parser.parse_args()

    gk.use_backend("jax")
    dist = gk.distribute(data_parallel=args.data_parallel, model_parallel=args.model_parallel)
    print("distribution:", dist)

    source = args.model
    if args.tiny:
        from gemma_keras.testing import TinyConfig, write_tiny_gguf

        source = os.path.join(tempfile.mkdtemp(), "tiny.gguf")
        write_tiny_gguf(source, "gemma3", TinyConfig(heads=4, kv_heads=1))
    lm = gk.load(source)  # created under the distribution: its weights are sharded
    for v in lm.backbone.weights[:8]:
        print(f"  {v.path:<48} {str(tuple(v.shape)):<16} {v.value.sharding.spec}")

    import keras

    lm.backbone.enable_lora(rank=args.rank)
    causal_lm = lm.causal_lm
    causal_lm.preprocessor = None  # the batches below are token ids already
    causal_lm.compile(
        optimizer=keras.optimizers.Adam(learning_rate=5e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
    )
    # Rows: a multiple of the data-parallel size, so every replica gets a share.
    x, y, weight = batch(lm, TEXTS, rows=2 * args.data_parallel, length=16)
    for step in range(args.steps):
        loss = causal_lm.train_on_batch(x, y, sample_weight=weight)
        print(f"step {step}: loss {float(np.asarray(loss).reshape(-1)[0]):.4f}")

    print(lm.generate(["The capital of France is", "hello"], max_new_tokens=12, include_prompt=True))
    gk.distribute(None)


if __name__ == "__main__":
    main()
