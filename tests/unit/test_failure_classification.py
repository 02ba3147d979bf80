"""One classification of database failures: what the API calls "unavailable" (503) is what a
worker waits out and retries, and what it refuses to retry the API calls the input's fault."""

from __future__ import annotations

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from pgclip.core.errors import DatabaseUnavailable, InvalidInput
from pgclip.db.engine import Failure, classify, translate_driver_error
from pgclip.workers.reconnect import RETRYABLE, retryable


def _server(sqlstate: str, message: str = "server said so") -> psycopg.Error:
    return psycopg.errors.lookup(sqlstate)(message)


CASES = {
    "connection lost (libpq, no SQLSTATE)": psycopg.OperationalError("server closed the connection unexpectedly"),
    "connection closed": psycopg.InterfaceError("the connection is closed"),
    "admin shutdown": _server("57P01"),
    "crash shutdown": _server("57P02"),
    "starting up": _server("57P03"),
    "idle session timeout": _server("57P05"),
    "statement_timeout": _server("57014"),
    "connection failure": _server("08006"),
    "too many connections": _server("53300"),
    "disk full": _server("53100"),
    "I/O error": _server("58030"),
    "pool timeout": PoolTimeout("couldn't get a connection after 3.00 sec"),
    "unreachable (translated at connect)": DatabaseUnavailable("cannot connect to PostgreSQL at h/db: timeout"),
    "wrong password": DatabaseUnavailable('cannot connect: password authentication failed for user "x"'),
    "no pgvector": DatabaseUnavailable("the PostgreSQL at h/db does not have the pgvector extension available"),
    "deadlock": _server("40P01"),
    "serialization failure": _server("40001"),
    "statement too complex": _server("54001"),
    "lock not available": _server("55P03"),
    "object not in prerequisite state": _server("55000"),
    "undefined table (our bug)": _server("42P01"),
    "bad input syntax": _server("22P02"),
    "not a driver error": ValueError("nothing to do with the database"),
}


@pytest.mark.parametrize("exc", CASES.values(), ids=CASES.keys())
def test_the_api_and_the_workers_classify_every_failure_alike(exc):
    failure = classify(exc)
    api = translate_driver_error(exc)
    # The API's 503 is exactly what a worker reconnects for and runs again.
    unavailable_to_api = isinstance(api, DatabaseUnavailable)
    assert unavailable_to_api == (failure in (Failure.UNAVAILABLE, Failure.REFUSED))
    assert retryable(exc) == (unavailable_to_api or failure is Failure.CONFLICT)
    # What a worker retries, its `except` clauses catch; what it will not, the API blames on the input
    # (a statement too large) or leaves as the bug it is.
    if retryable(exc):
        assert isinstance(exc, RETRYABLE)
    assert isinstance(api, InvalidInput) == (failure is Failure.TOO_LARGE)
    if failure is None or failure is Failure.CONFLICT:
        assert api is None


def test_the_expected_failures_fall_where_they_should():
    kinds = {name: classify(exc) for name, exc in CASES.items()}
    assert kinds["admin shutdown"] is Failure.UNAVAILABLE
    assert kinds["pool timeout"] is Failure.UNAVAILABLE
    assert kinds["wrong password"] is Failure.REFUSED  # a worker starting up says so instead of waiting
    assert kinds["deadlock"] is Failure.CONFLICT
    assert kinds["statement too complex"] is Failure.TOO_LARGE
    assert kinds["lock not available"] is None and kinds["undefined table (our bug)"] is None
