"""A table of bad arguments across the public API: each error names the argument."""

from __future__ import annotations

import gemma_keras as gk
from gemma_keras.architectures.chat_format import render_messages


def _cases(lm, tmp_path):
    return [
        # (call, expected exception, words the message must contain)
        (lambda: gk.use_backend("cobol"), gk.BackendError, "Unknown backend 'cobol'"),
        (lambda: gk.use_backend(42), gk.BackendError, "backend must be a string"),
        (lambda: gk.load(123), gk.SourceError, "source must be a path"),
        (lambda: gk.load(""), gk.SourceError, "empty string"),
        (lambda: gk.load(tmp_path / "nope.gguf"), gk.ModelNotFoundError, "nope.gguf"),
        (lambda: gk.load(tmp_path), gk.ModelNotFoundError, "no config.json"),
        (lambda: gk.load(None, dtype="float64"), gk.BackendError, "dtype 'float64'"),
        (lambda: lm.generate("hi", max_new_tokens=-1), gk.GenerationArgumentError, "max_new_tokens"),
        (lambda: lm.generate("hi", max_new_tokens="5"), gk.GenerationArgumentError, "max_new_tokens"),
        (lambda: lm.generate("hi", temperature=-2), gk.GenerationArgumentError, "temperature"),
        (lambda: lm.generate("hi", top_p=7), gk.GenerationArgumentError, "top_p"),
        (lambda: lm.generate("hi", top_k=-1), gk.GenerationArgumentError, "top_k"),
        (lambda: lm.generate("hi", min_p=2), gk.GenerationArgumentError, "min_p"),
        (lambda: lm.generate("hi", repetition_penalty=-1), gk.GenerationArgumentError, "repetition_penalty"),
        (lambda: lm.generate("hi", seed=1.5), gk.GenerationArgumentError, "seed"),
        (lambda: lm.generate("hi", stop=[""]), gk.GenerationArgumentError, "stop strings must not be empty"),
        (lambda: lm.generate("hi", stop=5), gk.GenerationArgumentError, "stop must be a string"),
        (lambda: lm.generate("hi", stop_token_ids=[-1]), gk.GenerationArgumentError, "stop_token_ids"),
        (lambda: lm.generate(b"hi"), gk.GenerationArgumentError, "prompt"),
        (lambda: list(lm.stream(["a", "b"])), gk.GenerationArgumentError, "stream takes one prompt"),
        (lambda: list(lm.stream("")), gk.GenerationArgumentError, "prompt is empty"),
        (lambda: lm.chat(system=5), gk.GenerationArgumentError, "system must be a string"),
        (lambda: lm.chat().send(""), gk.GenerationArgumentError, "message is empty"),
        (lambda: lm.chat().send(None), gk.GenerationArgumentError, "message is empty"),
        (lambda: lm.logits([]), gk.GenerationArgumentError, "token_ids is empty"),
        (lambda: lm.quantize("fp4"), gk.GenerationArgumentError, "quantize mode"),
        (
            lambda: render_messages([{"role": "robot", "content": "x"}]),
            gk.GenerationArgumentError,
            "role 'robot'",
        ),
        (lambda: render_messages([{"role": "user", "content": 5}]), gk.GenerationArgumentError, "content"),
    ]


def test_bad_arguments_table(tiny_model, tmp_path):
    lm = tiny_model("gemma3")
    failures = []
    for i, (call, error, words) in enumerate(_cases(lm, tmp_path)):
        try:
            call()
        except error as exc:
            if words not in str(exc):
                failures.append(f"case {i}: {words!r} not in {exc!r}")
        except Exception as exc:  # noqa: BLE001 - collect every mismatch
            failures.append(f"case {i}: expected {error.__name__}, got {type(exc).__name__}: {exc}")
        else:
            failures.append(f"case {i}: no error")
    assert not failures, "\n".join(failures)


def test_every_error_is_a_gemma_keras_error():
    for cls in (
        gk.BackendError,
        gk.GGUFError,
        gk.UnsupportedModelError,
        gk.SourceError,
        gk.ModelNotFoundError,
        gk.HubUnavailableError,
        gk.GenerationArgumentError,
        gk.CacheError,
    ):
        assert issubclass(cls, gk.GemmaKerasError)
    assert issubclass(gk.GGUFError, ValueError) and issubclass(gk.ModelNotFoundError, FileNotFoundError)
