"""Loading a Keras preset imports only what generation needs (docs/benchmarks.md, start-up).

Each check runs in a fresh Python: this test process has long since imported
TensorFlow for other tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from gemma_keras.backend.keras_hub_import import KERAS_HUB_TENSORFLOW_ENV
from tests.conftest import BACKEND

SCRIPT = """
import json, sys
import gemma_keras as gk

lm = gk.load(sys.argv[1])
report = {
    "text": lm.generate("hello world", max_new_tokens=4),
    "no_preprocessor_yet": lm._causal_lm.preprocessor is None,
    "tf_after_generate": "tensorflow" in sys.modules,
}
preprocessor = lm.causal_lm.preprocessor
report["preprocessor"] = type(preprocessor).__name__
report["same_vocabulary"] = preprocessor.tokenizer.proto == lm.tokenizer.proto
report["keras_hub_generate"] = isinstance(lm.causal_lm.generate("hello", max_length=8), str)
lm.causal_lm.preprocessor = None  # a user's choice: it stays
report["stays_none"] = lm.causal_lm.preprocessor is None
lm.causal_lm.preprocessor = preprocessor
lm.save(sys.argv[2])
import keras_hub

again = keras_hub.models.CausalLM.from_preset(sys.argv[2])
report["saved_preprocessor"] = type(again.preprocessor).__name__
print(json.dumps(report))
"""


def _run(preset, out, **env_updates) -> dict:
    env = {**os.environ, "KERAS_BACKEND": BACKEND, **env_updates}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(preset), str(out)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny_preset(tiny_model, tmp_path_factory):
    lm = tiny_model("gemma3")
    path = tmp_path_factory.mktemp("start-up") / "preset"
    lm.save(path)
    return lm, path


def test_a_preset_loads_and_generates_without_tensorflow_off_its_backend(tiny_preset, tmp_path):
    lm, path = tiny_preset
    report = _run(path, tmp_path / "again")
    # The same model: our tokenizer read from the preset's vocabulary file, the same weights.
    assert report["text"] == lm.generate("hello world", max_new_tokens=4)
    assert report["no_preprocessor_yet"]
    assert report["tf_after_generate"] is (BACKEND == "tensorflow")
    # KerasHub's preprocessor is built on first access to `causal_lm`, and works as KerasHub's own.
    assert report["preprocessor"] == "Gemma3CausalLMPreprocessor"
    assert report["same_vocabulary"]
    assert report["keras_hub_generate"]
    assert report["stays_none"]
    assert report["saved_preprocessor"] == "Gemma3CausalLMPreprocessor"


@pytest.mark.skipif(BACKEND == "tensorflow", reason="TensorFlow is the backend: nothing is hidden")
def test_the_environment_variable_gives_keras_hub_tensorflow_from_the_start(tiny_preset, tmp_path):
    _, path = tiny_preset
    report = _run(path, tmp_path / "again", **{KERAS_HUB_TENSORFLOW_ENV: "1"})
    assert report["tf_after_generate"]
    assert report["saved_preprocessor"] == "Gemma3CausalLMPreprocessor"


def test_a_broken_vocabulary_file_names_the_file(tiny_preset, tmp_path):
    import gemma_keras as gk
    from gemma_keras.errors import SourceError

    _, path = tiny_preset
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    (broken / "assets" / "tokenizer" / "vocabulary.spm").write_bytes(b"not a sentencepiece model")
    with pytest.raises(SourceError, match="vocabulary.spm is not a SentencePiece model"):
        gk.load(broken)


HITS = """
import os, sys
import gemma_keras as gk

hits = []
if os.environ["KERAS_BACKEND"] == "jax":
    import jax

    jax.monitoring.register_event_listener(
        lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None
    )
print(repr(gk.load(sys.argv[1]).generate("hello world", max_new_tokens=3)))
print(len(hits))
"""


def test_jax_reuses_the_programs_an_earlier_process_compiled(tiny_preset, tmp_path):
    """On JAX the second process reads its programs from the cache; other backends write nothing."""
    _, path = tiny_preset
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    # The tiny model compiles in milliseconds, below the threshold meant for real models.
    env.update(
        KERAS_BACKEND=BACKEND, GEMMA_KERAS_CACHE=str(tmp_path), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"
    )
    runs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", HITS, str(path)], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(done.stdout.strip().splitlines()[-2:])
    assert runs[0][0] == runs[1][0]  # the same text from the cached programs
    written = [p for p in (tmp_path / "xla").rglob("*") if p.is_file()]
    if BACKEND == "jax":
        assert written and runs[0][1] == "0" and int(runs[1][1]) > 0
    else:
        assert written == [] and runs[1][1] == "0"
