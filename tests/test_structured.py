"""Structured output: JSON-schema constrained generation through llguidance, on every backend.

The tiny models are random, so what they write is noise; the constraint is
what makes it valid JSON. The schemas bound every string (`maxLength`),
number (`maximum`), array (`maxItems`) and object (`additionalProperties:
false`), so each output must finish well inside its token budget.
"""

from __future__ import annotations

import json
import sys

import jsonschema
import numpy as np
import pytest

import gemma_keras as gk
from gemma_keras.errors import MissingExtraError
from gemma_keras.generation.decode import Batch, Request, decode, generate_ids
from gemma_keras.generation.structured import Constraint, _Wrapper, json_constraint, ll_tokenizer

BUDGET = 160  # tokens; the schemas below finish far sooner (a character may be 4 byte tokens)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "kind": {"enum": ["cat", "dog", "bird"]},
    },
    "required": ["name", "age", "kind"],
    "additionalProperties": False,
}
TAGS = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 4},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "maxItems": 3},
        "done": {"type": "boolean"},
    },
    "required": ["title", "tags", "done"],
    "additionalProperties": False,
}
NESTED = {
    "type": "object",
    "properties": {
        "user": {
            "type": "object",
            "properties": {
                "id": {"type": "integer", "minimum": 0, "maximum": 9},
                "nick": {"type": "string", "maxLength": 3},
            },
            "required": ["id", "nick"],
            "additionalProperties": False,
        },
        "role": {"enum": ["admin", "guest"]},
    },
    "required": ["user", "role"],
    "additionalProperties": False,
}
SCHEMAS = {"person": PERSON, "tags": TAGS, "nested": NESTED}
PROMPTS = ["hello world", "the capital of France is", "model"]


@pytest.fixture(scope="module")
def lm(tiny_model):
    return tiny_model("gemma3")


def _valid(text: str, schema: dict) -> dict:
    value = json.loads(text)
    jsonschema.validate(value, schema)
    return value


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_greedy_output_is_json_that_the_schema_accepts(lm, name):
    schema = SCHEMAS[name]
    out = lm.generate(PROMPTS[0], max_new_tokens=BUDGET, json_schema=schema)
    _valid(out, schema)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_seeded_sampled_output_is_valid_and_repeats(lm, name):
    schema = SCHEMAS[name]
    kwargs = dict(max_new_tokens=BUDGET, json_schema=schema, temperature=1.0, top_p=0.95, seed=7)
    out = lm.generate(PROMPTS[1], **kwargs)
    _valid(out, schema)
    assert lm.generate(PROMPTS[1], **kwargs) == out  # a fresh constraint per call, same seed, same text


def test_a_batch_of_prompts_each_gets_its_own_constraint(lm):
    for temperature in (0.0, 1.2):
        outs = lm.generate(
            PROMPTS, max_new_tokens=BUDGET, json_schema=PERSON, temperature=temperature, seed=3
        )
        assert len(outs) == len(PROMPTS)
        for out in outs:
            _valid(out, PERSON)


def test_stream_joins_to_generate(lm):
    pieces = list(lm.stream(PROMPTS[2], max_new_tokens=BUDGET, json_schema=NESTED, temperature=0.9, seed=1))
    assert "".join(pieces) == lm.generate(
        PROMPTS[2], max_new_tokens=BUDGET, json_schema=NESTED, temperature=0.9, seed=1
    )
    _valid("".join(pieces), NESTED)


def test_json_object_mode_gives_objects(lm):
    """`json_schema=True`: any JSON object. Unbounded, so some rows may hit the budget; finished ones parse."""
    requests = [
        Request(
            lm.tokenizer.encode(p),
            60,
            gk.SamplingParams(temperature=1.0, seed=seed),
            frozenset(lm.default_stop_ids),
            constraint=json_constraint(lm.tokenizer, True if seed % 2 else "json_object"),
            stream=i,
        )
        for seed in range(3)
        for i, p in enumerate(PROMPTS)
    ]
    texts, reasons = _run(lm, requests)
    finished = [t for t, r in zip(texts, reasons, strict=True) if r == "stop"]
    assert finished, texts
    for text in finished:
        assert isinstance(json.loads(text), dict)
    for text in texts:
        assert text.startswith("{")


def test_a_schema_that_is_one_enum_ends_the_row_with_stop(lm):
    schema = {"enum": ["yes", "no"]}
    request = Request(
        lm.tokenizer.encode("hello"),
        BUDGET,
        stop_ids=frozenset(lm.default_stop_ids),
        constraint=json_constraint(lm.tokenizer, schema),
    )
    texts, reasons = _run(lm, [request])
    assert json.loads(texts[0]) in ("yes", "no")
    assert reasons == ["stop"]


def test_a_row_cut_by_max_new_tokens_has_finish_reason_length(lm):
    request = Request(lm.tokenizer.encode("hello"), 3, constraint=json_constraint(lm.tokenizer, PERSON))
    texts, reasons = _run(lm, [request])
    assert reasons == ["length"]
    assert texts[0].startswith("{")
    with pytest.raises(ValueError):  # incomplete JSON, as with OpenAI's finish_reason "length"
        json.loads(texts[0])


class _Spy:
    """A constraint that records, at each pick, the mask it offered; then what was accepted."""

    def __init__(self, inner):
        self.inner = inner
        self.masks: list[np.ndarray] = []
        self.accepted: list[int] = []

    def allowed(self):
        mask = self.inner.allowed()
        self.masks.append(mask.copy())
        return mask

    def accept(self, token):
        self.accepted.append(token)
        self.inner.accept(token)

    @property
    def accepting(self):
        return self.inner.accepting

    @property
    def done(self):
        return self.inner.done


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_every_picked_token_was_allowed_by_the_mask(lm, temperature):
    spy = _Spy(json_constraint(lm.tokenizer, PERSON))
    assert isinstance(spy, Constraint)
    prompt = lm.tokenizer.encode(PROMPTS[0])
    sampling = gk.SamplingParams(temperature=temperature, seed=5)
    request = Request(prompt, BUDGET, sampling, frozenset(lm.default_stop_ids), constraint=spy)
    texts, reasons = _run(lm, [request])
    assert reasons == ["stop"]
    assert len(spy.masks) == len(spy.accepted) > 5
    for mask, token in zip(spy.masks, spy.accepted, strict=True):
        assert mask[token], lm.tokenizer.id_to_token(token)
    # The mask changed the output: alone, this random model writes no JSON at all.
    free = generate_ids(lm.runner, [prompt], len(spy.accepted), sampling, lm.default_stop_ids)[0]
    assert free != spy.accepted
    with pytest.raises(ValueError):
        json.loads(lm.tokenizer.decode(free))
    _valid(texts[0], PERSON)


def test_a_mixed_batch_leaves_the_unconstrained_row_as_it_is_alone(lm):
    a, b = (lm.tokenizer.encode(p) for p in PROMPTS[:2])
    stops = frozenset(lm.default_stop_ids)
    constrained = Request(a, BUDGET, stop_ids=stops, constraint=json_constraint(lm.tokenizer, TAGS))
    free = Request(b, 40, stop_ids=stops)
    batch, _ = Batch.start(lm.runner, [constrained, free], detokenize=lm.tokenizer.decode)
    while not batch.done:
        batch.step()
    _valid(batch.text(0), TAGS)
    assert batch.ids(1) == generate_ids(lm.runner, [b], 40, stop_ids=stops)[0]


def test_a_constraint_that_allows_nothing_is_a_generation_error(lm):
    class Stuck:
        accepting = False
        done = False

        def allowed(self):
            return np.zeros(lm.tokenizer.vocabulary_size, dtype=bool)

        def accept(self, token):
            raise AssertionError("nothing may be accepted")

    with pytest.raises(gk.GenerationError, match="allows no token"):
        Batch.start(lm.runner, [Request(lm.tokenizer.encode("hi"), 4, constraint=Stuck())])


def test_a_request_refuses_a_constraint_that_is_not_one(lm):
    with pytest.raises(gk.GenerationArgumentError, match="constraint"):
        Batch.start(lm.runner, [Request(lm.tokenizer.encode("hi"), 4, constraint=PERSON)])


@pytest.mark.parametrize(
    "schema, reason",
    [
        ({"type": "foo"}, "foo"),
        ({"type": "string", "pattern": "(?<=a)b"}, "look"),
        ({"not": {"type": "string"}}, "not"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ([{"type": "object"}], "dict"),
        ("object", "dict"),
        (42, "dict"),
        (np.array([1, 2]), "dict"),
        (False, "dict"),
        ({"x": {1, 2}}, "serializable"),
    ],
)
def test_a_bad_schema_is_an_argument_error_naming_json_schema(lm, schema, reason):
    with pytest.raises(gk.GenerationArgumentError, match="json_schema") as info:
        lm.generate("hello", max_new_tokens=4, json_schema=schema)
    assert reason in str(info.value)


def test_a_missing_llguidance_says_which_extra_to_install(lm, monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)
    with pytest.raises(MissingExtraError, match=r"gemma-keras\[structured\]"):
        json_constraint(lm.tokenizer, PERSON)
    assert lm.generate("hello", max_new_tokens=2) is not None  # unconstrained generation needs none


def test_the_vocabulary_llguidance_sees(lm):
    tok = lm.tokenizer
    wrapper = _Wrapper(tok)
    assert len(wrapper.tokens) == tok.vocabulary_size
    assert wrapper.tokens[tok.token_to_id("\u2581the")] == b" the"
    assert wrapper.tokens[tok.token_to_id("<0x41>")] == b"A"
    assert wrapper.tokens[tok.token_to_id("<0xE2>")] == b"\xe2"
    for special in ("<eos>", "<end_of_turn>", "<pad>", "<start_of_image>"):
        assert tok.token_to_id(special) in wrapper.special_token_ids
    assert tok.token_to_id("\n") not in wrapper.special_token_ids
    assert wrapper("hello world") == tok.encode("hello world", add_bos=False)
    assert ll_tokenizer(tok) is ll_tokenizer(tok)  # built once per tokenizer


def _run(lm, requests) -> tuple[list[str], list[str]]:
    texts, reasons = [""] * len(requests), [""] * len(requests)
    for event in decode(lm.runner, requests, lm.tokenizer.pad_id, lm.tokenizer.decode):
        texts[event.row] += event.text
        if event.finish_reason:
            reasons[event.row] = event.finish_reason
    return texts, reasons
