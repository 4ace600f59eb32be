"""Tiny random Gemma GGUF files, for tests and examples that need no download.

`write_tiny_gguf` writes a valid llama.cpp-style GGUF of architecture
`gemma`, `gemma2` or `gemma3` with random weights, a small SentencePiece-style
vocabulary (byte fallback included) and any quant type gguf-py can write.
gguf-py cannot quantize the K-quants, so for those it writes random blocks
with sane scales; dequantizing them is what is under test.

Example:

>>> from gemma_keras.testing import write_tiny_gguf
>>> weights = write_tiny_gguf("/tmp/tiny.gguf", "gemma3")  # doctest: +SKIP
>>> sorted(weights)[:2]  # doctest: +SKIP
['blk.0.attn_k.weight', 'blk.0.attn_k_norm.weight']
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass

import numpy as np

from gemma_keras.architectures.registry import by_gguf_arch
from gemma_keras.formats.gguf_reader import expected_tensor_shapes
from gemma_keras.formats.gguf_writer import add_hyperparameters, add_vocabulary

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[multimodal]"]
TURN_TOKENS = ["<start_of_turn>", "<end_of_turn>"]
IMAGE_TOKENS = ["<start_of_image>", "<end_of_image>", "<img>"]
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "France",
    "Paris",
    "capital",
    "hello",
    "world",
    "model",
    "user",
]

# Byte layout of each K-quant block: (block bytes, offsets of its f16 scales).
_K_BLOCKS = {
    "Q2_K": (84, (80, 82)),
    "Q3_K": (110, (108,)),
    "Q4_K": (144, (0, 2)),
    "Q5_K": (176, (0, 2)),
    "Q6_K": (210, (208,)),
}


@dataclass(frozen=True)
class TinyConfig:
    num_layers: int = 2
    hidden: int = 32
    heads: int = 4
    kv_heads: int = 1
    head_dim: int = 8
    ffn: int = 64
    sliding_window: int = 8
    context: int = 512
    rope_scaling: float = 1.0  # Gemma 3's global RoPE scaling factor; 1.0 writes no key


def tiny_vocab() -> tuple[list[str], list[int]]:
    """A Gemma-shaped vocabulary: specials, byte pieces, characters, merges."""
    tokens = list(SPECIALS) + [f"<unused{i}>" for i in range(4)] + TURN_TOKENS
    types = [3] * len(tokens)
    types[SPECIALS.index("[multimodal]")] = 4
    tokens += ["\n", "\n\n", "  ", "   "]
    types += [4, 4, 4, 4]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    pieces = ["\u2581"] + [c for c in string.ascii_letters + string.digits + string.punctuation]
    merges = []
    for word in WORDS:
        for end in range(2, len(word) + 1):
            merges.append(word[:end])
        for end in range(1, len(word) + 1):
            merges.append("\u2581" + word[:end])
    for piece in pieces + merges:
        if piece not in tokens:
            tokens.append(piece)
            types.append(1)
    tokens += IMAGE_TOKENS
    types += [4, 4, 3]
    return tokens, types


def _k_quant_blocks(qtype: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    block_bytes, scale_offsets = _K_BLOCKS[qtype]
    rows, cols = shape
    blocks = rng.integers(0, 256, size=(rows, cols // 256, block_bytes), dtype=np.uint8)
    for offset in scale_offsets:
        scale = rng.uniform(0.0005, 0.002, size=(rows, cols // 256)).astype(np.float16)
        blocks[:, :, offset : offset + 2] = scale.view(np.uint8).reshape(rows, cols // 256, 2)
    return blocks.reshape(rows, -1)


def _encode(array: np.ndarray, qtype_name: str, rng: np.random.Generator):
    """Returns `(data_for_writer, raw_dtype, dequantized_float32)`."""
    from gguf import GGMLQuantizationType
    from gguf.constants import GGML_QUANT_SIZES
    from gguf.quants import dequantize, quantize

    qtype = GGMLQuantizationType[qtype_name]
    block = GGML_QUANT_SIZES[qtype][0]
    if array.ndim != 2 or qtype_name == "F32" or array.shape[1] % block:
        return array.astype(np.float32), None, array.astype(np.float32)
    if qtype_name in _K_BLOCKS:
        data = _k_quant_blocks(qtype_name, array.shape, rng)
    else:
        data = quantize(array.astype(np.float32), qtype)
    return data, qtype, dequantize(data, qtype).reshape(array.shape).astype(np.float32)


def write_tiny_gguf(
    path: str | os.PathLike,
    architecture: str = "gemma3",
    config: TinyConfig | None = None,
    qtype: str = "F32",
    seed: int = 0,
    vocab: tuple[list[str], list[int]] | None = None,
    name: str | None = None,
) -> dict[str, np.ndarray]:
    """Writes a tiny random Gemma GGUF; returns the float32 tensors a reader sees.

    2-D weights whose row length suits `qtype` are stored in it; the rest
    (norms, short rows) stay F32, as llama.cpp's quantizer does. `name` is
    `general.name` (an "-it" in it marks an instruction-tuned model).
    """
    import gguf

    cfg = config or TinyConfig()
    arch = by_gguf_arch(architecture)
    rng = np.random.default_rng(seed)
    tokens, types = vocab or tiny_vocab()
    writer = gguf.GGUFWriter(os.fspath(path), architecture)
    writer.add_name(name or f"tiny-{architecture}")
    add_hyperparameters(
        writer,
        arch,
        context=cfg.context,
        hidden=cfg.hidden,
        layers=cfg.num_layers,
        ffn=cfg.ffn,
        heads=cfg.heads,
        kv_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        eps=1e-6,
        sliding_window=cfg.sliding_window,
        attn_softcap=50.0 if architecture == "gemma2" else None,
        final_softcap=30.0 if architecture == "gemma2" else None,
        rope_scaling=cfg.rope_scaling,
    )
    scores = [-1000.0 if t != 1 else 0.0 for t in types]
    add_vocabulary(writer, tokens, scores, types, {"bos_id": 2, "eos_id": 1, "unk_id": 3, "pad_id": 0})

    config = {
        "vocabulary_size": len(tokens),
        "num_layers": cfg.num_layers,
        "num_query_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "hidden_dim": cfg.hidden,
        "head_dim": cfg.head_dim,
    }
    shapes = expected_tensor_shapes(arch, config, cfg.ffn)
    expected: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if len(shape) == 1:  # llama.cpp stores RMSNorm weights as 1 + w
            array = 1.0 + rng.normal(0.0, 0.1, size=shape)
        else:
            array = rng.normal(0.0, 1.0 / np.sqrt(shape[1]), size=shape)
        data, raw_dtype, seen = _encode(array.astype(np.float32), qtype, rng)
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
        expected[name] = seen
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


# --- made-up facts the base model cannot know: the fine-tuning proof and example ---
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


def made_up_facts() -> list[tuple[str, str]]:
    """30 question/answer pairs: who founded each place, and the animal on its flag."""
    pairs = []
    for place, founder, flag in zip(PLACES, FOUNDERS, FLAGS, strict=True):
        pairs.append((f"Who founded the town of {place}?", f"{founder}."))
        pairs.append((f"What animal is on the flag of {place}?", f"{flag}."))
    return pairs


def made_up_fact_records() -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "model", "content": a}]}
        for q, a in made_up_facts()
    ]
