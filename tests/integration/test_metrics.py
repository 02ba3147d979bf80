"""Metrics read from a real PostgreSQL (the queue's depth) and counted by the real worker loop."""

from __future__ import annotations

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from pgclip.db import queue
from pgclip.db.engine import connect
from pgclip.db.metrics import DatabaseCollector, queue_depth, scrape_connection
from pgclip.db.models import active_model
from pgclip.workers.encoder import ClipEncoder
from pgclip.workers.ingest import ingest
from pgclip.workers.loop import Worker
from pgclip.workers.metrics import STAGES, WorkerMetrics
from tests.images import jpeg_bytes


def _ingest(conn: psycopg.Connection, folder, n: int, *, without_bytes: int = 0) -> None:
    """n images queued; ``without_bytes`` of them lose their bytes, so that the worker fails them."""
    folder.mkdir(exist_ok=True)
    for i in range(n):
        (folder / f"p{i:02d}.jpg").write_bytes(jpeg_bytes(i, (80, 60)))
    model = active_model(conn)
    conn.commit()
    ids = ingest(conn, [folder], model_id=model.id).image_ids
    conn.execute("DELETE FROM pgclip.image_blobs WHERE image_id = ANY(%s)", [ids[:without_bytes]])
    conn.commit()


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_queue_depth_counts_every_state_of_every_model_and_the_oldest_pending_age(conn, tmp_path):
    _ingest(conn, tmp_path / "photos", 5)
    model = active_model(conn)
    claimed = queue.claim(conn, model_id=model.id, worker="w1", limit=2, lease_seconds=60, max_attempts=3)
    queue.fail(conn, {claimed[0].id: "not an image"}, worker="w1")
    conn.commit()
    conn.execute("UPDATE pgclip.embedding_jobs SET enqueued_at = now() - interval '90 seconds' WHERE state = 'pending'")
    conn.execute("INSERT INTO pgclip.models (name, pretrained, dimension, state) VALUES ('other', 'x', 64, 'building')")
    conn.commit()

    rows = {(r.model, r.state): r for r in queue_depth(conn)}
    assert {state: rows[("test-tiny", state)].jobs for state in ("pending", "leased", "done", "failed")} == {
        "pending": 3, "leased": 1, "done": 0, "failed": 1,
    }
    assert rows[("test-tiny", "pending")].oldest_seconds >= 90
    # A model without a job still has its four series, at 0: an alert never sees one vanish.
    assert {state: rows[("other", state)].jobs for state in ("pending", "leased", "done", "failed")} == {
        "pending": 0, "leased": 0, "done": 0, "failed": 0,
    }
    assert rows[("other", "pending")].oldest_seconds is None


def test_queue_depth_gives_up_at_its_statement_timeout_while_a_lock_holds_the_queue(conn, db_url):
    with connect(db_url, role="test") as locker:
        locker.execute("LOCK TABLE pgclip.embedding_jobs IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(psycopg.errors.QueryCanceled):
            queue_depth(conn, timeout_seconds=0.2)
        conn.rollback()
        locker.rollback()
    assert queue_depth(conn)  # the lock gone, it answers again


def test_the_collector_says_the_database_is_down_instead_of_failing_the_scrape(db_url):
    registry = CollectorRegistry()
    collector = DatabaseCollector(lambda: scrape_connection(db_url))
    registry.register(collector)
    assert _sample(registry, "pgclip_database_up") == 1
    assert _sample(registry, "pgclip_queue_jobs", model="test-tiny", pretrained="random-seed-0", state="done") == 0

    # The same collector against a server that is not there (nothing listens on port 1).
    collector.connect = lambda: scrape_connection("postgresql://nobody@127.0.0.1:1/none")
    assert _sample(registry, "pgclip_database_up") == 0
    assert _sample(registry, "pgclip_queue_jobs", model="test-tiny", pretrained="random-seed-0", state="done") is None


def test_the_worker_loop_counts_its_jobs_by_outcome_and_times_each_stage(conn, db_url, tmp_path):
    _ingest(conn, tmp_path / "photos", 11, without_bytes=1)
    model = active_model(conn)
    encoder = ClipEncoder("test-tiny", "random")
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, model=model.name, pretrained=model.pretrained)
    worker = Worker(db_url, encoder=encoder, model=model, batch_size=4, lease_seconds=30, max_attempts=3,
                    metrics=metrics)
    stats = worker.run(until_empty=True)
    assert (stats.done, stats.failed) == (10, 1)

    labels = {"model": "test-tiny", "pretrained": model.pretrained}
    assert _sample(registry, "pgclip_worker_jobs_total", **labels, outcome="done") == 10
    assert _sample(registry, "pgclip_worker_jobs_total", **labels, outcome="failed") == 1
    assert _sample(registry, "pgclip_worker_jobs_total", **labels, outcome="retried") == 0
    # 11 jobs in batches of at most 4: at least three of each stage, the claims that found nothing too.
    for stage in STAGES:
        assert _sample(registry, "pgclip_worker_stage_seconds_count", **labels, stage=stage) >= 3, stage
    assert _sample(registry, "pgclip_worker_batch_size_sum", **labels) == 11
    assert _sample(registry, "pgclip_worker_batch_size_bucket", **labels, le="4.0") \
        == _sample(registry, "pgclip_worker_batch_size_count", **labels)
