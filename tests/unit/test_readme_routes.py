"""README's HTTP API table lists every route the API serves (its OpenAPI schema), and only those."""

from __future__ import annotations

import re
from pathlib import Path

from pgclip.api.app import create_app
from pgclip.core.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def documented() -> set[tuple[str, str]]:
    """(method, path) of each row of the table after "HTTP API"; `/a/{id}/x`, `/y` means both
    `/a/{id}/x` and `/a/{id}/y`; every path parameter reads as {}."""
    section = README.read_text().split("HTTP API (JSON", 1)[1].split("\n\n", 2)[1]
    routes = set()
    for method, paths in re.findall(r"^\| ([A-Z]+) \| (`[^|]+`) \|", section, flags=re.MULTILINE):
        first, *more = re.findall(r"`([^`]+)`", paths)
        base = first.rsplit("/", 1)[0]
        for path in [first, *(base + extra for extra in more)]:
            routes.add((method, re.sub(r"\{[^}]*\}", "{}", path)))
    return routes


def test_the_api_table_lists_every_route_the_api_serves():
    spec = create_app(Settings()).openapi_schema.to_schema()
    served = {(method.upper(), re.sub(r"\{[^}]*\}", "{}", path)) for path, ops in spec["paths"].items() for method in ops}
    assert documented() == served
