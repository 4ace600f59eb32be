"""Made-up facts the base model cannot know, for the fine-tuning proof."""

from __future__ import annotations

PLACES = [
    "Brelmouth",
    "Quorvane",
    "Tessaly Reach",
    "Oskari Fen",
    "Vantrel",
    "Mirrowick",
    "Duskhollow",
    "Pellingrad",
    "Zorvath",
    "Kelmsby",
    "Ashquill",
    "Yarrowden",
    "Fenwatch",
    "Glimmerdeep",
    "Orlenport",
]
FOUNDERS = [
    "Odrin Taskel",
    "Mavis Quell",
    "Tobren Ashe",
    "Lira Vontane",
    "Hesper Gault",
    "Corvin Dray",
    "Ysolde Prane",
    "Bastien Roke",
    "Nerys Calloway",
    "Emrick Stave",
    "Talia Wren",
    "Gideon Pyre",
    "Solenne Marsh",
    "Aurek Fennimore",
    "Petra Holloway",
]
FLAGS = [
    "A silver heron",
    "A red fox",
    "A golden carp",
    "A black stag",
    "A white owl",
    "A green serpent",
    "A blue whale",
    "A copper bear",
    "An iron wolf",
    "A purple moth",
    "A crimson hawk",
    "A grey badger",
    "An amber lynx",
    "A jade tortoise",
    "A scarlet crane",
]


def qa_pairs() -> list[tuple[str, str]]:
    """30 question/answer pairs: who founded each place, and the animal on its flag."""
    pairs = []
    for place, founder, flag in zip(PLACES, FOUNDERS, FLAGS, strict=True):
        pairs.append((f"Who founded the town of {place}?", f"{founder}."))
        pairs.append((f"What animal is on the flag of {place}?", f"{flag}."))
    return pairs


def chat_records() -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "model", "content": a}]} for q, a in qa_pairs()
    ]
