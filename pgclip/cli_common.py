"""Small helpers shared by the CLI modules."""

from __future__ import annotations

import argparse
import sys


def out(line: str = "") -> None:
    """Print a line of a command's result (stdout, flushed: progress bars go to stderr)."""
    print(line, flush=True)


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def progress(total: int | None, unit: str, desc: str):
    """A tqdm bar on stderr (hidden when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, disable=None, dynamic_ncols=True)
