"""Named SQL statements loaded from ``db/sql/*.sql``.

Each file is a list of sections, each opened by a line ``-- name --``; the
comment lines under it say why the statement is shaped as it is. Call sites
read ``QUEUE["claim"]``.
"""

from __future__ import annotations

import re
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parent / "sql"
_HEADER = re.compile(r"^-- ([a-z][a-z0-9_]*) --$", re.MULTILINE)


def load(filename: str) -> dict[str, str]:
    text = (SQL_DIR / filename).read_text()
    parts = _HEADER.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    sections = {name: body.strip().rstrip(";") for name, body in zip(parts[1::2], parts[2::2], strict=True)}
    for name, body in sections.items():
        # One statement per section: a stray `;` means a header did not parse.
        code = "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--"))
        assert ";" not in code, f"{filename}: section {name!r} holds more than one statement"
    return sections


QUEUE = load("queue.sql")
