"""Streaming read replicas (``PGCLIP_READ_DATABASE_URLS``): a pool per replica, each one's
health and lag, and which one answers a read (``sql/replicas.sql``).

A background thread checks every replica each ``CHECK_SECONDS``. Lag is measured by
LSN: the primary's WAL position is sampled at each check, and a replica is as many
seconds behind as the oldest sample it has not replayed yet is old (0 when it has
replayed the newest). ``now() - pg_last_xact_replay_timestamp()`` would call a caught-up
replica of an idle primary minutes behind. A replica that errors, is not in recovery, or
lags more than ``max_lag`` seconds is out of use until a check finds it fit again; reads
are spread round-robin over the rest and go to the primary when none is left.

Read-your-writes: a write reports the primary's WAL position after its commit
(:func:`write_position`); a read that passes it back (``Route.min_lsn``) runs on a
replica only once that replica has replayed so far, waiting up to ``CATCH_UP_WAIT``,
else on the primary.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import TypeVar

import numpy as np
import psycopg

from pgclip.core.errors import DatabaseUnavailable, InvalidInput
from pgclip.db.engine import _plain_url, describe_target, driver_message
from pgclip.db.pool import Pool
from pgclip.db.queries import load

REPLICAS = load("replicas.sql")
log = logging.getLogger("pgclip.db")

CHECK_SECONDS = 1.0  # how often each replica's health and lag are checked
CHECK_WAIT = 1.0  # seconds a check waits for a connection before the replica counts as down
READ_WAIT = 1.0  # seconds a read waits for a replica's connection before it goes to the primary
CATCH_UP_WAIT = 0.5  # seconds a read with a token waits for a replica to replay that far
CATCH_UP_POLL = 0.02  # seconds between two looks at the replica's replay position meanwhile
HISTORY_MARGIN = 60.0  # seconds of primary positions kept beyond max_lag (the lag is measured up to there)
POOL_MAX = 8  # connections per replica per process
PRIMARY = "primary"  # what Route.served_by says when the primary answered
NOT_CHECKED = "not checked yet"

T = TypeVar("T")
_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def parse_lsn(text: str) -> int:
    """``16/B374D848`` (PostgreSQL's pg_lsn) as a number of bytes; InvalidInput otherwise."""
    match = _LSN.fullmatch(text.strip())
    if match is None:
        raise InvalidInput(f"not a WAL position (pg_lsn such as 0/16B3748): {text[:40]!r}")
    return (int(match[1], 16) << 32) | int(match[2], 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclasses.dataclass
class Route:
    """One request's routing: the WAL position its reads must see (a token from an earlier
    write), who answered its last read, and the position after its last write."""

    min_lsn: int | None = None
    served_by: str | None = None
    lsn: str | None = None

    def needed(self) -> int | None:
        """The position a read must see: the token it came with, or its own request's last write."""
        own = parse_lsn(self.lsn) if self.lsn else None
        return max((p for p in (self.min_lsn, own) if p is not None), default=None)


_ROUTE: ContextVar[Route | None] = ContextVar("pgclip_route", default=None)


def start_route(min_lsn: int | None = None) -> Route:
    """A fresh Route for the current context (the API sets one per request; worker threads
    started with ``asyncio.to_thread`` share it, as they copy the context)."""
    route = Route(min_lsn=min_lsn)
    _ROUTE.set(route)
    return route


def current_route() -> Route:
    """This context's Route, or a throwaway one (the CLI has none)."""
    return _ROUTE.get() or Route()


def write_position(conn: psycopg.Connection) -> str:
    """The primary's WAL position after the writes committed on ``conn`` (see replicas.sql);
    recorded as the current request's token."""
    conn.commit()  # what the block left pending (the pool would commit it on return): now, first
    lsn = conn.execute(REPLICAS["write_position"]).fetchone()[0]
    conn.commit()
    current_route().lsn = lsn
    return lsn


class ReplicaConnection(psycopg.Connection):
    """A connection to a hot standby: it reads, and refuses every write."""


def is_replica(conn: psycopg.Connection) -> bool:
    return isinstance(conn, ReplicaConnection)


def cached_text_vector(conn: psycopg.Connection, model_id: int, text: str) -> np.ndarray | None:
    """The shared text-vector cache read without refreshing recency (a replica cannot write)."""
    row = conn.execute(REPLICAS["text_vector"], {"model_id": model_id, "text": text}).fetchone()
    return None if row is None else row[0].to_numpy()


@dataclasses.dataclass(frozen=True)
class ReplicaState:
    """One replica as ``GET /api/status`` and ``pgclip status`` show it."""

    id: str  # replica-N, its place in PGCLIP_READ_DATABASE_URLS (what X-Pgclip-Served-By names)
    name: str  # host:port/database, never a password
    in_use: bool
    lag_bytes: int | None  # WAL the primary has and this replica has not replayed; None: unknown
    lag_seconds: float | None  # how long it has been missing that WAL; None: unknown (primary down)
    replayed_lsn: str | None
    error: str | None


class Replica:
    def __init__(self, n: int, url: str, *, role: str, pool_max: int) -> None:
        self.id = f"replica-{n}"
        self.name = describe_target(url)
        self.url = url = _plain_url(url)  # postgresql+psycopg:// is accepted, as for PGCLIP_DATABASE_URL
        self.pool = Pool(url, role=f"{role}-{self.id}", max_size=pool_max, connection_class=ReplicaConnection,
                         label=f"read {self.id} {self.name}")
        self.replayed: int | None = None
        self.error: str | None = NOT_CHECKED
        self.lag_bytes: int | None = None
        self.lag_seconds: float | None = None
        self.in_use = False


def _lag_seconds(replayed: int, history: Sequence[tuple[float, int]], now: float) -> float | None:
    """Seconds since the primary had WAL this replica has still not replayed: 0 when it has
    replayed the newest sample, None without samples."""
    if not history:
        return None
    if replayed >= history[-1][1]:
        return 0.0
    for t, lsn in history:
        if lsn > replayed:
            return max(0.0, now - t)
    return 0.0  # unreachable: the newest sample is > replayed


def _why_unreachable(replica: Replica, exc: DatabaseUnavailable) -> str:
    """What the replica says to a connection of its own ("Connection refused", "the database
    system is starting up"): the pool only knows that it got none in time."""
    try:
        with psycopg.connect(replica.url, connect_timeout=int(CHECK_WAIT) + 1):
            pass
    except psycopg.Error as direct:
        return f"cannot connect: {driver_message(direct)}"
    return driver_message(exc)


class Replicas:
    """The read replicas of one process, checked in the background, chosen round-robin."""

    def __init__(self, urls: Sequence[str], primary: Pool, *, max_lag: float, role: str = "api",
                 pool_max: int = POOL_MAX) -> None:
        self.primary = primary
        self.max_lag = max_lag
        self.replicas = [Replica(n, url, role=role, pool_max=pool_max) for n, url in enumerate(urls, start=1)]
        # (time, primary WAL position), one a check: enough to tell any lag up to max_lag and beyond.
        self._history: collections.deque[tuple[float, int]] = collections.deque()
        self._keep = max_lag + HISTORY_MARGIN
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- life cycle ------------------------------------------------------------------

    def open(self, *, watch: bool = True) -> None:
        """Open the pools (a replica that is down now is used once it answers), check each
        replica once, and with ``watch`` keep checking them in a background thread."""
        for replica in self.replicas:
            replica.pool.open(wait=False)
        self.check()
        if watch:
            self._thread = threading.Thread(target=self._watch, name="pgclip-replicas", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=CHECK_SECONDS + CHECK_WAIT * (len(self.replicas) + 1) + 1)
        for replica in self.replicas:
            replica.pool.close()

    def _watch(self) -> None:
        while not self._stop.wait(CHECK_SECONDS):
            try:
                self.check()
            except Exception:  # a bug here must not stop the checks for good
                log.exception("checking the read replicas failed")

    # --- health --------------------------------------------------------------------------

    def check(self) -> None:
        """Sample the primary's WAL position, then each replica's replay position (in that
        order: a caught-up replica has replayed at least what the primary had before)."""
        now = time.monotonic()
        primary_lsn = self._primary_position()
        with self._lock:
            if primary_lsn is not None:
                self._history.append((now, primary_lsn))
            while self._history and self._history[0][0] < now - self._keep:
                self._history.popleft()
            history = list(self._history) if primary_lsn is not None else []
        for replica in self.replicas:
            replayed, error = self._replay_position(replica)
            with self._lock:
                if replayed is not None:
                    replica.replayed = max(replica.replayed or 0, replayed)
                if error is None and history:
                    replica.lag_bytes = max(0, history[-1][1] - replica.replayed)
                    replica.lag_seconds = _lag_seconds(replica.replayed, history, time.monotonic())
                else:
                    replica.lag_bytes = replica.lag_seconds = None
                lagging = replica.lag_seconds is not None and replica.lag_seconds > self.max_lag
                self._set_use(replica, error is None and not lagging, error)

    def _primary_position(self) -> int | None:
        try:
            with self.primary.connection(timeout=CHECK_WAIT) as conn:
                value = conn.execute(REPLICAS["primary_position"]).fetchone()[0]
                conn.rollback()
        except DatabaseUnavailable:
            return None  # lag unknown: replicas that answer stay in use (reads survive the outage)
        return None if value is None else parse_lsn(value)

    def _replay_position(self, replica: Replica) -> tuple[int | None, str | None]:
        try:
            with replica.pool.connection(timeout=CHECK_WAIT) as conn:
                in_recovery, replayed = conn.execute(REPLICAS["replay_position"]).fetchone()
                conn.rollback()
        except DatabaseUnavailable as exc:
            return None, _why_unreachable(replica, exc)
        except psycopg.Error as exc:
            return None, driver_message(exc)
        if not in_recovery or replayed is None:
            return None, "not in recovery: a primary, not a streaming replica"
        return parse_lsn(replayed), None

    def _set_use(self, replica: Replica, usable: bool, error: str | None) -> None:
        if usable != replica.in_use or (not usable and replica.error == NOT_CHECKED):
            if usable:
                log.info("read replica %s (%s) in use", replica.id, replica.name)
            else:
                reason = error or f"{replica.lag_seconds:.1f} s behind the primary (PGCLIP_MAX_REPLICA_LAG {self.max_lag:g})"
                log.warning("read replica %s (%s) out of use: %s", replica.id, replica.name, reason)
        replica.in_use = usable
        replica.error = error

    def failed(self, replica: Replica, exc: BaseException) -> None:
        """A read on ``replica`` could not reach it: out of use until a check finds it again."""
        with self._lock:
            self._set_use(replica, False, driver_message(exc))

    def states(self) -> list[ReplicaState]:
        with self._lock:
            return [ReplicaState(r.id, r.name, r.in_use, r.lag_bytes,
                                 None if r.lag_seconds is None else round(r.lag_seconds, 3),
                                 None if r.replayed is None else format_lsn(r.replayed), r.error)
                    for r in self.replicas]

    # --- reads -----------------------------------------------------------------------------

    def choose(self, min_lsn: int | None = None) -> Replica | None:
        """The next replica in use, round-robin; with ``min_lsn``, one known to have replayed
        that far if any (else any in use: the read may wait for it to catch up)."""
        with self._lock:
            usable = [r for r in self.replicas if r.in_use]
            if not usable:
                return None
            if min_lsn is not None:
                ahead = [r for r in usable if r.replayed is not None and r.replayed >= min_lsn]
                usable = ahead or usable
            return usable[next(self._turn) % len(usable)]

    def read(self, work: Callable[[psycopg.Connection], T]) -> T:
        """``work(conn)`` on a replica in use (one that has replayed the current Route's
        ``min_lsn``), else on the primary; the Route names who answered. A replica that fails
        the read (gone, busy past READ_WAIT, or a query cancelled by a conflict with recovery) hands
        it to the primary; only a replica that is gone is out of use until a check finds it again."""
        route = current_route()
        needed = route.needed()
        replica = self.choose(needed)
        if replica is not None:
            try:
                with replica.pool.connection(timeout=READ_WAIT) as conn:
                    if needed is None or self._caught_up(replica, conn, needed):
                        route.served_by = replica.id  # named on a NotFound too: what this replica had
                        return work(conn)
            except DatabaseUnavailable as exc:
                if replica.pool.down:  # unreachable; a pool only busy for READ_WAIT stays in use
                    self.failed(replica, exc)
            except psycopg.Error as exc:
                state = exc.sqlstate or ""
                # 40001: cancelled by a conflict with recovery; 25006: a write slipped into a read.
                if not (state.startswith("40") or state == "25006"):
                    raise
                log.warning("read on %s failed, answered by the primary: %s", replica.id, driver_message(exc))
        route.served_by = PRIMARY
        with self.primary.connection() as conn:
            return work(conn)

    def _caught_up(self, replica: Replica, conn: psycopg.Connection, min_lsn: int) -> bool:
        """Whether the replica has replayed ``min_lsn``, waiting up to CATCH_UP_WAIT for it."""
        deadline = time.monotonic() + CATCH_UP_WAIT
        while True:
            _, replayed = conn.execute(REPLICAS["replay_position"]).fetchone()
            conn.rollback()  # the next look (and the read) takes a fresh snapshot
            if replayed is not None:
                value = parse_lsn(replayed)
                with self._lock:
                    replica.replayed = max(replica.replayed or 0, value)
                if value >= min_lsn:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(CATCH_UP_POLL)
