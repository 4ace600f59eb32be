"""Generate text with a Gemma model.

Without --model it loads the embedded Gemma 3 270M (the `model` extra):

    python examples/generate.py --backend jax --prompt "The capital of France is"
    python examples/generate.py --model path/to/gemma.gguf --max-new-tokens 64
"""

from __future__ import annotations

import argparse

import gemma_keras as gk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend", default=None, help="jax, tensorflow or torch (default: resolved as usual)"
    )
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--model",
        default=None,
        help="a .gguf file, preset dir, preset name or hub handle (default: embedded)",
    )
    args = parser.parse_args()

    # The backend must be fixed before gk.load imports keras.
    if args.backend:
        gk.use_backend(args.backend)
    lm = gk.load(args.model)
    print(lm)
    print(lm.generate(args.prompt, max_new_tokens=args.max_new_tokens, include_prompt=True))


if __name__ == "__main__":
    main()
