"""Driver failures reach callers above ``db/`` as pgclip errors, translated once."""

from __future__ import annotations

import psycopg
import pytest

from pgclip.core.errors import DatabaseUnavailable, InvalidInput
from pgclip.db.engine import connect, driver_errors
from pgclip.db.pool import Pool


def test_a_session_killed_by_the_server_is_database_unavailable(db_url):
    with connect(db_url, role="test") as victim, connect(db_url, role="test") as admin:
        pid = victim.info.backend_pid
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        admin.commit()
        with pytest.raises(DatabaseUnavailable, match="unavailable"), driver_errors():
            victim.execute("SELECT 1")


def test_a_statement_too_deep_for_the_server_is_invalid_input(conn):
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(InvalidInput, match="too large or complex"), driver_errors():
        conn.execute("SELECT %s::jsonb", [deep])


def test_mistakes_in_our_sql_are_not_disguised(conn):
    with pytest.raises(psycopg.errors.UndefinedTable), driver_errors():
        conn.execute("SELECT * FROM pgclip.no_such_table")


def test_the_pool_replaces_connections_the_server_dropped(db_url):
    pool = Pool(db_url, role="test", max_size=2)
    pool.open()
    try:
        with pool.connection() as conn:
            pid = conn.info.backend_pid
        with connect(db_url, role="test") as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
            admin.commit()
        # The dead connection is noticed at checkout, not by the request that draws it.
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.info.backend_pid != pid
    finally:
        pool.close()


def test_a_pool_that_cannot_connect_gives_up_quickly_with_a_pgclip_error(db_url):
    pool = Pool(db_url, role="test", max_size=1)
    pool.open()
    try:
        with pool.connection() as held, pytest.raises(DatabaseUnavailable):
            # The only connection is in use: the second request waits its bound and is told so.
            with pool.connection(timeout=0.2):
                pass
        assert held.execute("SELECT 1").fetchone() == (1,)
        # A busy pool is not an outage: later requests still get the full wait.
        assert pool._down_since is None
    finally:
        pool.close()
