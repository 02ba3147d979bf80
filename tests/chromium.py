"""Debian's Chromium driven by Playwright (which never downloads a browser), for every test
layer that needs a browser: one per test process (``browser`` in tests/conftest.py), since
Playwright's sync API cannot be started twice in one process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def launched() -> Iterator[object]:
    """Chromium, headless; skips (with the reason) where it or Playwright is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"browser tests need Debian's Chromium at {CHROMIUM} "
                    "(apt-get install chromium; `make test` does it as root)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="browser tests need the playwright package (pip install -e '.[test]')")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()
