"""Export a Gemma model as a Keras preset, a transformers checkpoint and a GGUF file.

Each export is read back with gemma_keras and its next-token logits compared
with the model's own. Without --model it uses the embedded Gemma 3 270M:

    python examples/export.py --out /tmp/gemma-exports --backend jax
    python examples/export.py --model path/to/gemma.gguf --out exports --overwrite
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import gemma_keras as gk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="anything gk.load accepts (default: embedded)")
    parser.add_argument("--out", default="gemma-exports", help="the directory to write into")
    parser.add_argument("--backend", default=None, help="jax, tensorflow or torch")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier exports")
    args = parser.parse_args()

    if args.backend:
        gk.use_backend(args.backend)
    lm = gk.load(args.model)
    out = Path(args.out)
    ids = lm.tokenizer.encode("The capital of France is")
    reference = lm.logits(ids)
    exports = [
        lm.save(out / "keras-preset", overwrite=args.overwrite),
        lm.export(out / "hf", format="safetensors", overwrite=args.overwrite),
        lm.export(out / "model-f16.gguf", overwrite=args.overwrite),
        lm.export(out / "model-q8_0.gguf", dtype="q8_0", overwrite=args.overwrite),
    ]
    for path in exports:
        diff = np.abs(gk.load(path).logits(ids) - reference).max()
        print(f"{path}: max |logit diff| {diff:.2g}")


if __name__ == "__main__":
    main()
