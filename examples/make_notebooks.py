"""Builds, checks and runs the notebooks in examples/notebooks/ from the example scripts.

The scripts are the source: cells are marked with `# %%` (code) and
`# %% [markdown]` (text, each line starting with "# "), the percent format
that VS Code, PyCharm and jupytext read. So a notebook cannot drift from its
script:

    python examples/make_notebooks.py                 # rewrite the notebooks
    python examples/make_notebooks.py --check         # fail if one is out of date
    python examples/make_notebooks.py --run quickstart --backend torch   # execute top to bottom
    python examples/make_notebooks.py --run finetune_lora --set epochs=1 # with a script argument changed

Running needs the `notebooks` extra (nbclient, nbformat, ipykernel).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
OUT = HERE / "notebooks"
SCRIPTS = ("quickstart", "finetune_lora", "export")


def cells_of(script: str) -> list[dict]:
    """The percent-format cells of a script, as notebook cells (no outputs)."""
    cells: list[dict] = []
    kind, lines = None, []

    def close() -> None:
        while lines and not lines[-1].strip():
            lines.pop()
        if kind is None or not lines:
            return
        if kind == "markdown":
            text = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines]
            cells.append({"cell_type": "markdown", "metadata": {}, "source": _source(text)})
        else:
            cells.append(
                {
                    "cell_type": "code",
                    "execution_count": None,
                    "metadata": {},
                    "outputs": [],
                    "source": _source(lines),
                }
            )

    for line in script.splitlines():
        if line.startswith("# %%"):
            close()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        elif kind is not None:
            lines.append(line)
    close()
    return cells


def _source(lines: list[str]) -> list[str]:
    return [line + "\n" for line in lines[:-1]] + lines[-1:]


def notebook_of(script: str) -> dict:
    return {
        "cells": cells_of(script),
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def render(name: str) -> str:
    notebook = notebook_of((HERE / f"{name}.py").read_text())
    for i, cell in enumerate(notebook["cells"]):
        cell["id"] = f"{name}-{i}"  # stable ids, so rebuilding changes nothing
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def stale() -> list[str]:
    """The notebooks that differ from what their scripts give."""
    return [
        n
        for n in SCRIPTS
        if not (OUT / f"{n}.ipynb").is_file() or (OUT / f"{n}.ipynb").read_text() != render(n)
    ]


def run(name: str, backend: str, workdir: Path, timeout: int, settings: dict | None = None) -> str:
    """Executes a notebook top to bottom in a fresh kernel on `backend`; prints and returns its output.

    `settings` replace the script's argument defaults (`{"epochs": 1}`), in a
    cell after the one that parses them, as papermill's parameters do.
    """
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.reads(render(name), as_version=4)
    if settings:
        at = next((i for i, c in enumerate(notebook.cells) if "parser.parse_args(" in c.source), None)
        if at is None:
            raise SystemExit(f"--set: {name} parses no arguments, so there is nothing to set.")
        lines = [f"args.{key} = {value!r}" for key, value in settings.items()]
        notebook.cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(lines)))
    os.environ["KERAS_BACKEND"] = backend  # the kernel inherits it; the settings cell reads it
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"running {name} on {backend}...", file=sys.stderr, flush=True)
    resources = {"metadata": {"path": str(workdir)}}
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources=resources).execute()
    output = ""
    for cell in notebook.cells:
        text = "".join(
            o.get("text") or o.get("data", {}).get("text/plain", "") for o in cell.get("outputs", [])
        )
        if text:
            output += text if text.endswith("\n") else text + "\n"
    print(output, end="")
    print(
        f"{name} on {backend}: ran {len(notebook.cells)} cells in {time.monotonic() - started:.0f} s",
        file=sys.stderr,
    )
    return output


def _setting(text: str) -> tuple[str, object]:
    """`NAME=VALUE` from the command line; VALUE as a Python literal, or else as a string."""
    import ast

    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"--set takes NAME=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a notebook is out of date")
    parser.add_argument("--run", choices=SCRIPTS, help="execute this notebook")
    parser.add_argument("--backend", default="jax")
    parser.add_argument(
        "--workdir", default=None, help="where the notebook runs (default: a temporary directory)"
    )
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    parser.add_argument(
        "--set",
        type=_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="replace one of the script's argument defaults, e.g. --set epochs=1",
    )
    args = parser.parse_args()
    if args.run:
        import tempfile

        workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix=f"nb-{args.run}-"))
        run(args.run, args.backend, workdir, args.timeout, dict(args.set))
        return 0
    if args.check:
        out_of_date = stale()
        if out_of_date:
            print(
                f"out of date: {', '.join(out_of_date)}; run python examples/make_notebooks.py",
                file=sys.stderr,
            )
            return 1
        return 0
    OUT.mkdir(exist_ok=True)
    for name in SCRIPTS:
        (OUT / f"{name}.ipynb").write_text(render(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
