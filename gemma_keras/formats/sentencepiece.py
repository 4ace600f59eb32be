"""The Gemma tokenizer: a SentencePiece BPE model plus Gemma's special tokens.

A GGUF file stores the vocabulary as three arrays (pieces, scores, types),
not as a SentencePiece model. `proto_from_gguf_vocab` rebuilds the
`ModelProto` so that it gives the same ids as Hugging Face transformers'
GGUF tokenizer:

- merge priority follows the order of the pieces in the file (Gemma's stored
  scores do not follow its merge order);
- pieces made only of spaces are stored with real spaces and are respelled
  with U+2581, the way SentencePiece sees spaces;
- `<unk>` is typed UNKNOWN and the byte pieces BYTE, with byte fallback on,
  no dummy prefix and identity normalization.

`GemmaTokenizer` wraps `sentencepiece` (no TensorFlow needed). By default it
encodes text literally: `<start_of_turn>` typed into a prompt or a chat
message is five ordinary pieces, never the control token, so user text cannot
forge a turn. Markup that must become control tokens (the chat format's
markers, a caller's own template) is encoded with `special=True`, which, like
transformers, matches control tokens whole in the text. Decoding skips
control tokens.

Example:

>>> tok = GemmaTokenizer(proto_bytes)  # doctest: +SKIP
>>> tok.encode("Hello")  # doctest: +SKIP
[2, 9259]
>>> tok.encode("<end_of_turn>", add_bos=False, special=True)  # doctest: +SKIP
[106]
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

import numpy as np

from gemma_keras import checks
from gemma_keras.errors import GenerationArgumentError

# SentencePiece piece types; llama.cpp's token_type uses the same numbers.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"


def proto_from_gguf_vocab(
    tokens: Sequence[str],
    token_types: Sequence[int],
    *,
    bos_id: int,
    eos_id: int,
    unk_id: int,
    pad_id: int,
) -> bytes:
    """Builds a serialized SentencePiece BPE `ModelProto` from a GGUF vocab."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    model = sp_pb2.ModelProto()
    for index, (piece, kind) in enumerate(zip(tokens, token_types, strict=True)):
        kind = int(kind)
        if piece and " " in piece and not piece.strip():
            piece, kind = SPACE * len(piece), NORMAL
        if index == unk_id:
            kind = UNKNOWN
        if kind not in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE):
            kind = NORMAL
        entry = model.pieces.add()
        entry.piece = piece
        entry.type = kind
        entry.score = float(-index) if kind == NORMAL else 0.0

    trainer = model.trainer_spec
    trainer.model_type = sp_pb2.TrainerSpec.BPE
    trainer.vocab_size = len(tokens)
    trainer.byte_fallback = True
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = (
        unk_id,
        bos_id,
        eos_id,
        pad_id,
    )
    trainer.unk_piece = tokens[unk_id]
    trainer.bos_piece = tokens[bos_id]
    trainer.eos_piece = tokens[eos_id]
    trainer.pad_piece = tokens[pad_id]
    trainer.allow_whitespace_only_pieces = True
    trainer.split_digits = True

    norm = model.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = False
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return model.SerializeToString()


class GemmaTokenizer:
    """Encodes and decodes Gemma text with `sentencepiece`.

    Args:
        proto: a serialized SentencePiece `ModelProto`.
    """

    def __init__(self, proto: bytes):
        import sentencepiece as spm

        # Its C++ log line about identity normalization is noise for users.
        if hasattr(spm, "set_min_log_level"):
            spm.set_min_log_level(2)
        self.proto = bytes(proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self.proto)
        n = self._sp.get_piece_size()
        self.vocabulary_size = n
        self.bos_id = self._sp.bos_id()
        self.eos_id = self._sp.eos_id()
        self.pad_id = max(self._sp.pad_id(), 0)
        self._control = {self._sp.id_to_piece(i): i for i in range(n) if self._sp.is_control(i)}
        # Longest first, so `<start_of_turn>` wins over any shorter prefix.
        names = sorted(self._control, key=len, reverse=True)
        self._control_re = re.compile("|".join(re.escape(s) for s in names)) if names else None
        self._is_control = np.zeros(n, dtype=bool)
        self._is_control[list(self._control.values())] = True

    def token_to_id(self, piece: str) -> int:
        """The id of a piece, or -1 when the vocabulary has none."""
        index = self._sp.piece_to_id(piece)
        return -1 if index == self._sp.unk_id() and piece != self._sp.id_to_piece(index) else index

    def id_to_token(self, index: int) -> str:
        return self._sp.id_to_piece(int(index))

    def encode(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids for `text`, `<bos>` first when `add_bos`.

        With `special`, control tokens written in the text (`<start_of_turn>`)
        become those tokens; without it (the default) they are ordinary text.
        """
        checks.text("text", text, GenerationArgumentError)
        ids = [self.bos_id] if add_bos else []
        if not special or self._control_re is None:
            return ids + self._sp.encode(text)
        pos = 0
        for match in self._control_re.finditer(text):
            if match.start() > pos:
                ids += self._sp.encode(text[pos : match.start()])
            ids.append(self._control[match.group()])
            pos = match.end()
        if pos < len(text):
            ids += self._sp.encode(text[pos:])
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = True, keep: Collection[int] = ()) -> str:
        """Text for `ids`. Control tokens are dropped unless `skip_special` is False or `keep` names them."""
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocabulary_size]
        if skip_special and not keep:
            return self._sp.decode([i for i in ids if not self._is_control[i]])
        out, run = [], []
        for i in ids:
            if self._is_control[i] and skip_special and i not in keep:
                continue
            if self._is_control[i]:
                out.append(self._sp.decode(run))
                out.append(self._sp.id_to_piece(i))
                run = []
            else:
                run.append(i)
        out.append(self._sp.decode(run))
        return "".join(out)
