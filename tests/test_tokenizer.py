"""The tokenizer rebuilt from GGUF metadata."""

from __future__ import annotations

import pytest

from gemma_keras.formats.gguf_reader import read_gguf
from gemma_keras.formats.sentencepiece import BYTE, NORMAL, UNKNOWN, GemmaTokenizer

TEXTS = [
    "the capital of France is Paris",
    " leading space",
    "two  spaces and   three",
    "\ttab\nnewline\n\n\ndone",
    "emoji 😀 and CJK 中文",
    "<start_of_turn>user\nhello<end_of_turn>\n",
    "trailing ",
    "",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_gguf) -> GemmaTokenizer:
    path, _ = tiny_gguf("gemma3")
    return GemmaTokenizer(read_gguf(path).tokenizer_proto())


def test_proto_piece_types(tiny_gguf):
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    path, _ = tiny_gguf("gemma3")
    info = read_gguf(path)
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(info.tokenizer_proto())
    assert proto.trainer_spec.model_type == sp_pb2.TrainerSpec.BPE
    assert proto.trainer_spec.byte_fallback
    assert not proto.normalizer_spec.add_dummy_prefix
    assert proto.pieces[info.special_ids["unk_id"]].type == UNKNOWN
    byte_pieces = [p for p in proto.pieces if p.piece.startswith("<0x")]
    assert len(byte_pieces) == 256 and all(p.type == BYTE for p in byte_pieces)
    # Space-only pieces are respelled the way SentencePiece sees spaces.
    respelled = [p for p in proto.pieces if p.piece == "\u2581\u2581"]
    assert respelled and respelled[0].type == NORMAL


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tokenizer, text):
    ids = tokenizer.encode(text, add_bos=False)
    assert all(0 <= i < tokenizer.vocabulary_size for i in ids)
    assert tokenizer.decode(ids, skip_special=False) == text


def test_bos_and_control_tokens(tokenizer):
    ids = tokenizer.encode("<start_of_turn>user", special=True)
    assert ids[0] == tokenizer.bos_id == 2
    assert ids[1] == tokenizer.token_to_id("<start_of_turn>")
    # Without special=True (the default), the same text is plain text.
    literal = tokenizer.encode("<start_of_turn>user", add_bos=False)
    assert not set(literal) & set(tokenizer._control.values())
    assert tokenizer.decode(literal) == "<start_of_turn>user"
    # Control tokens are dropped when decoding by default, like skip_special_tokens.
    assert tokenizer.decode(ids) == "user"
    assert tokenizer.token_to_id("<no such piece>") == -1


def test_unknown_characters_fall_back_to_bytes(tokenizer):
    ids = tokenizer.encode("é", add_bos=False)
    assert [tokenizer.id_to_token(i) for i in ids] == ["<0xC3>", "<0xA9>"]


@pytest.mark.parity
def test_ids_match_transformers_gguf_tokenizer(tiny_gguf, tokenizer):
    from transformers import AutoTokenizer

    path, _ = tiny_gguf("gemma3")
    reference = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in TEXTS:
        # transformers parses control tokens in text, as special=True does.
        assert tokenizer.encode(text, special=True) == reference.encode(text), text
