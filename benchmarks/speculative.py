"""Speculative decoding: acceptance rate and speed against plain greedy decoding, side by side.

    python benchmarks/speculative.py --backend jax [--new-tokens 64] [--lookahead 4] [--json out.json]

The target is the embedded real Gemma 3 270M (float32). Only one real
Gemma checkpoint can be had here, so the drafts are made from it:

- `itself`: the same model. Every proposal is accepted; this measures the
  machinery's cost and the most a round can yield (lookahead + 1 tokens).
- `first-N-layers`: the target's embedding, first N decoder blocks and final
  norm (self-speculation, as in LayerSkip). A real draft is a separately
  trained small model (Gemma 3 270M for Gemma 3 12B, Gemma 4's assistant
  models); none is available offline.

Per draft: acceptance rate, tokens per target pass, time against
`lm.generate` without a draft (the same prompts, greedy, no stop ids), and
whether the tokens are identical (they must be). Every shape is compiled
in a warm-up run first. Ratios are measured side by side in this run; no
number here is a pass/fail threshold.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Water boils at a temperature of",
    "Once upon a time, in a small village by the sea,",
]


def first_layers(lm, layers: int):
    """A draft: the target's first `layers` blocks over its embedding and final norm."""
    import gemma_keras as gk

    backbone = lm.backbone
    config = dict(backbone.get_config(), num_layers=layers)
    small = type(backbone).from_config(config)
    values = {w.path: w for w in backbone.weights}
    for variable in small.weights:
        variable.assign(values[variable.path])
    causal_lm = type(lm.causal_lm)(backbone=small, preprocessor=lm.causal_lm.preprocessor)
    return gk.Gemma(causal_lm, lm.tokenizer, dataclasses.replace(lm.info, source=f"first {layers} layers"))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run(lm, drafts: dict, new_tokens: int, lookahead: int) -> list[dict]:
    options = {"max_new_tokens": new_tokens, "stop_token_ids": ()}
    plain_s, plain = 0.0, []
    for prompt in PROMPTS:
        seconds, text = timed(lambda p=prompt: lm.generate(p, **options))
        plain_s += seconds
        plain.append(text)
    rows = []
    for name, draft in drafts.items():
        spec_s, proposed, accepted, passes, tokens, same = 0.0, 0, 0, 0, 0, True
        for prompt, want in zip(PROMPTS, plain, strict=True):
            seconds, text = timed(
                lambda p=prompt, d=draft: lm.generate(p, draft=d, lookahead=lookahead, **options)
            )
            spec_s += seconds
            stats = lm.last_draft_stats
            proposed, accepted = proposed + stats.proposed, accepted + stats.accepted
            passes, tokens = passes + stats.target_passes, tokens + stats.tokens
            same = same and text == want
        rows.append(
            {
                "draft": name,
                "lookahead": lookahead,
                "acceptance_rate": round(accepted / proposed, 3),
                "tokens_per_target_pass": round(tokens / passes, 2),
                "plain_tok_per_s": round(len(PROMPTS) * new_tokens / plain_s, 1),
                "draft_tok_per_s": round(len(PROMPTS) * new_tokens / spec_s, 1),
                "speedup": round(plain_s / spec_s, 2),
                "identical_tokens": same,
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default=None, help="jax, tensorflow or torch (default: as configured)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--lookahead", type=int, default=4)
    parser.add_argument("--layers", type=int, nargs="*", default=[6, 12], help="first-N-layers drafts to try")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    import gemma_keras as gk

    if args.backend:
        gk.use_backend(args.backend)
    lm = gk.load()
    drafts = {"itself": lm, **{f"first-{n}-layers": first_layers(lm, n) for n in args.layers}}
    run(lm, drafts, args.new_tokens, args.lookahead)  # warm-up: compiles every shape below
    rows = run(lm, drafts, args.new_tokens, args.lookahead)
    for row in rows:
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"backend": gk.current_backend(), "new_tokens": args.new_tokens, "rows": rows}, f, indent=2
            )
    return 0 if all(row["identical_tokens"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
