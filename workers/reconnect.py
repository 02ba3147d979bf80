"""Connections of a worker that outlive the database: restarts, crashes, minutes of downtime.

A worker keeps a few connections (claiming, writing, lease renewal, LISTEN).
Each is a :class:`Reconnecting` that reconnects with backoff while the server is
away; an :class:`Outage`, shared by all of them, turns the many failures of one
outage into one log line, written when the database is back and saying how long
it was away. An outage starts when a connection made since the last one ended
breaks, or an attempt to connect fails; a connection older than that breaking
later (one not used since the server came back) is stale, not a new outage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg

from pgclip.core.errors import DatabaseUnavailable
from pgclip.db.engine import Failure, classify, connect
from pgclip.db.engine import driver_message as reason

log = logging.getLogger("pgclip.worker")

T = TypeVar("T")

RECONNECT_FIRST_SECONDS = 0.25  # first wait after a failed connection attempt; doubles
# Longest wait between attempts. Short, so that every worker is back within seconds
# of the server (see REAP_GRACE_SECONDS in liveness.py: others wait longer than this
# before they count a worker without a session as dead); an attempt on a server that
# is down costs it nothing.
RECONNECT_MAX_SECONDS = 2.0
STATEMENT_RETRY_SECONDS = 0.1  # pause before running again a transaction that was a deadlock victim

# The exception types a database failure may come as: for `except` clauses, which
# :func:`retryable` then narrows (a statement too large for the server is an
# OperationalError too, and running it again would never end).
RETRYABLE = (psycopg.OperationalError, psycopg.InterfaceError, DatabaseUnavailable)


def retryable(exc: BaseException) -> bool:
    """Whether running the transaction again can succeed: the database is away (reconnect and
    run it), refuses us while it is being restored or reconfigured (keep trying, as for an
    outage), or the transaction lost a race (run it again). pgclip.db.engine.classify decides,
    as it does for the API's 503s, so the two cannot disagree."""
    return classify(exc) in (Failure.UNAVAILABLE, Failure.REFUSED, Failure.CONFLICT)


class Abandoned(Exception):
    """The caller gave up waiting for the database (the worker is stopping)."""


class Outage:
    """What one worker process knows of the database being away; logs one line per outage."""

    def __init__(self, revive: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self.revive = revive  # starts a crashed embedded server again (db.embedded.Reviver), rate-limited
        self.down_since: float | None = None
        self.first_reason = ""
        self.up_since = time.monotonic()  # when the last outage ended (or we started)
        self.count = 0  # outages seen

    def failed(self, exc: BaseException, since: float) -> None:
        """A connection made at ``since`` broke, or an attempt begun at ``since`` failed.
        One from before the last outage ended is old news, not a new outage."""
        with self._lock:
            if self.down_since is None and since >= self.up_since:
                self.down_since = time.monotonic()
                self.first_reason = reason(exc)
        if self.revive is not None:
            self.revive()

    def connected(self) -> None:
        """A connection was made: if an outage was under way, it is over; say so once."""
        with self._lock:
            if self.down_since is None:
                return
            away = time.monotonic() - self.down_since
            self.down_since = None
            self.up_since = time.monotonic()
            self.count += 1
        log.warning("database unavailable for %.1fs (%s); reconnected, resuming", away, self.first_reason)


class Reconnecting:
    """One connection, reconnected with backoff whenever it fails, until ``cancel`` is set.

    ``on_connect(conn)`` runs in a transaction on each new connection before ``fn``;
    ``progress()`` is called on every attempt (the watchdog's sign that a worker waiting
    for its database is not hung).
    """

    def __init__(
        self, url: str, *, app_name: str, outage: Outage, cancel: threading.Event, autocommit: bool = False,
        vector: bool = True, on_connect: Callable[[psycopg.Connection], object] | None = None,
        progress: Callable[[], None] = lambda: None,
    ) -> None:
        self.url = url
        self.app_name = app_name
        self.outage = outage
        self.cancel = cancel
        self.autocommit = autocommit
        self.vector = vector
        self.on_connect = on_connect
        self.progress = progress
        self.conn: psycopg.Connection | None = None
        self.connected_at = 0.0  # monotonic time of the current connection

    def ensure(self) -> psycopg.Connection:
        """The open connection, connecting (once, no retry) if there is none."""
        if self.conn is None or self.conn.closed:
            started = time.monotonic()
            try:
                self.conn = connect(self.url, role="worker", autocommit=self.autocommit, vector=self.vector,
                                    app_name=self.app_name)
            except RETRYABLE as exc:
                self.conn = None
                self.outage.failed(exc, started)
                raise
            self.connected_at = time.monotonic()
            self.outage.connected()
            if self.on_connect is not None:
                with self.conn.transaction():
                    self.on_connect(self.conn)
        return self.conn

    def broken(self, exc: BaseException) -> bool:
        """After ``exc`` on the current connection: if the connection is gone, count it toward an
        outage and drop it (True); False when only the statement failed (a deadlock, a timeout)."""
        conn = self.conn
        if conn is not None and not conn.closed and not conn.broken:
            return False
        if conn is not None:
            self.outage.failed(exc, self.connected_at)
        self.close()
        return True

    def run(self, fn: Callable[[psycopg.Connection], T]) -> T:
        """``fn(conn)`` in a transaction, retried on a new connection until it commits.

        Raises :class:`Abandoned` once ``cancel`` is set (checked before each attempt).
        """
        delay = RECONNECT_FIRST_SECONDS
        while True:
            if self.cancel.is_set():
                raise Abandoned
            self.progress()
            had_connection = self.conn is not None and not self.conn.closed
            try:
                conn = self.ensure()
                with conn.transaction():
                    return fn(conn)
            except RETRYABLE as exc:
                if not retryable(exc):
                    raise
                if self.conn is not None and not self.broken(exc):
                    self.cancel.wait(STATEMENT_RETRY_SECONDS)
                    continue
                if had_connection:
                    continue  # the old connection broke: try a new one at once
                self.cancel.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
        self.conn = None


def wait_for_database(where: str, attempt: Callable[[], T], stopping: threading.Event | None = None) -> T:
    """``attempt()`` until the database lets it succeed: a worker started before its database
    (or while it restarts) waits instead of exiting. Says so once; errors that waiting cannot
    fix (a wrong password, a missing database, no pgvector) are raised at once."""
    delay = RECONNECT_FIRST_SECONDS
    waiting_since: float | None = None
    while True:
        try:
            result = attempt()
        except RETRYABLE as exc:
            if classify(exc) is not Failure.UNAVAILABLE or (stopping is not None and stopping.is_set()):
                raise
            if waiting_since is None:
                waiting_since = time.monotonic()
                log.warning("waiting for the database at %s: %s", where, reason(exc).split(": ")[-1])
            time.sleep(delay) if stopping is None else stopping.wait(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)
            continue
        if waiting_since is not None:
            log.warning("database ready after %.1fs", time.monotonic() - waiting_since)
        return result
