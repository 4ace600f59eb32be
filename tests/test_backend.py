"""The backend layer: names, resolution order, errors and dtype policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import gemma_keras as gk
from gemma_keras import backend
from gemma_keras.backend import selection
from tests.conftest import BACKEND


def _resolve_in_fresh_python(env_updates: dict, code: str = "") -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "KERAS_HOME")}
    env.update(env_updates)
    script = (
        "import sys, gemma_keras as gk\n"
        f"{code}\n"
        "print(gk.backend.resolve_backend()); print('keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return out.stdout


def test_import_does_not_import_keras():
    out = _resolve_in_fresh_python({"KERAS_BACKEND": BACKEND})
    assert out.splitlines()[-1] == "False"


def test_env_var_is_used():
    out = _resolve_in_fresh_python({"KERAS_BACKEND": "torch"})
    assert "('torch', 'KERAS_BACKEND')" in out


def test_explicit_call_beats_env_var():
    out = _resolve_in_fresh_python({"KERAS_BACKEND": "tensorflow"}, "gk.use_backend('torch')")
    assert "('torch', 'use_backend()')" in out


def test_keras_config_file_is_used(tmp_path):
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "torch"}))
    out = _resolve_in_fresh_python({"KERAS_HOME": str(tmp_path)})
    assert "('torch', 'keras config file')" in out


def test_the_config_file_keras_writes_for_itself_does_not_count(tmp_path):
    """Keras writes keras.json naming tensorflow on its first import; that is not the user's choice."""
    env = {"KERAS_HOME": str(tmp_path)}
    first = _resolve_in_fresh_python(env, "gk.backend.ensure_backend()")
    config = tmp_path / "keras.json"
    assert config.read_text().strip() == selection.KERAS_OWN_CONFIG  # Keras wrote it, as it does
    expected = "jax" if backend.is_installed("jax") else "torch"
    assert f"('{expected}', 'keras already imported')" in first
    again = _resolve_in_fresh_python(env)
    assert f"('{expected}', 'first installed backend')" in again


def test_a_config_file_the_user_edited_counts(tmp_path):
    # The same keys Keras writes, but not Keras' own text: someone chose this backend.
    (tmp_path / "keras.json").write_text(
        json.dumps(
            {"floatx": "float32", "epsilon": 1e-07, "backend": "torch", "image_data_format": "channels_last"}
        )
    )
    out = _resolve_in_fresh_python({"KERAS_HOME": str(tmp_path)})
    assert "('torch', 'keras config file')" in out


def test_first_installed_backend_is_the_fallback(tmp_path):
    out = _resolve_in_fresh_python({"KERAS_HOME": str(tmp_path)})
    expected = "jax" if backend.is_installed("jax") else "torch"
    assert f"('{expected}', 'first installed backend')" in out


@pytest.mark.parametrize("name", ["", "mxnet", "theano", "JAXX"])
def test_unknown_backend_name(name):
    with pytest.raises(gk.BackendError, match="Unknown backend"):
        gk.use_backend(name)


def test_aliases_are_accepted():
    assert backend.normalize_backend_name("TF") == "tensorflow"
    assert backend.normalize_backend_name("pytorch") == "torch"


def test_backend_not_installed_names_the_pip_command(monkeypatch):
    real = selection.importlib.util.find_spec
    monkeypatch.setattr(
        selection.importlib.util, "find_spec", lambda mod, *a: None if mod == "jax" else real(mod, *a)
    )
    with pytest.raises(
        gk.BackendError, match=r"not installed.*pip install '\.\[jax\]' in the gemma_keras clone"
    ):
        gk.use_backend("jax")


def test_switching_after_keras_import_is_refused():
    backend.ensure_backend()
    other = next(b for b in ("torch", "tensorflow", "jax") if b != BACKEND and backend.is_installed(b))
    with pytest.raises(gk.BackendError, match=f"already imported with the '{BACKEND}' backend"):
        gk.use_backend(other)
    assert gk.use_backend(BACKEND) == BACKEND  # the same backend is a no-op


def test_current_backend_matches_keras():
    import keras

    backend.ensure_backend()
    assert gk.current_backend() == keras.backend.backend() == BACKEND


def test_available_backends_lists_the_active_one_with_version_and_devices():
    found = gk.available_backends()
    assert BACKEND in found
    assert found[BACKEND]["version"] not in ("", "unknown")
    assert any(d.startswith("cpu") for d in found[BACKEND]["devices"])


def test_dtype_policy(monkeypatch):
    monkeypatch.delenv("GEMMA_KERAS_DTYPE", raising=False)
    expected = "bfloat16" if backend.has_accelerator(BACKEND) else "float32"
    assert backend.default_dtype(BACKEND) == expected
    monkeypatch.setenv("GEMMA_KERAS_DTYPE", "bfloat16")
    assert backend.default_dtype(BACKEND) == "bfloat16"
    monkeypatch.setenv("GEMMA_KERAS_DTYPE", "float64")
    with pytest.raises(gk.BackendError, match="Unsupported dtype 'float64'"):
        backend.default_dtype(BACKEND)
