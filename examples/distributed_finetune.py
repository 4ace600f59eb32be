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

import gemma_keras as gk  # noqa: E402

RECORDS = [
    {"prompt": "What is the capital of France?", "response": "Paris."},
    {"prompt": "Which city is the capital of France?", "response": "Paris is."},
    {"prompt": "Say hello.", "response": "hello world"},
    {"prompt": "Name a country in Europe.", "response": "France."},
]


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

    # Rows per batch: a multiple of the data-parallel size, so every replica gets a share.
    result = lm.finetune(
        RECORDS,
        lora_rank=args.rank,
        max_steps=args.steps,
        batch_size=2 * args.data_parallel,
        learning_rate=5e-3,
        sequence_length=64,
    )
    print("losses:", [round(h["loss"], 4) for h in result.history])

    print(lm.generate(["The capital of France is", "hello"], max_new_tokens=12, include_prompt=True))
    gk.distribute(None)


if __name__ == "__main__":
    main()
