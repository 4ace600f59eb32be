"""Property-based tests over the public functions' arguments.

For each argument, hypothesis draws values of every kind (numpy scalars,
extremes, NaN/inf, empty and huge values, iterables of every sort, wrong
types) while the other arguments stay valid. A rule written here, the same on
every backend, says whether the value is valid. A valid value must give a
correct result; an invalid one a `GemmaKerasError` whose message names the
argument. The draws are derandomized, so every backend session runs the
same cases; `PROPERTY COUNTS` lines in the log give the tallies.
"""

from __future__ import annotations

import math
import os
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gemma_keras as gk
from gemma_keras.checks import is_integer, is_number
from gemma_keras.quantization import QUANTIZE_MODES

SETTINGS = settings(
    max_examples=int(os.environ.get("GEMMA_KERAS_PROPERTY_EXAMPLES", "80")),
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
COUNTS: Counter = Counter()


class _Weird:
    def __repr__(self) -> str:
        return "<object>"


def _values():
    """Values of every kind an argument might be given."""
    scalars = st.sampled_from(
        [
            None,
            True,
            False,
            0,
            1,
            2,
            3,
            -1,
            -(2**63),
            2**63,
            10**30,
            0.0,
            -0.0,
            1e-300,
            0.25,
            0.5,
            1.0,
            1.5,
            7.0,
            1e300,
            math.nan,
            math.inf,
            -math.inf,
            np.int64(3),
            np.int32(-2),
            np.uint8(1),
            np.float32(0.5),
            np.float64(math.nan),
            np.float16(1.0),
            np.bool_(True),
            "",
            "3",
            "x",
            "\n\n",
            "caf\udcff",
            b"x",
            _Weird(),
        ]
    )
    containers = st.one_of(
        st.lists(st.integers(-5, 600), max_size=4),
        st.lists(st.text(max_size=3), max_size=3),
        st.tuples(st.integers(0, 400)),
        st.sets(st.integers(0, 400), max_size=3),
        st.just({"a": 1}),
        st.just(np.array([1, 2])),
        st.just(np.array([], dtype=np.int64)),
        st.lists(st.integers(0, 3), max_size=2).map(iter),
    )
    return st.one_of(
        scalars, st.integers(-(10**6), 10**6), st.floats(allow_nan=True), st.text(max_size=5), containers
    )


def _num(v) -> bool:
    return is_number(v) and math.isfinite(float(v))


def _text_ok(v) -> bool:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _iterable(v) -> bool:
    return not isinstance(v, (str, bytes, dict)) and hasattr(v, "__iter__")


VOCAB = 457  # the tiny test vocabulary (tests/conftest.py's gemma3 model)
# Room left in the context after each call's prompt; set by the `lm` fixture.
ROOM = {}
RULES = {
    "max_new_tokens": lambda v: is_integer(v) and 1 <= v <= ROOM["generate"],
    "temperature": lambda v: _num(v) and v >= 0,
    "top_k": lambda v: v is None or (is_integer(v) and v >= 1),
    "top_p": lambda v: v is None or (_num(v) and 0 < v <= 1),
    "min_p": lambda v: v is None or (_num(v) and 0 <= v <= 1),
    "repetition_penalty": lambda v: v is None or (_num(v) and v > 0),
    "seed": lambda v: v is None or (is_integer(v) and v >= 0),
    "stop": lambda v: (
        v is None
        or (isinstance(v, str) and v != "" and _text_ok(v))
        or (_iterable(v) and all(isinstance(s, str) and s != "" and _text_ok(s) for s in list(v)))
    ),
    "stop_token_ids": lambda v: (
        v is None or (_iterable(v) and all(is_integer(i) and 0 <= i < VOCAB for i in list(v)))
    ),
    "include_prompt": lambda v: isinstance(v, (bool, np.bool_)),
    "add_bos": lambda v: isinstance(v, (bool, np.bool_)),
}


def _expect(call, name: str, value, valid: bool):
    """Runs `call`; a valid value must not raise, an invalid one must raise a GemmaKerasError naming `name`."""
    try:
        out = call()
    except gk.GemmaKerasError as exc:
        assert not valid, f"{name}={value!r} is valid but was refused: {exc}"
        assert name in str(exc), f"{name}={value!r}: the error does not name it: {exc}"
        return None
    assert valid, f"{name}={value!r} is invalid but returned {out!r}"
    return out


def _replay(value):
    """A fresh copy for the rule and one for the call (iterators are consumed once)."""
    if isinstance(value, type(iter([]))):
        items = list(value)
        return iter(items), iter(items)
    return value, value


@pytest.fixture(scope="module")
def lm(tiny_model):
    model = tiny_model("gemma3")
    assert model.tokenizer.vocabulary_size == VOCAB
    context = model.info.context_length
    ROOM["generate"] = context - len(model.tokenizer.encode("hello world"))
    ROOM["chat"] = context - len(model.encode_messages([{"role": "user", "content": "hi"}]))
    return model


@pytest.mark.parametrize("name", sorted(RULES))
def test_generate_arguments(lm, name):
    @SETTINGS
    @given(value=_values())
    def check(value):
        for_rule, for_call = _replay(value)
        valid = RULES[name](for_rule)
        kwargs = {"max_new_tokens": 3, "stop_token_ids": (), name: for_call}
        out = _expect(lambda: lm.generate("hello world", **kwargs), name, value, valid)
        COUNTS[(name, "ran" if valid else "refused")] += 1
        assert out is None or isinstance(out, str)

    check()
    print(
        f"PROPERTY COUNTS generate {name}: {COUNTS[(name, 'ran')]} ran, {COUNTS[(name, 'refused')]} refused"
    )


def _prompt_valid(v) -> bool:
    def one(p):
        if isinstance(p, str):
            return p != "" and _text_ok(p)
        if not _iterable(p):
            return False
        items = list(p)
        return bool(items) and all(is_integer(i) and 0 <= i < VOCAB for i in items)

    if isinstance(v, str):
        return one(v)
    if not _iterable(v):
        return False
    items = list(v)
    if not items:
        return False
    if all(is_integer(i) for i in items):
        return one(items)
    return all(one(p) for p in items)


def _ids_valid(v) -> bool:
    if not _iterable(v):
        return False
    items = list(v)
    return bool(items) and all(is_integer(i) and 0 <= i < VOCAB for i in items)


def test_generate_prompts(lm):
    prompts = st.one_of(
        _values(),
        st.lists(st.one_of(st.text(max_size=6), st.lists(st.integers(-3, 500), max_size=3)), max_size=3),
    )

    @SETTINGS
    @given(value=prompts)
    def check(value):
        for_rule, for_call = _replay(value)
        valid = _prompt_valid(for_rule)
        out = _expect(
            lambda: lm.generate(for_call, max_new_tokens=2, stop_token_ids=()), "prompt", value, valid
        )
        assert out is None or isinstance(out, (str, list))

    check()


FINETUNE_RULES = {
    "lora_rank": lambda v: is_integer(v) and v >= 1,
    "epochs": lambda v: is_integer(v) and v >= 1,
    "batch_size": lambda v: is_integer(v) and v >= 1,
    "max_steps": lambda v: v is None or (is_integer(v) and v >= 1),
    "learning_rate": lambda v: _num(v) and 0 < v < 1,
    "weight_decay": lambda v: _num(v) and v >= 0,
    "lora_alpha": lambda v: v is None or (_num(v) and v > 0),
    "seed": lambda v: is_integer(v) and v >= 0,
    "warmup_steps": lambda v: v is None or (is_integer(v) and v >= 0),
    "decay": lambda v: isinstance(v, str) and v in ("cosine", "linear", "constant"),
}


@pytest.mark.parametrize("name", sorted(FINETUNE_RULES))
def test_finetune_config_arguments(name):
    @SETTINGS
    @given(value=_values())
    def check(value):
        _expect(lambda: gk.FinetuneConfig(**{name: value}), name, value, FINETUNE_RULES[name](value))

    check()


def test_chat_and_low_level_calls(lm):
    @SETTINGS
    @given(value=_values())
    def check(value):
        for call, name, valid in (
            (lambda: lm.logits(value), "token_ids", _ids_valid(value)),
            (
                lambda: lm.chat(system=value),
                "system",
                value is None or (isinstance(value, str) and _text_ok(value)),
            ),
            (
                lambda: lm.chat(max_new_tokens=value).send("hi"),
                "max_new_tokens",
                is_integer(value) and 1 <= value <= ROOM["chat"],
            ),
            (
                lambda: (
                    lm.quantize(value) if not isinstance(value, str) or value not in QUANTIZE_MODES else None
                ),
                "quantize",
                False,
            ),
        ):
            if not isinstance(value, type(iter([]))):
                _expect(call, name, value, valid)

    check()
