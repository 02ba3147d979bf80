"""Fixtures shared by every test layer.

``db_url`` is a fresh database, migrated and with the test model registered,
cloned per test from a template built once per session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgclip.settings import Settings
from tests.pg import Databases, test_server

TEST_MODEL = "test-tiny"


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
    from pgclip.bootstrap import migrate

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
