"""Training data: reading, checking, chat rendering, loss masks and batches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gemma_keras.errors import DataError
from gemma_keras.training.data import iter_records, make_batch, tokenize_records


@pytest.fixture(scope="module")
def tok(tiny_model):
    return tiny_model("gemma3").tokenizer


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_three_record_shapes_render_in_gemma_chat_format(tok):
    records = [
        {"text": "hello world"},
        {"prompt": "hi", "response": "yo"},
        {
            "messages": [
                {"role": "system", "content": "brief"},
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
            ]
        },
    ]
    examples, stats = tokenize_records(records, tok, sequence_length=256)
    assert stats.records == 3 and len(examples) == 3
    text = tok.decode(examples[0].ids, skip_special=False)
    assert text == "<bos>hello world<eos>"
    chat = tok.decode(examples[1].ids, skip_special=False)
    assert chat == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\nyo<end_of_turn>\n"
    system = tok.decode(examples[2].ids, skip_special=False)
    assert system.startswith("<bos><start_of_turn>user\nbrief\n\na<end_of_turn>")


def test_loss_mask_covers_only_model_turns_with_end_of_turn(tok):
    (example,), _ = tokenize_records([{"prompt": "hi there", "response": "the reply"}], tok, 256)
    trained = tok.decode(example.ids[example.loss_mask == 1], skip_special=False)
    assert trained == "the reply<end_of_turn>"
    (unmasked,), _ = tokenize_records(
        [{"prompt": "hi there", "response": "the reply"}], tok, 256, mask_prompt=False
    )
    assert unmasked.loss_mask.sum() == len(unmasked.ids) - 1  # every token but <bos>


def test_multi_turn_trains_every_model_turn(tok):
    messages = [
        {"role": "user", "content": "u1"},
        {"role": "model", "content": "m1"},
        {"role": "user", "content": "u2"},
        {"role": "model", "content": "m2"},
    ]
    (example,), _ = tokenize_records([{"messages": messages}], tok, 256)
    trained = tok.decode(example.ids[example.loss_mask == 1], skip_special=False)
    assert trained == "m1<end_of_turn>m2<end_of_turn>"


def test_malformed_jsonl_line_names_file_and_line(tmp_path, tok):
    path = _write(
        tmp_path / "train.jsonl", ['{"text": "ok"}', "", '{"text": "ok"', '{"prompt": 3, "response": "x"}']
    )
    with pytest.raises(DataError, match=r"train\.jsonl:3: not valid JSON.*on_error='skip'"):
        tokenize_records(path, tok, 64)
    examples, stats = tokenize_records(path, tok, 64, on_error="skip")
    assert len(examples) == 1 and stats.skipped == 2
    assert any(
        "train.jsonl:4" in reason and "'prompt' must be a string" in reason
        for reason in stats.skipped_reasons
    )


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ([1, 2], "must be a JSON object"),
        ({"question": "x"}, "keys are: question"),
        ({"text": ""}, "non-empty"),
        ({"messages": [{"role": "user", "content": "only a question"}]}, "no model turn"),
        ({"messages": [{"role": "model", "content": "x"}]}, "must alternate"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role 'robot'"),
    ],
)
def test_bad_records_get_clear_errors(tok, record, message):
    with pytest.raises(DataError, match=message):
        tokenize_records([record], tok, 64)


def test_bad_sources(tmp_path, tok):
    with pytest.raises(DataError, match="missing.jsonl.*does not exist"):
        tokenize_records(tmp_path / "missing.jsonl", tok, 64)
    with pytest.raises(DataError, match="JSONL path, a list of dicts"):
        tokenize_records({"text": "a dict, not a list"}, tok, 64)
    (tmp_path / "bin.jsonl").write_bytes(b'{"text": "\xff\xfe"}\n')
    with pytest.raises(DataError, match="bin.jsonl:1: not valid UTF-8"):
        tokenize_records(tmp_path / "bin.jsonl", tok, 64)
    with pytest.raises(DataError, match="no usable records"):
        tokenize_records(tmp_path / "bin.jsonl", tok, 64, on_error="skip")


def test_truncation_keeps_sequence_length_plus_one_and_drops_untrainable(tok):
    long = {"prompt": "word " * 50, "response": "end"}
    examples, stats = tokenize_records([long, {"text": "short one"}], tok, sequence_length=16)
    assert stats.truncated == 1 and stats.dropped_empty == 1  # the reply fell off the end
    assert len(examples) == 1
    kept, _ = tokenize_records([{"text": "word " * 50}], tok, sequence_length=16)
    assert len(kept[0].ids) == 17


def test_datasets_like_iterables_work(tok):
    class FakeDataset:  # datasets.Dataset iterates as dicts
        def __iter__(self):
            yield {"prompt": "p", "response": "r"}

    assert len(list(iter_records(FakeDataset()))) == 1


def test_batch_positions_are_the_trained_next_tokens(tok):
    examples, _ = tokenize_records(
        [{"prompt": "hi", "response": "a longer reply here"}, {"text": "plain text line"}], tok, 64
    )
    x, y, w = make_batch(examples, 64, tok.pad_id)
    assert x["token_ids"].shape[1] == 32 and x["padding_mask"].shape == x["token_ids"].shape
    for row, example in enumerate(examples):
        n = int(w[row].sum())
        assert n == int(example.loss_mask[1:].sum())
        positions = x["positions"][row, :n]
        np.testing.assert_array_equal(y[row, :n], example.ids[positions + 1])
        assert example.loss_mask[positions + 1].all()
        assert x["padding_mask"][row].sum() == len(example.ids) - 1


def test_jsonl_file_round_trip(tmp_path, tok):
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(5)]
    path = _write(tmp_path / "d.jsonl", [json.dumps(r) for r in rows])
    from_file, _ = tokenize_records(path, tok, 64)
    from_list, _ = tokenize_records(rows, tok, 64)
    assert all(np.array_equal(a.ids, b.ids) for a, b in zip(from_file, from_list, strict=True))
