"""A worker's Prometheus metrics, served on ``pgclip worker --metrics-port N``.

What the loop counts (``loop.py`` times its stages and ``pipeline.WorkerStats`` reports
its counts here): jobs by outcome, seconds per stage of a batch, jobs per claimed batch,
and which model and backend the worker runs. Each scrape also reads the queue's depth
from the database (``pgclip.db.metrics``), so a fleet of workers without an API is
watched the same way.

``--concurrency N``: each child process serves its own metrics, child i (from 0) on
port N + i; a child that is restarted takes its slot's port again. Prometheus scrapes
them as N targets (its ``instance`` label tells them apart), with nothing shared
between processes.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

from pgclip.core.errors import ConfigError

OUTCOMES = ("done", "failed", "retried", "released", "lost")  # WorkerStats' counts
STAGES = ("claim", "fetch", "decode", "encode", "write")  # a batch's path through the loop, in order
# Seconds: from a claim of a few ms to a large batch on a slow CPU (ViT-B-32, 32 images: ~10 s).
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # jobs per claimed batch (PGCLIP_BATCH_SIZE: 32)


def process_registry() -> CollectorRegistry:
    """A registry with the process's own figures (CPU, memory, open files, GC, Python version)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def serve(registry: CollectorRegistry, host: str, port: int) -> None:
    """Serve ``registry`` at http://host:port/metrics from a daemon thread; a port that cannot
    be had fails here, at start-up, in one line."""
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None


def require_free(host: str, ports: range) -> None:
    """Fail in one line when one of ``ports`` is taken (a ``--concurrency`` parent, before
    starting children that would each fail on it)."""
    for port in ports:
        try:
            family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the metrics server does
                probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None


class WorkerMetrics:
    """The loop's figures for one model, labelled with its name and weights (the queue's
    series carry the same two labels)."""

    def __init__(self, registry: CollectorRegistry, *, model: str, pretrained: str) -> None:
        labels = {"model": model, "pretrained": pretrained}
        names = list(labels)
        self._jobs = Counter("pgclip_worker_jobs", "Jobs this worker finished, by outcome (retried: failed for now, "
                             "queued again; released: given back unstarted; lost: lease lost before writing)",
                             [*names, "outcome"], registry=registry)
        self._stages = Histogram("pgclip_worker_stage_seconds", "Seconds per batch in each stage: claim, fetch "
                                 "(image bytes), decode (with thumbnail and preprocessing), encode (the model), write",
                                 [*names, "stage"], buckets=STAGE_BUCKETS, registry=registry)
        self._batch = Histogram("pgclip_worker_batch_size", "Jobs per claimed batch", names,
                                buckets=BATCH_BUCKETS, registry=registry)
        self.info = Gauge("pgclip_worker_info", "The worker's id, model, weights and backend (value 1)",
                          ["worker", *names, "backend", "device"], registry=registry)
        # Every series exists from the start at 0, so rate() and alerts see the first job.
        self.jobs = {outcome: self._jobs.labels(**labels, outcome=outcome) for outcome in OUTCOMES}
        self.stages = {stage: self._stages.labels(**labels, stage=stage) for stage in STAGES}
        self.batch = self._batch.labels(**labels)
        self.labels = labels

    @classmethod
    def private(cls, *, model: str, pretrained: str) -> WorkerMetrics:
        """Metrics that nobody scrapes (a worker run inside another program, a test)."""
        return cls(CollectorRegistry(), model=model, pretrained=pretrained)

    def describe_worker(self, worker: str, backend: str, device: str) -> None:
        self.info.labels(worker=worker, **self.labels, backend=backend, device=device).set(1)

    def count(self, counts: dict[str, int]) -> None:
        """``WorkerStats.add``'s counts (any thread)."""
        for outcome, n in counts.items():
            if n and outcome in self.jobs:
                self.jobs[outcome].inc(n)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as one batch's ``name`` stage (an exception leaves it uncounted)."""
        start = time.perf_counter()
        yield
        self.stages[name].observe(time.perf_counter() - start)

    def claimed(self, jobs: int) -> None:
        if jobs:
            self.batch.observe(jobs)
