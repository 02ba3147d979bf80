"""What every acceptance test gets."""

from __future__ import annotations

import pytest

from tests.acceptance import test_workers


@pytest.fixture(autouse=True)
def no_leftover_workers():
    """A failing test must not leave workers behind: they would wait for their database
    forever, and one whose server's port is reused could join another test's queue."""
    yield
    while test_workers._started:
        proc = test_workers._started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
