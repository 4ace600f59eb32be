"""The example notebooks are built from the example scripts and stay in step with them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _builder():
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "examples" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_notebook_matches_its_script():
    builder = _builder()
    assert builder.stale() == [], "run: python examples/make_notebooks.py"


def test_a_notebook_holds_all_of_its_scripts_code():
    builder = _builder()
    for name in builder.SCRIPTS:
        script = (ROOT / "examples" / f"{name}.py").read_text()
        notebook = json.loads((ROOT / "examples" / "notebooks" / f"{name}.ipynb").read_text())
        code = "".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code")
        lines = [line for line in script.splitlines() if line.strip() and not line.startswith("#")]
        assert all(line in code for line in lines), name
        assert notebook["cells"][0]["cell_type"] == "markdown"
