"""The PostgreSQL the test suite runs against, and a fresh migrated database per test.

In order: ``PGCLIP_TEST_DATABASE_URL`` (a server where the tests may create
databases), else testcontainers' ``pgvector/pgvector`` when a Docker daemon
answers, else an embedded PostgreSQL 18 in a temporary directory with
``fsync=off``. Never a mock.
"""

from __future__ import annotations

import itertools
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

# Durability is pointless for throw-away test data and costs seconds per test. Memory at
# PostgreSQL's defaults, not sized to the machine as pgclip's own server is: test collections
# are tiny, several test servers run at once, and a shared_buffers other than the one a server
# starts with costs a restart at every start (tests/outage.py starts dozens).
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                 "shared_buffers": "128MB", "maintenance_work_mem": "256MB"}


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@contextmanager
def test_server() -> Iterator[tuple[str, object | None]]:
    """Yield (admin URL, embedded server or None) for the whole session."""
    url = os.environ.get("PGCLIP_TEST_DATABASE_URL")
    if url:
        yield url, None
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("pgvector/pgvector:pg17", driver=None) as container:
            yield container.get_connection_url(), None
        return
    from pgclip.db.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="pgclip-test-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg", settings=FAST_SETTINGS)
        url = server.start()
        try:
            yield url, server
        finally:
            server.stop()


class Databases:
    """Creates per-test databases cloned from one migrated template (fast: a file copy)."""

    _counter = itertools.count()

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.template = f"pgclip_tmpl_{os.getpid()}"

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(self.admin_url, autocommit=True)

    def create_empty(self, name: str | None = None) -> str:
        name = name or f"pgclip_t{os.getpid()}_{next(self._counter)}"
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return with_database(self.admin_url, name)

    def clone_template(self) -> str:
        name = f"pgclip_t{os.getpid()}_{next(self._counter)}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}" STRATEGY FILE_COPY')
        return with_database(self.admin_url, name)

    def drop(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        assert re.fullmatch(r"pgclip_\w+", name), name
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
