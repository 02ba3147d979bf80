"""A worker's part in the deferred index: build its model's index once the backlog drains.

A model without its index takes its vectors by plain inserts (no per-row HNSW insert);
someone must build the index when the vectors stop coming. Every worker does it for its
own model: when a claim comes back empty it pokes this thread, which asks
:func:`pgclip.db.indexes.build_deferred` (due: the model has vectors, no open job, no
ingest running; one builder at a time under an advisory lock, the others return at once).
The build runs on this thread and its own connection, so the worker goes on claiming
meanwhile: an image that arrives during the build is embedded at once, and its vector
reaches the index through the build's own catch-up (CONCURRENTLY).

A worker run ``--until-empty`` builds before it exits (:meth:`IndexBuilder.build_now`), so
`pgclip worker --until-empty` after a re-embed or a bulk ingest ends with the index built.
A stopping worker cancels its build: the half-built index is left INVALID, and the next
build drops it and starts again.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg

from pgclip.db.engine import Failure, classify
from pgclip.db.indexes import BuildReport, build_deferred
from pgclip.db.models import ModelRow
from pgclip.workers.reconnect import RETRYABLE, reason

log = logging.getLogger("pgclip.worker")

# After finding the index built, a poke looks again only after this long: a worker fed one image
# at a time finds its queue empty after every image, and the check (a connection and a query)
# would cost each of them. A built index goes away only by a deliberate drop (`ingest --bulk`,
# `index rebuild`), which the next look after this interval notices.
RECHECK_SECONDS = 5.0


class IndexBuilder(threading.Thread):
    """The thread that builds the worker's model's deferred index (see the module doc)."""

    def __init__(self, url: str, *, model: ModelRow, app_name: str, done: threading.Event) -> None:
        super().__init__(name="index-build", daemon=True)
        self.url = url
        self.model = model
        self.app_name = app_name
        self.done = done  # the worker is over: this thread ends
        self.built: list[BuildReport] = []
        self._poked = threading.Event()
        self._stopping = threading.Event()  # the worker is stopping: no new build, the running one cancelled
        self._lock = threading.Lock()  # one build at a time in this process (thread or build_now)
        self._conn: psycopg.Connection | None = None
        self._seen_built = -RECHECK_SECONDS  # when the index was last found built (monotonic)

    def poke(self) -> None:
        """The worker found nothing to claim: look whether the index is due."""
        self._poked.set()

    def run(self) -> None:
        while not self._over():
            self._poked.wait(1.0)
            if self._poked.is_set() and not self._over():
                self._poked.clear()
                self.build_now()

    def _over(self) -> bool:
        return self.done.is_set() or self._stopping.is_set()

    def build_now(self, *, recheck: bool = True) -> BuildReport | None:
        """Build the index if it is due (a no-op otherwise); errors are logged, never raised:
        the next poke, or another worker, tries again. ``recheck=False``: look even if the
        index was found built a moment ago (a worker about to exit)."""
        with self._lock:
            if self._over() or (recheck and time.monotonic() - self._seen_built < RECHECK_SECONDS):
                return None
            try:
                report = build_deferred(self.url, self.model, app_name=self.app_name, connected=self._keep,
                                        on_built=self._saw_built)
            except (psycopg.Error, *RETRYABLE) as exc:
                # The database away (the worker's outage line says so, once) or a lost race is no
                # failure of the build, which was perhaps not even due: only a real one is a warning.
                failure = classify(exc)
                level = (logging.DEBUG if failure is Failure.UNAVAILABLE else
                         logging.INFO if failure is Failure.CONFLICT else logging.WARNING)
                if not self._over():
                    log.log(level, "building the index of %s failed (%s); it is tried again when the queue is "
                            "next empty", self.model.label, reason(exc))
                return None
            finally:
                self._conn = None
        if report is not None:
            self.built.append(report)
            log.info("built the index of %s: %d vectors in %.1f s (maintenance_work_mem %s, %.1f MB)",
                     report.model.label, report.vectors, report.seconds, report.memory, report.size_bytes / 2**20)
        return report

    def _keep(self, conn: psycopg.Connection) -> None:
        self._conn = conn

    def _saw_built(self) -> None:
        self._seen_built = time.monotonic()

    def cancel(self) -> None:
        """Stop a build in progress (the worker is stopping); its index is left INVALID, rebuilt later."""
        self._stopping.set()
        self._poked.set()
        conn = self._conn
        if conn is not None:
            try:
                conn.cancel_safe()
            except Exception:  # noqa: BLE001 - best effort: the session's end stops the build anyway
                pass
