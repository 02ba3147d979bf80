"""The ``pgclip`` command: one module per group of subcommands, ``main`` in ``main.py``."""

from pgclip.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
