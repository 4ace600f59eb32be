"""A SentencePiece model from a Gemma `tokenizer.json`, for checkpoints that ship no `tokenizer.model`.

transformers 5 saves Gemma tokenizers as `tokenizer.json` only. Everything in
gemma_keras (our tokenizer, KerasHub's, GGUF and safetensors export) speaks
SentencePiece, so the BPE vocabulary is turned back into the SentencePiece
model it was made from:

- a piece's type follows the added-token table: special tokens are control
  pieces (never matched in plain text), other added tokens are user-defined
  (always matched whole), `<0xNN>` pieces are byte fallback;
- SentencePiece's BPE merges the pair whose result scores highest, and
  transformers' merge list is ordered by that score; so each piece scores
  minus the rank of the first merge that makes it (a piece no merge makes
  scores below all of them, as Gemma's own model does);
- digits are split unless the vocabulary holds a multi-digit piece.

`tests/test_gemma4.py` checks that the result tokenizes like `tokenizers`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gemma_keras.errors import SourceError

_BYTE = re.compile(r"<0x[0-9A-F]{2}>")


def spm_from_tokenizer_json(path: Path, config: dict[str, Any] | None = None) -> bytes:
    """The serialized SentencePiece `ModelProto` equivalent to `path` (a `tokenizer.json`)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        model = data["model"]
        vocab: dict[str, int] = model["vocab"]
        merges = model.get("merges") or []
        added = {int(a["id"]): a for a in data.get("added_tokens") or []}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SourceError(f"{path}: not a readable tokenizer.json ({type(exc).__name__}: {exc}).") from None
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise SourceError(
            f"{path}: a {model.get('type')!r} tokenizer without byte fallback; Gemma tokenizers are "
            "byte-fallback BPE. Add the model's tokenizer.model to the directory."
        )
    pieces = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in pieces] != list(range(len(pieces))):
        raise SourceError(f"{path}: vocabulary ids are not 0..{len(pieces) - 1} without gaps.")
    rank: dict[str, int] = {}
    for r, merge in enumerate(merges):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        rank.setdefault(left + right, r)
    unmerged = -float(len(merges) + 1)
    config = config or {}

    def special_piece(name: str, default: str) -> str | None:
        token = config.get(name, default)
        token = token.get("content") if isinstance(token, dict) else token
        return token if isinstance(token, str) and token in vocab else None

    proto = pb.ModelProto()
    unk = model.get("unk_token") or "<unk>"
    for piece, i in pieces:
        entry = proto.pieces.add()
        entry.piece = piece
        if i in added:
            special = added[i].get("special", True)
            entry.type = 2 if piece == unk else (3 if special else 4)
        elif _BYTE.fullmatch(piece):
            entry.type = 6
        else:
            entry.type = 1
            entry.score = -float(rank[piece]) if piece in rank else unmerged
    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(pieces)
    spec.byte_fallback = True
    spec.allow_whitespace_only_pieces = True
    spec.split_digits = not any(len(p) > 1 and p.isdigit() for p in vocab)
    # SentencePiece finds its special ids by piece, so both are set.
    for kind, piece in (
        ("unk", unk if unk in vocab else None),
        ("bos", special_piece("bos_token", "<bos>")),
        ("eos", special_piece("eos_token", "<eos>")),
        ("pad", special_piece("pad_token", "<pad>")),
    ):
        setattr(spec, f"{kind}_id", -1 if piece is None else vocab[piece])
        if piece is not None:
            setattr(spec, f"{kind}_piece", piece)
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = False
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return proto.SerializeToString()


def checkpoint_tokenizer(path: Path) -> bytes:
    """The SentencePiece model of a checkpoint directory: its `tokenizer.model`, else from `tokenizer.json`."""
    if (path / "tokenizer.model").is_file():
        return (path / "tokenizer.model").read_bytes()
    if (path / "tokenizer.json").is_file():
        config_file = path / "tokenizer_config.json"
        config = {}
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise SourceError(f"{config_file}: not readable JSON ({exc}).") from None
        return spm_from_tokenizer_json(path / "tokenizer.json", config if isinstance(config, dict) else {})
    raise SourceError(
        f"{path} holds no tokenizer (tokenizer.model or tokenizer.json). Save the tokenizer "
        "into the directory too (tokenizer.save_pretrained(dir))."
    )
