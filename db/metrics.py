"""Prometheus figures read from the database at scrape time: the queue's depth by model and
state (``sql/metrics.sql``), whether the database answered, and the API's connection pool.

Collectors, not gauges kept up to date: each scrape asks the database once, under a
statement timeout, so the figures are as fresh as the scrape and cost nothing between
scrapes. When the database is down or slow the scrape still answers, quickly, with
``pgclip_database_up 0`` and without the queue's series.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import psycopg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from psycopg.rows import class_row

from pgclip.core.errors import PgclipError
from pgclip.db.engine import _plain_url, application_name, driver_message
from pgclip.db.pool import Pool
from pgclip.db.queries import load

METRICS = load("metrics.sql")

log = logging.getLogger("pgclip.db")

# Longest a scrape's query may run; well inside Prometheus's default 10 s scrape timeout,
# with room for the wait for a connection (the API's pool gives up after WAIT_SECONDS).
SCRAPE_TIMEOUT_SECONDS = 2.0
SCRAPE_CONNECT_SECONDS = 2  # a worker's scrape connects afresh: to a host that does not answer, give up this soon


@dataclasses.dataclass(frozen=True)
class QueueDepth:
    model: str
    pretrained: str
    state: str
    jobs: int
    oldest_seconds: float | None  # age of the oldest job in this state; None when there is none


def queue_depth(conn: psycopg.Connection, *, timeout_seconds: float = SCRAPE_TIMEOUT_SECONDS) -> list[QueueDepth]:
    """Jobs per model and state (every state of every model), in one short transaction."""
    with conn.transaction():
        conn.execute(METRICS["scrape_timeout"], {"milliseconds": str(int(timeout_seconds * 1000))})
        with conn.cursor(row_factory=class_row(QueueDepth)) as cur:
            return cur.execute(METRICS["queue_depth"]).fetchall()


Connect = Callable[[], AbstractContextManager[psycopg.Connection]]


@contextmanager
def scrape_connection(url: str) -> Iterator[psycopg.Connection]:
    """A connection for one scrape, in a process without a pool (a worker), closed after it."""
    with psycopg.connect(_plain_url(url), connect_timeout=SCRAPE_CONNECT_SECONDS,
                         application_name=application_name("metrics")) as conn:
        yield conn


class DatabaseCollector(Collector):
    """``pgclip_database_up`` and ``pgclip_queue_jobs{model, pretrained, state}`` (with
    ``pgclip_queue_oldest_pending_seconds{model, pretrained}``), read at each scrape through
    ``connect()``: a pooled connection in the API, a fresh one in a worker."""

    def __init__(self, connect: Connect) -> None:
        self.connect = connect
        self._was_up = True  # log one line when the scrapes start failing, one when they answer again

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()  # without values: registering asks no query

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("pgclip_database_up", "1 when this scrape's query of the database answered, else 0"),
            GaugeMetricFamily("pgclip_queue_jobs", "Embedding jobs per model and state (pending, leased, done, failed)",
                              labels=["model", "pretrained", "state"]),
            GaugeMetricFamily("pgclip_queue_oldest_pending_seconds",
                              "Age of the model's oldest pending job (0 when none is pending)",
                              labels=["model", "pretrained"]),
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up, jobs, oldest = self._families()
        try:
            with self.connect() as conn:
                rows = queue_depth(conn)
        except (PgclipError, psycopg.Error) as exc:
            # Unreachable, restarting, or slower than the scrape timeout: say so, answer anyway.
            if self._was_up:
                log.warning("metrics: the database did not answer the queue query: %s", driver_message(exc))
            self._was_up = False
            up.add_metric([], 0)
            yield up
            return
        if not self._was_up:
            log.info("metrics: the database answers the queue query again")
        self._was_up = True
        up.add_metric([], 1)
        for row in rows:
            jobs.add_metric([row.model, row.pretrained, row.state], row.jobs)
            if row.state == "pending":
                oldest.add_metric([row.model, row.pretrained], row.oldest_seconds or 0.0)
        yield from (up, jobs, oldest)


class PoolCollector(Collector):
    """The API's connection pool: connections in use and idle, requests waiting for one, its
    maximum. ``pool()`` is None until the API has opened it (the figures are then absent)."""

    def __init__(self, pool: Callable[[], Pool | None]) -> None:
        self.pool = pool

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("pgclip_db_pool_connections", "The API's pooled database connections, by state",
                              labels=["state"]),
            GaugeMetricFamily("pgclip_db_pool_waiting", "Requests waiting for a pooled connection"),
            GaugeMetricFamily("pgclip_db_pool_max", "Most connections the API's pool opens"),
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pool = self.pool()
        if pool is None:
            return
        stats = pool.pool.get_stats()
        size, available = stats.get("pool_size", 0), stats.get("pool_available", 0)
        connections, waiting, maximum = self._families()
        connections.add_metric(["in_use"], max(size - available, 0))
        connections.add_metric(["idle"], available)
        waiting.add_metric([], stats.get("requests_waiting", 0))
        maximum.add_metric([], pool.pool.max_size)
        yield from (connections, waiting, maximum)
