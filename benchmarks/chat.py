"""Chat prefix reuse: time to the first token of each reply as a conversation grows.

    python benchmarks/chat.py --backend jax [--turns 8] [--json out.json]

On the embedded real Gemma 3 270M (float32), one conversation of `--turns`
user messages of about 60 tokens each; every reply is exactly
`--new-tokens` greedy tokens (no stop ids), so both sides see the same
conversation. Per turn, side by side in this run:

- kept: `lm.chat(...).stream(message)`, which keeps the conversation's KV
  cache and prefills only the new turn;
- fresh: `lm.stream(lm.encode_messages(conversation so far))`, which
  prefills the whole conversation, as a chat without prefix reuse does.

Reported: the prompt length, the tokens the kept cache reused, the time to
the first streamed piece of each, and their ratio. The first call of each
kind compiles; a warm-up conversation runs first so that compile time is
not counted. Speed is reported as ratios measured side by side in this
run; no number here is a pass/fail threshold.
"""

from __future__ import annotations

import argparse
import json
import time

TOPICS = [
    "rivers",
    "mountains",
    "the sea",
    "old cities",
    "winter",
    "music",
    "trains",
    "bread",
    "stars",
    "bees",
]


def message(turn: int) -> str:
    topic = TOPICS[turn % len(TOPICS)]
    return (
        f"Tell me three short facts about {topic}, then say which of them surprised people the most "
        f"when it was first found, who found it, and why it still matters to us today (turn {turn})."
    )


def first_piece(pieces) -> tuple[float, str]:
    start = time.perf_counter()
    first = next(pieces)
    elapsed = time.perf_counter() - start
    return elapsed, first + "".join(pieces)


def conversation(lm, turns: int, new_tokens: int) -> list[dict]:
    options = {"max_new_tokens": new_tokens, "stop_token_ids": ()}
    chat = lm.chat(**options)
    rows = []
    for turn in range(turns):
        text = message(turn)
        prompt = lm.encode_messages(chat.messages() + [{"role": "user", "content": text}])
        fresh_s, fresh_text = first_piece(iter(lm.stream(prompt, **options)))
        kept_s, kept_text = first_piece(iter(chat.stream(text)))
        rows.append(
            {
                "turn": turn + 1,
                "prompt_tokens": len(prompt),
                "reused_tokens": chat.reused_tokens,
                "ttft_kept_s": round(kept_s, 4),
                "ttft_fresh_s": round(fresh_s, 4),
                "fresh_over_kept": round(fresh_s / kept_s, 2),
                "same_reply": kept_text == fresh_text,
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default=None, help="jax, tensorflow or torch (default: as configured)")
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    import warnings

    import gemma_keras as gk

    if args.backend:
        gk.use_backend(args.backend)
    warnings.simplefilter("ignore", gk.NotInstructionTunedWarning)  # the embedded model is pretrained
    lm = gk.load()
    conversation(lm, args.turns, args.new_tokens)  # warm-up: compiles every shape the run below meets
    rows = conversation(lm, args.turns, args.new_tokens)
    for row in rows:
        print(json.dumps(row), flush=True)
    results = {"backend": gk.current_backend(), "new_tokens": args.new_tokens, "turns": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if all(row["same_reply"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
