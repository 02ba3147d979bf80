"""Small helpers shared by the CLI modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def out(line: str = "") -> None:
    """Print a line of a command's result (stdout, flushed: progress bars go to stderr).
    One write per line: `pgclip worker --concurrency N` children share one stdout."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def usage_error(message: str) -> int:
    """A usage mistake: the message as one line on stderr; exit status 2."""
    from pgclip.workers.ingest_files import one_line

    print(f"pgclip: error: {one_line(message)}", file=sys.stderr)
    return 2


def database_lost(exc: Exception) -> int:
    """Exit status 3, with one line, when ``exc`` is the database going away (a DatabaseUnavailable,
    or a driver error that translates to one: the server went before the first batch); any other
    exception is raised again."""
    from pgclip.core.errors import DatabaseUnavailable
    from pgclip.db.engine import translate_driver_error
    from pgclip.workers.ingest_files import one_line

    lost = exc if isinstance(exc, DatabaseUnavailable) else translate_driver_error(exc)
    if not isinstance(lost, DatabaseUnavailable):
        raise exc
    print(f"pgclip: error: {one_line(str(lost))}", file=sys.stderr)
    return 3


def at_least(minimum: int, wanted: str) -> Callable[[str], int]:
    """argparse type: an integer >= minimum; `wanted` names it in the error ("a positive integer")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value

    return parse


positive = at_least(1, "a positive integer")
nonnegative = at_least(0, "an integer of 0 or more")


def memory_size(text: str) -> str:
    """argparse type: a PostgreSQL memory size such as 512MB or 2GB (checked before any work)."""
    import re

    from pgclip.core.settings import MEMORY_SIZE

    if not re.fullmatch(MEMORY_SIZE, text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size such as 512MB or 2GB")
    return text.strip()


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1 to 65535 (the OS would take 70000 as 70000 - 65536)."""
    value = positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1 to 65535)")
    return value


def progress(total: int | None, unit: str, desc: str):
    """A tqdm bar on stderr (hidden when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, disable=None, dynamic_ncols=True)
