"""Fixtures shared by every test layer.

``db_url`` is a fresh database, migrated and with the test model registered,
cloned per test from a template built once per session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgclip.core.settings import Settings
from tests import chromium
from tests.pg import Databases, test_server

TEST_MODEL = "test-tiny"
# In CI a skipped test is a missing part (Chromium, auto_explain, an extension), not a
# choice: it fails there, so a green CI cannot hide untested code. Locally it skips and says why.
STRICT = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true: tests may not skip for a missing part; skipped because: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped:  # a module-level importorskip
        report.outcome = "failed"
        report.longrepr = f"CI=true: tests may not skip for a missing part; skipped because: {report.longrepr}"


def pytest_xdist_auto_num_workers(config) -> int:
    """`make test` runs `pytest -n auto`: two test processes even on two cores (most of a test's
    time is spent waiting on a `pgclip` process or PostgreSQL), four at most (each has its own
    embedded PostgreSQL, and outage tests must not starve)."""
    return min(4, max(2, os.cpu_count() or 1))


def make_settings(db_url: str | None, data_dir: Path, **overrides) -> Settings:
    """Settings as a user with only these variables set would get (the real environment is ignored)."""
    values = {"database_url": db_url, "data_dir": data_dir, "model": TEST_MODEL, "pretrained": "random"}
    values.update(overrides)
    return Settings.from_env({}, **values)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[tuple[str, object | None]]:
    with test_server() as server:
        yield server


@pytest.fixture(scope="session")
def databases(pg_server, tmp_path_factory) -> Databases:
    from pgclip.application.bootstrap import migrate

    admin_url, _ = pg_server
    dbs = Databases(admin_url)
    template_url = dbs.create_empty(dbs.template)
    migrate(make_settings(template_url, tmp_path_factory.mktemp("template")))
    return dbs


@pytest.fixture
def db_url(databases: Databases) -> Iterator[str]:
    url = databases.clone_template()
    yield url
    databases.drop(url)


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return make_settings(db_url, tmp_path)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    from pgclip.db.engine import connect

    with connect(db_url, role="test") as connection:
        yield connection


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium for the whole test process (browser tests, and the replica test's page)."""
    yield from chromium.launched()
