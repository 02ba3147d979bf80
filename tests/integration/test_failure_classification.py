"""Workers and the API agree on a real server's failures: a statement too large for it is the
input's fault for both (a worker does not retry it forever); a killed session is an outage for both."""

from __future__ import annotations

import threading

import psycopg
import pytest

from pgclip.core.errors import DatabaseUnavailable, InvalidInput
from pgclip.db.engine import connect, driver_errors
from pgclip.workers.reconnect import Outage, Reconnecting

TOO_DEEP = "[" * 100_000 + "]" * 100_000  # beyond the server's stack depth limit (SQLSTATE 54001)


def _reconnecting(db_url: str, cancel: threading.Event) -> Reconnecting:
    return Reconnecting(db_url, app_name="pgclip-test-reconnecting", outage=Outage(), cancel=cancel)


def test_a_statement_too_large_is_invalid_input_to_the_api_and_not_retried_by_a_worker(db_url, conn):
    with pytest.raises(InvalidInput), driver_errors():
        conn.execute("SELECT %s::jsonb", [TOO_DEEP])
    cancel = threading.Event()
    timer = threading.Timer(30, cancel.set)  # a worker that retried it would loop until cancelled (Abandoned)
    timer.start()
    db = _reconnecting(db_url, cancel)
    try:
        with pytest.raises(psycopg.errors.StatementTooComplex):
            db.run(lambda c: c.execute("SELECT %s::jsonb", [TOO_DEEP]))
        assert not cancel.is_set()
    finally:
        timer.cancel()
        db.close()


def test_a_killed_session_is_unavailable_to_the_api_and_reconnected_by_a_worker(db_url):
    db = _reconnecting(db_url, threading.Event())
    try:
        first = db.run(lambda c: c.info.backend_pid)
        with connect(db_url, role="test", autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [first])
        with pytest.raises(DatabaseUnavailable), driver_errors():
            db.conn.execute("SELECT 1")
        # The same failure, met inside a worker's transaction: it reconnects and runs it again.
        assert db.run(lambda c: c.info.backend_pid) != first
    finally:
        db.close()
