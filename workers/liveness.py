"""What keeps a worker visibly alive, its leases held, and itself honest.

* Every connection of a worker is named ``pgclip-worker[<worker id>]`` (the id is
  the ``locked_by`` of its jobs), so any session can see in ``pg_stat_activity``
  whether the worker holding a lease still exists.
* :class:`Presence`: one autocommit connection that LISTENs for new jobs (waking
  the worker) and every ``REAP_INTERVAL_SECONDS`` expires the leases of workers
  that hold jobs but have no session left (``orphaned_workers`` and ``reap`` in
  ``sql/queue.sql``): a worker killed with SIGKILL, by the OOM killer or a crash
  has its jobs taken over in seconds, not after its lease. The lease stays the
  fallback for a host that vanished from the network (its sessions linger until
  the server's TCP keepalive gives up on them).
* :class:`LeaseKeeper`: renews the lease of every job the worker holds, every lease/3.
* :class:`Watchdog`: a worker that holds jobs and makes no progress for a while is
  hung (a lock that never comes, a driver call that never returns): it dumps
  every thread's stack and exits, so that its supervisor restarts it and the
  reaper hands its jobs to others.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable

import psycopg

from pgclip.db import queue
from pgclip.workers.reconnect import RETRYABLE, Abandoned, Outage, Reconnecting

log = logging.getLogger("pgclip.worker")

APP_NAME_PREFIX = "pgclip-worker["  # + worker id + "]": what orphaned_workers looks for
APP_NAME_MAX = 63  # bytes: PostgreSQL keeps at most NAMEDATALEN - 1 of an application_name
LISTEN_TICK_SECONDS = 0.2  # the presence thread looks at its stop flag this often
REAP_INTERVAL_SECONDS = 1.0  # how often each worker looks for dead workers (also its health check)
# A worker is reaped once seen without a session on checks this far apart: a worker whose
# connections all broke at once (its own network blip) is given time to reconnect.
REAP_CONFIRM_SECONDS = 2.0
# No reaping this soon after the reaper's own reconnection, or its first connection to a
# server that has just (re)started: after a restart every session is gone, including those
# of live workers still waiting out their reconnection backoff (at most
# RECONNECT_MAX_SECONDS). Reaping them would cost each of their jobs an attempt (and the
# work done so far); waiting costs a few seconds once per outage.
REAP_GRACE_SECONDS = 6.0
WATCHDOG_TICK_SECONDS = 1.0
EXIT_HUNG = 3  # exit status of a worker its watchdog found hung (its supervisor restarts it)


def worker_id() -> str:
    """``host:pid:random``, short enough that ``pgclip-worker[<id>]`` fits an application_name
    (the host is cut, never the pid or the random part) and ASCII only."""
    suffix = f":{os.getpid()}:{uuid.uuid4().hex[:6]}"
    room = APP_NAME_MAX - len(APP_NAME_PREFIX) - 1 - len(suffix)
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:room] or "host"
    return host + suffix


def app_name(worker: str) -> str:
    return f"{APP_NAME_PREFIX}{worker}]"


class Held:
    """The ids of the jobs a worker has claimed and not yet written or given back (thread-safe)."""

    def __init__(self) -> None:
        self._ids: set[int] = set()
        self._lock = threading.Lock()

    def add(self, ids: Iterable[int]) -> None:
        with self._lock:
            self._ids.update(ids)

    def discard(self, ids: Iterable[int]) -> None:
        with self._lock:
            self._ids.difference_update(ids)

    def snapshot(self) -> list[int]:
        with self._lock:
            return sorted(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


class Presence(threading.Thread):
    """LISTENs for enqueue notifications (waking the worker) and reaps dead workers' leases."""

    def __init__(self, url: str, *, worker: str, outage: Outage, wake: threading.Event, done: threading.Event) -> None:
        super().__init__(name="presence", daemon=True)
        self.worker = worker
        self.wake = wake
        self.done = done
        self.missing_since: dict[str, float] = {}  # worker id -> first seen without a session
        self.reaped = 0  # jobs this worker made claimable again
        self.reap_failed = False
        self.connections = 0
        self.grace_until = 0.0  # monotonic time before which this worker reaps nobody
        self.db = Reconnecting(url, app_name=app_name(worker), outage=outage, cancel=done, autocommit=True,
                               vector=False, on_connect=self._listen)

    def _listen(self, conn: psycopg.Connection) -> None:
        # (Notifications that arrive during the reaping statement wait in psycopg's backlog
        # for the next notifies().)
        conn.execute(f"LISTEN {queue.NOTIFY_CHANNEL}")
        self.missing_since.clear()  # what was seen before an outage says nothing now
        if self.connections or queue.server_uptime(conn) < REAP_GRACE_SECONDS:
            self.grace_until = time.monotonic() + REAP_GRACE_SECONDS
        self.connections += 1
        self.wake.set()  # jobs may have been queued while we were away

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.db.run(self._reap)  # reconnects (and LISTENs again) while the server is away
            except Abandoned:
                break
            except Exception as exc:  # not the server being away: keep listening, say why once
                if not self.reap_failed:
                    log.warning("looking for dead workers failed (%s); leases expire as usual", exc)
                self.reap_failed = True
            deadline = time.monotonic() + REAP_INTERVAL_SECONDS
            try:
                while not self.done.is_set() and time.monotonic() < deadline:
                    for _ in self.db.conn.notifies(timeout=LISTEN_TICK_SECONDS, stop_after=1):
                        self.wake.set()
            except RETRYABLE as exc:
                self.db.broken(exc)
                self.db.close()
                self.wake.set()  # poll once while we are deaf
        self.db.close()

    def _reap(self, conn: psycopg.Connection) -> None:
        now = time.monotonic()
        orphans = queue.orphaned_workers(conn)
        self.missing_since = {w: self.missing_since.get(w, now) for w in orphans}
        if now < self.grace_until:
            return
        confirmed = [w for w, since in self.missing_since.items() if now - since >= REAP_CONFIRM_SECONDS]
        for worker, jobs in queue.reap(conn, confirmed).items():
            self.reaped += jobs
            log.warning("worker %s is gone (no database session): its %d leased jobs are claimable again",
                        worker, jobs)


class LeaseKeeper(threading.Thread):
    """Renews the leases of every job the worker holds, every lease/3, on its own connection."""

    def __init__(self, url: str, *, worker: str, held: Held, lease_seconds: float, outage: Outage,
                 done: threading.Event) -> None:
        super().__init__(name="lease", daemon=True)
        self.worker = worker
        self.held = held
        self.lease_seconds = lease_seconds
        self.done = done
        self.db = Reconnecting(url, app_name=app_name(worker), outage=outage, cancel=done)

    def run(self) -> None:
        # Connected from the start, so that a worker holds the same connections all its life
        # (operators can count on them, and a leak shows). While the server is away, run()
        # waits for it, so leases are renewed as soon as it is back: a worker that was away
        # for less than a lease keeps its jobs.
        try:
            self.db.run(lambda c: None)
        except Abandoned:
            self.db.close()
            return
        while not self.done.wait(self.lease_seconds / 3):
            ids = self.held.snapshot()
            if not ids:
                continue
            try:
                kept = self.db.run(lambda c: queue.renew(c, ids, worker=self.worker, lease_seconds=self.lease_seconds))
            except Abandoned:
                break
            lost = (set(ids) - kept) & set(self.held.snapshot())  # not merely finished meanwhile
            if lost:
                log.warning("lost the lease of %d jobs (expired and taken by another worker)", len(lost))
        self.db.close()


class Watchdog(threading.Thread):
    """Exits a hung worker with a thread dump; stops a worker whose supervisor died."""

    def __init__(self, *, seconds: float, held: Held, idle_for: Callable[[], float], done: threading.Event,
                 parent_pid: int | None = None, on_orphaned: Callable[[], None] = lambda: None) -> None:
        super().__init__(name="watchdog", daemon=True)
        self.seconds = seconds
        self.held = held
        self.idle_for = idle_for
        self.done = done
        self.parent_pid = parent_pid
        self.on_orphaned = on_orphaned

    def run(self) -> None:
        while not self.done.wait(WATCHDOG_TICK_SECONDS):
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                log.warning("the supervising process %d is gone: stopping", self.parent_pid)
                self.parent_pid = None
                self.on_orphaned()
            if not self.seconds:
                continue
            idle = self.idle_for()
            if len(self.held) and idle > self.seconds:
                log.error("no progress for %.0fs while holding %d jobs: this worker is hung; thread dump follows, "
                          "then it exits (status %d) to be restarted", idle, len(self.held), EXIT_HUNG)
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                sys.stderr.flush()
                os._exit(EXIT_HUNG)
            # Should a thread hold the GIL forever, this thread cannot run: faulthandler's own
            # timer (a C thread) dumps the stacks and exits instead, unless re-armed in time.
            faulthandler.dump_traceback_later(2 * self.seconds + WATCHDOG_TICK_SECONDS, exit=True)
        if self.seconds:
            faulthandler.cancel_dump_traceback_later()
