"""The README is a promise: its public names exist, its extras exist, and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

import gemma_keras as gk

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_every_public_name_in_the_readme_exists():
    from gemma_keras.generation.chat import Chat

    missing = [f"gk.{n}" for n in set(re.findall(r"(?<![.\w])gk\.(\w+)", README)) if not hasattr(gk, n)]
    missing += [
        f"lm.{n}" for n in set(re.findall(r"(?<![.\w])lm\.(\w+)", README)) if not hasattr(gk.Gemma, n)
    ]
    missing += [
        f"chat.{n}" for n in set(re.findall(r"(?<![.\w])chat\.(\w+)", README)) if not hasattr(Chat, n)
    ]
    assert missing == []


def test_the_install_commands_name_extras_that_exist():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = {e for group in re.findall(r"'\.\[([\w,]+)\]'", README) for e in group.split(",")}
    assert named and named <= extras


def test_ci_runs_the_readme_test_command():
    command = re.search(r"python3 -m pip install nox && (python3 -m nox -s lint [^\n`]+)", README).group(1)
    assert command.strip() in (ROOT / ".ci" / "run").read_text()
