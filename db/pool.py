"""The API's connection pool: bounded waits, quick recovery, driver errors translated.

While PostgreSQL is down or restarting, a request must get a clear "database
unavailable" (the API's 503) within a few seconds, not hang for the pool's
default 30 s and then fail as a 500; and once the database is back, the same
process must answer again within seconds, without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout
from psycopg_pool.base import AttemptWithBackoff

from pgclip.core.errors import DatabaseUnavailable
from pgclip.db.engine import application_name, configure_vector, driver_errors

log = logging.getLogger("pgclip.db")

WAIT_SECONDS = 3.0  # longest a request waits for a connection before it is told "unavailable"
# Once an outage is known, requests wait only this long: the answer is almost surely the same
# 503, and the pool hands out a connection as soon as it has one again.
OUTAGE_WAIT_SECONDS = 0.5
CONNECT_TIMEOUT = 3  # seconds per connection attempt by the pool's background workers
# psycopg_pool doubles its reconnection delay without limit (up to reconnect_timeout, 5 min):
# after a 40 s outage its next attempt came 16 s after PostgreSQL was back. Capped here, the
# pool is back within this long of the database.
RECONNECT_MAX_DELAY = 1.0  # seconds
# A burst (or the waiting during an outage) grows the pool toward its maximum; once the
# connections beyond the first sit idle this long, they are closed one by one, so the
# process goes back to the connections it needs.
MAX_IDLE_SECONDS = 30.0


class _CappedAttempt(AttemptWithBackoff):
    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, RECONNECT_MAX_DELAY)


class _Pool(ConnectionPool):
    def _add_connection(self, attempt, growing: bool = False) -> None:  # psycopg_pool's hook
        super()._add_connection(attempt or _CappedAttempt(timeout=self.reconnect_timeout), growing)


class Pool:
    """A psycopg pool whose ``connection()`` raises pgclip errors, and logs one line per outage."""

    def __init__(self, url: str, *, role: str, max_size: int,
                 connection_class: type[psycopg.Connection] = psycopg.Connection, label: str = "database",
                 revive: Callable[[], None] | None = None) -> None:
        self.pool = _Pool(
            url, min_size=1, max_size=max_size, open=False, configure=configure_vector,
            connection_class=connection_class,
            # A pooled connection that died with the server is noticed here, at checkout, and
            # replaced, instead of failing the request that drew it.
            check=ConnectionPool.check_connection,
            kwargs={"application_name": application_name(role), "connect_timeout": CONNECT_TIMEOUT},
            name=f"pgclip-{role}", timeout=WAIT_SECONDS, max_idle=MAX_IDLE_SECONDS,
        )
        self._down_since: float | None = None
        self._label = label  # what its outage log lines call the database ("read replica-1 host:port/db")
        self._connect_errors = 0  # the pool's count of failed connection attempts when last up
        self._lock = threading.Lock()
        self._revive = revive  # starts a crashed embedded server again (db.embedded.Reviver), rate-limited
        # The pool logs every failed attempt (once a second during an outage); we log the outage.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

    def open(self, timeout: float = 30, *, wait: bool = True) -> None:
        """Open the pool; with ``wait``, fail unless a first connection is made within ``timeout``
        (without, a server that is down now is connected to once it is up)."""
        with driver_errors():
            self.pool.open(wait=wait, timeout=timeout)

    def close(self) -> None:
        self.pool.close()

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection]:
        """A pooled connection for the block; any failure to reach the database in it raises
        ``DatabaseUnavailable`` (the request gives up after ``WAIT_SECONDS`` at most)."""
        if self._down_since is not None:
            timeout = min(timeout or WAIT_SECONDS, OUTAGE_WAIT_SECONDS)
        try:
            with driver_errors(), self.pool.connection(timeout=timeout) as conn:
                yield conn
        except DatabaseUnavailable as exc:
            if self._is_outage(exc):
                self._went_down(exc)
            raise
        self._came_back()

    @property
    def down(self) -> bool:
        """Whether the last failure was an outage (not a pool that was only busy), and no
        connection has been used since."""
        return self._down_since is not None

    def _is_outage(self, exc: DatabaseUnavailable) -> bool:
        """A lost connection, or a wait for one while the pool fails to connect: not a busy pool."""
        if not isinstance(exc.__cause__, PoolTimeout):
            return True
        return self.pool.get_stats().get("connections_errors", 0) > self._connect_errors

    def _went_down(self, exc: Exception) -> None:
        with self._lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("%s unavailable: %s", self._label, exc)
        if self._revive is not None:
            self._revive()

    def _came_back(self) -> None:
        if self._down_since is None:
            return
        self._connect_errors = self.pool.get_stats().get("connections_errors", 0)
        with self._lock:
            if self._down_since is not None:
                # Noticed by the first request that got through: the outage may have ended earlier.
                log.warning("%s reachable again: a request got through %.1f s after it went away", self._label,
                            time.monotonic() - self._down_since)
                self._down_since = None
