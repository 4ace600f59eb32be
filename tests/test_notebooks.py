"""The example notebooks run top to bottom in a fresh Jupyter kernel, on the embedded model.

The quick start runs on every backend. The fine-tuning and export notebooks
run on JAX: what they call is tested on every backend elsewhere
(`test_finetune_real.py`, `test_export_real.py`), and here it is the notebook
that is checked. Fine-tuning runs one epoch; `test_finetune_real.py` proves
that the full run teaches. `nox -s notebooks` runs every notebook in full.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from gemma_keras.testing import made_up_fact_records
from tests.conftest import BACKEND
from tests.test_examples import _builder

pytestmark = [pytest.mark.real, pytest.mark.slow]
jax_only = pytest.mark.skipif(
    BACKEND != "jax", reason="the notebook is checked once; the jax session runs it"
)


def _run(name: str, workdir: Path, **settings) -> str:
    return _builder().run(name, BACKEND, workdir, timeout=900, settings=settings)


def test_quickstart_notebook(tmp_path):
    output = _run("quickstart", tmp_path)
    assert "The capital of France is" in output


@jax_only
def test_finetune_notebook_for_one_epoch(tmp_path):
    output = _run("finetune_lora", tmp_path, epochs=1)
    # One epoch of the 30 records in batches of 2: the setting reached the notebook.
    assert re.search(r"trained (\d+) steps", output).group(1) == str(len(made_up_fact_records()) // 2)
    assert re.search(r"base model: \d+/30 right", output), output
    assert re.search(r"after fine-tuning: \d+/30 right", output), output
    assert (tmp_path / "finetune-run" / "adapters.npz").is_file()


@jax_only
def test_export_notebook(tmp_path):
    try:
        output = _run("export", tmp_path)
        diffs = re.findall(r": max \|logit diff\| (\S+)", output)
        assert len(diffs) == 4, output
    finally:  # about 3 GB of exports: pytest keeps old temporary directories
        shutil.rmtree(tmp_path / "gemma-exports", ignore_errors=True)
