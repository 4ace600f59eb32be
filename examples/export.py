# %% [markdown]
# # Export a Gemma model: Keras preset, transformers checkpoint, GGUF
#
# Each export is read back with gemma_keras and its next-token logits are
# compared with the model's own. As a script:
#
#     python examples/export.py --out /tmp/gemma-exports --backend jax
#     python examples/export.py --model path/to/gemma.gguf --out exports --overwrite
#
# Without --model it uses the embedded Gemma 3 270M. The same file is
# `examples/notebooks/export.ipynb`.

# %%
import argparse
import os
import sys
from pathlib import Path

import numpy as np

parser = argparse.ArgumentParser(description="Export a Gemma model three ways")
parser.add_argument("--model", default=None, help="anything gk.load accepts (default: embedded)")
parser.add_argument("--out", default="gemma-exports", help="the directory to write into")
parser.add_argument(
    "--backend", default=os.environ.get("KERAS_BACKEND", "jax"), help="jax, tensorflow or torch"
)
parser.add_argument("--overwrite", action="store_true", help="replace earlier exports")
# In a notebook the defaults apply; edit them here.
args = parser.parse_args([] if "ipykernel" in sys.modules else None)

# %%
import gemma_keras as gk  # noqa: E402

gk.use_backend(args.backend)
lm = gk.load(args.model)
out = Path(args.out)
ids = lm.tokenizer.encode("The capital of France is")
reference = lm.logits(ids)

# %% [markdown]
# Every destination appears whole or not at all; an existing one is replaced
# only with `overwrite=True`.

# %%
exports = [
    lm.save(out / "keras-preset", overwrite=args.overwrite),
    lm.export(out / "hf", format="safetensors", overwrite=args.overwrite),
    lm.export(out / "model-f16.gguf", overwrite=args.overwrite),
    lm.export(out / "model-q8_0.gguf", dtype="q8_0", overwrite=args.overwrite),
]

# %% [markdown]
# Read each one back and compare the next-token logits.

# %%
for path in exports:
    diff = np.abs(gk.load(path).logits(ids) - reference).max()
    print(f"{path}: max |logit diff| {diff:.2g}")
