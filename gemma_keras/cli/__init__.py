"""The `gemma-keras` command line; see `commands.py`."""

from gemma_keras.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
