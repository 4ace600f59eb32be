"""Structured output: token masks that keep a row's text inside a JSON schema.

The grammar work is llguidance's (a maintained Rust library, the one vLLM,
SGLang and llama.cpp use): it compiles a JSON schema and, at each step,
says which token ids may come next. This module gives it our vocabulary
and wraps one matcher per row in the small `Constraint` protocol that the
decode loop (`generation.decode`) understands:

- `allowed()`: a boolean mask over the vocabulary of the tokens the grammar
  allows next. Stop tokens are never in it; the decode loop adds the row's
  own stop ids when the text so far is complete (`accepting`).
- `accept(token)`: the row took `token` (never a stop token).
- `accepting`: the text so far is a complete value; a stop may come.
- `done`: complete, and nothing may follow: the row ends.

llguidance is an optional dependency (`pip install 'gemma-keras[structured]'`)
and is imported only here, only when a constraint is made.

Example:

>>> c = json_constraint(lm.tokenizer, {"type": "object"})  # doctest: +SKIP
>>> lm.generate("...", json_schema={"type": "object"})  # doctest: +SKIP
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from gemma_keras.errors import GenerationArgumentError, GenerationError, MissingExtraError

# SentencePiece piece types (see formats.sentencepiece).
_UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 2, 3, 4, 5, 6
_SPACE = "\u2581"
# `json_schema=True` (or "json_object"): any JSON object, OpenAI's {"type": "json_object"}.
ANY_OBJECT: dict[str, Any] = {"type": "object"}
# Compact separators and no free whitespace: a model cannot pad its output with
# blank lines forever, and a schema's own "x-guidance" options still win.
_JSON_OPTIONS = {"whitespace_flexible": False}


@runtime_checkable
class Constraint(Protocol):
    """What the decode loop needs from a per-row constraint."""

    def allowed(self) -> np.ndarray:
        """Boolean mask `(vocab,)` of the tokens that may come next (stop tokens excluded)."""
        ...

    def accept(self, token: int) -> None:
        """Advances past `token`; raises `GenerationError` if the grammar refuses it."""
        ...

    @property
    def accepting(self) -> bool:
        """The text so far is complete: a stop token may end the row."""
        ...

    @property
    def done(self) -> bool:
        """Complete, and no token but a stop may follow."""
        ...


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise MissingExtraError(
            "json_schema needs the llguidance package. Install the structured extra: "
            "pip install 'gemma-keras[structured]' (from a gemma_keras clone: pip install -e '.[structured]')."
        ) from None
    return llguidance


class _Wrapper:
    """What `llguidance.TokenizerWrapper` reads: each token's bytes, the special ids and `encode`."""

    def __init__(self, tokenizer):
        from sentencepiece import sentencepiece_model_pb2 as sp_pb2

        model = sp_pb2.ModelProto()
        model.ParseFromString(tokenizer.proto)
        self.tokens: list[bytes] = []
        self.special_token_ids: list[int] = []
        for index, entry in enumerate(model.pieces):
            piece, kind = entry.piece, entry.type
            # Control tokens, and user-defined markers such as <start_of_image>, never
            # belong in JSON text; llguidance marks specials with a leading 0xFF byte.
            if kind in (_UNKNOWN, _CONTROL, _UNUSED) or (
                kind == _USER_DEFINED and piece.startswith("<") and piece.endswith(">")
            ):
                self.tokens.append(b"\xff" + piece.encode("utf-8"))
                self.special_token_ids.append(index)
            elif kind == _BYTE:
                self.tokens.append(bytes([int(piece[3:5], 16)]))  # <0xNN>
            else:
                self.tokens.append(piece.replace(_SPACE, " ").encode("utf-8"))
        self.eos_token_id = tokenizer.eos_id
        self.bos_token_id = tokenizer.bos_id
        self._encode = tokenizer.encode

    def __call__(self, text: str) -> list[int]:
        if not isinstance(text, str):  # TokenizerWrapper probes with bytes; it then passes str
            raise TypeError("text must be a str")
        return self._encode(text, add_bos=False) if text else []


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def ll_tokenizer(tokenizer):
    """The `llguidance.LLTokenizer` for a `GemmaTokenizer`, built once per tokenizer.

    Building it reads every piece: about 1.5 s for Gemma 3's 262k vocabulary.
    """
    with _LOCK:
        found = _CACHE.get(tokenizer)
        if found is None:
            llg = _llguidance()
            wrapper = llg.TokenizerWrapper(_Wrapper(tokenizer))
            found = llg.LLTokenizer(wrapper, n_vocab=tokenizer.vocabulary_size)
            _CACHE[tokenizer] = found
        return found


def _schema_text(schema: Any) -> str:
    if schema is True or (isinstance(schema, str) and schema == "json_object"):
        schema = ANY_OBJECT
    if not isinstance(schema, Mapping):
        raise GenerationArgumentError(
            "json_schema must be a JSON schema (a dict), or True (or 'json_object') for any JSON "
            f"object; got {type(schema).__name__}."
        )
    try:
        return json.dumps(schema)
    except (TypeError, ValueError) as exc:
        raise GenerationArgumentError(f"json_schema is not JSON-serializable: {exc}") from None


class JsonConstraint:
    """One row's JSON-schema constraint over an llguidance matcher. Make it with `json_constraint`."""

    def __init__(self, matcher, vocab_size: int, eos_ids: list[int]):
        self._matcher = matcher
        self.vocab_size = vocab_size
        self._eos = eos_ids  # llguidance adds its EOS when complete; stops are the row's business

    def allowed(self) -> np.ndarray:
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        mask = np.unpackbits(bits, bitorder="little")[: self.vocab_size].astype(bool)
        mask[self._eos] = False
        return mask

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(int(token)):
            raise GenerationError(
                f"token {int(token)} breaks the JSON schema constraint: {self._matcher.get_error()}"
            )

    @property
    def accepting(self) -> bool:
        return bool(self._matcher.is_accepting())

    @property
    def done(self) -> bool:
        return bool(self._matcher.is_stopped())


def json_constraint(tokenizer, schema: Any) -> JsonConstraint:
    """A fresh constraint that keeps one row's output valid JSON for `schema`.

    Args:
        tokenizer: the model's `GemmaTokenizer` (`lm.tokenizer`).
        schema: a JSON schema as a dict, or `True` (or `"json_object"`) for
            any JSON object, like OpenAI's `{"type": "json_object"}`.

    Raises:
        GenerationArgumentError: `schema` is not a dict, or llguidance
            rejects it (the message names `json_schema` and gives its reason).
        MissingExtraError: llguidance is not installed.

    A constraint holds one row's state: make one per row.
    """
    text = _schema_text(schema)
    llg = _llguidance()
    lt = ll_tokenizer(tokenizer)
    try:
        grammar = llg.LLMatcher.grammar_from_json_schema(text, defaults=_JSON_OPTIONS)
    except ValueError as exc:
        raise GenerationArgumentError(f"json_schema is not valid: {exc}") from None
    matcher = llg.LLMatcher(lt, grammar, log_level=0)
    if matcher.is_error():
        raise GenerationArgumentError(f"json_schema is not supported: {matcher.get_error()}")
    return JsonConstraint(matcher, tokenizer.vocabulary_size, list(lt.eos_tokens))
