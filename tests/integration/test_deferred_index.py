"""The deferred index (#19): a model without its index takes its vectors by plain inserts, and
gets its index once, CONCURRENTLY, when its backlog drains; searches stay exact meanwhile."""

from __future__ import annotations

import threading

import msgspec
import numpy as np
import psycopg
import pytest

from pgclip.api.schemas import ModelInfo
from pgclip.application.service import _model_info
from pgclip.core.errors import ConfigError
from pgclip.db import indexes, models, queue
from pgclip.db.engine import connect
from pgclip.db.search import SearchParams, search
from pgclip.workers.encoder import ClipEncoder
from pgclip.workers.ingest import ingest
from pgclip.workers.loop import Worker
from tests.images import write_jpegs
from tests.searchdata import model as active
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    enc = ClipEncoder("test-tiny", "random", backend="torch")
    enc.load()
    return enc


def work(url: str, model: models.ModelRow, encoder: ClipEncoder) -> Worker:
    worker = Worker(url, encoder=encoder, model=model, batch_size=8, lease_seconds=30, max_attempts=3)
    worker.run(until_empty=True)
    return worker


def info(url: str, model: models.ModelRow) -> indexes.IndexInfo:
    with connect(url) as conn:
        return next(i for i in indexes.describe_indexes(conn) if i.coverage.model.id == model.id)


def index_oid(url: str, model: models.ModelRow) -> int | None:
    with connect(url) as conn:
        return conn.execute("SELECT to_regclass(%s)::oid", [f"pgclip.{model.index_name}"]).fetchone()[0]


def nearest(url: str, model: models.ModelRow, vector: np.ndarray, k: int = 5) -> list[int]:
    with connect(url) as conn:
        page = search(conn, SearchParams(vector=vector, k=k), model=model)
    return [h.image_id for h in page.hits]


def exact(url: str, model: models.ModelRow, vector: np.ndarray, k: int = 5) -> list[int]:
    with connect(url) as conn:
        rows = conn.execute("SELECT image_id, embedding FROM pgclip.embeddings WHERE model_id = %s",
                            [model.id]).fetchall()
    ids = np.array([r[0] for r in rows])
    sims = np.stack([r[1].to_numpy() for r in rows]).astype(np.float64) @ vector.astype(np.float64)
    return ids[np.lexsort((ids, -sims))][:k].tolist()


def some_vector(url: str, model: models.ModelRow, image_id: int) -> np.ndarray:
    with connect(url) as conn:
        return conn.execute("SELECT embedding FROM pgclip.embeddings WHERE image_id = %s AND model_id = %s",
                            [image_id, model.id]).fetchone()[0].to_numpy()


def test_a_first_ingest_goes_in_without_the_index_which_is_built_once_the_queue_drains(conn, db_url, encoder,
                                                                                       tmp_path):
    model = active(conn)
    conn.commit()
    plan = indexes.prepare_ingest(conn, db_url, model, bulk=False)
    assert plan.dropped and plan.vectors == 0 and plan.deferred  # the fresh collection's empty index
    write_jpegs(tmp_path / "a", 40)
    ingest(conn, [tmp_path / "a"], model_id=model.id)
    conn.close()  # the ingest is over: its lock goes with its session
    assert info(db_url, model).state == "deferred"
    assert info(db_url, model).exact

    # Searches before the workers are done: exact over the vectors there are.
    with connect(db_url) as c:
        first = c.execute("SELECT min(id) FROM pgclip.images").fetchone()[0]
    worker = work(db_url, model, encoder)
    assert worker.stats.done == 40
    assert [r.vectors for r in worker.index_builder.built] == [40]  # built once, over all of them
    now = info(db_url, model)
    assert (now.state, now.valid, now.exact) == ("built", True, False)
    assert now.build["vectors"] == 40 and now.build["seconds"] >= 0
    q = some_vector(db_url, model, first)
    assert nearest(db_url, model, q) == exact(db_url, model, q)

    # Incremental: one image into the built index is searchable as soon as its job is done,
    # through the same index (not rebuilt).
    oid = index_oid(db_url, model)
    write_jpegs(tmp_path / "b", 1, start=1000)
    with connect(db_url) as c:
        assert not indexes.prepare_ingest(c, db_url, model, bulk=False).dropped  # it indexes vectors now
        new_id = ingest(c, [tmp_path / "b"], model_id=model.id).image_ids[0]
    worker = work(db_url, model, encoder)
    assert worker.index_builder.built == []
    assert index_oid(db_url, model) == oid
    assert nearest(db_url, model, some_vector(db_url, model, new_id), k=1) == [new_id]


def test_a_reembed_fills_the_new_model_without_an_index_and_activation_waits_for_the_vectors(conn, db_url,
                                                                                            encoder, tmp_path):
    first = active(conn)
    write_jpegs(tmp_path, 24)
    conn.commit()
    ingest(conn, [tmp_path], model_id=first.id)
    work(db_url, first, encoder)

    other = models.ensure_model(conn, "test-tiny", "other-weights", 64)
    assert indexes.defer_index(db_url, other, only_empty=True) == (True, 0)  # as `pgclip reembed` does
    assert queue.enqueue_model(conn, other.id) == 24
    conn.commit()
    assert info(db_url, other).state == "deferred"
    # Below full coverage, activation refuses before building anything.
    with pytest.raises(ConfigError, match="0 of 24"):
        models.check_activation(conn, other)
    conn.rollback()
    assert info(db_url, other).state == "deferred"

    work(db_url, other, encoder)
    assert info(db_url, other).state == "built"
    assert info(db_url, first).state == "built"  # the active model's index was never touched
    previous = models.activate(conn, other)
    assert previous.id == first.id
    q = some_vector(db_url, other, 3)
    assert nearest(db_url, other, q) == exact(db_url, other, q)


def test_activating_a_model_whose_index_is_deferred_builds_it_first(conn, db_url, encoder, tmp_path):
    model = active(conn)
    write_jpegs(tmp_path, 12)
    conn.commit()
    indexes.defer_index(db_url, model, only_empty=True)
    ingest(conn, [tmp_path], model_id=model.id)
    conn.commit()
    # No builder ran (workers that never build: the benchmark's "before").
    Worker(db_url, encoder=encoder, model=model, batch_size=8, lease_seconds=30, max_attempts=3,
           build_index=False).run(until_empty=True)
    assert info(db_url, model).state == "deferred"
    report = indexes.build_deferred(db_url, model, wait=True)  # what `models activate` runs first
    assert report is not None and report.vectors == 12
    assert info(db_url, model).state == "built"
    assert indexes.build_deferred(db_url, model, wait=True) is None  # nothing left to build


def test_no_build_while_an_ingest_runs_or_jobs_are_open(conn, db_url, encoder, tmp_path):
    model = active(conn)
    write_jpegs(tmp_path, 10)
    conn.commit()
    ingest(conn, [tmp_path], model_id=model.id)
    conn.commit()
    indexes.defer_index(db_url, model, only_empty=False)
    assert indexes.build_deferred(db_url, model) is None  # ten open jobs
    Worker(db_url, encoder=encoder, model=model, batch_size=8, lease_seconds=30, max_attempts=3,
           build_index=False).run(until_empty=True)
    with connect(db_url, role="ingest") as ingesting:
        indexes.prepare_ingest(ingesting, db_url, model, bulk=False)
        assert indexes.build_state(conn, model).ingesting
        conn.commit()
        assert indexes.build_deferred(db_url, model) is None  # an ingest still feeds the model
    assert indexes.build_deferred(db_url, model) is not None  # its session is over
    assert info(db_url, model).state == "built"


def test_a_killed_build_leaves_an_invalid_index_that_the_next_build_replaces(conn, db_url, encoder, tmp_path):
    model = active(conn)
    write_jpegs(tmp_path, 16)
    conn.commit()
    ingest(conn, [tmp_path], model_id=model.id)
    conn.commit()
    Worker(db_url, encoder=encoder, model=model, batch_size=8, lease_seconds=30, max_attempts=3,
           build_index=False).run(until_empty=True)
    indexes.defer_index(db_url, model, only_empty=False)

    # A writer's open transaction holds the build in its first wait, its index already in the catalog.
    writer = connect(db_url, role="test")
    writer.execute("UPDATE pgclip.embeddings SET created_at = created_at WHERE image_id = "
                   "(SELECT min(image_id) FROM pgclip.embeddings)")
    builder: list[psycopg.Connection] = []
    failed: list[BaseException] = []

    def build() -> None:
        try:
            indexes.build_deferred(db_url, model, wait=True, connected=builder.append)
        except BaseException as exc:  # noqa: BLE001 - the kill is expected
            failed.append(exc)

    thread = threading.Thread(target=build)
    thread.start()
    try:
        wait_for(lambda: info(db_url, model).state == "building", timeout=30, what="the build to start")
        assert info(db_url, model).exact
        pid = builder[0].info.backend_pid
        conn.execute("SELECT pg_terminate_backend(%s)", [pid])  # as if its worker was SIGKILLed
        conn.commit()
        thread.join(timeout=30)
    finally:
        writer.rollback()
        writer.close()
    assert failed and not thread.is_alive()
    assert info(db_url, model).state == "invalid"
    q = some_vector(db_url, model, 1)
    assert nearest(db_url, model, q) == exact(db_url, model, q)  # an invalid index is never used

    worker = work(db_url, model, encoder)  # nothing queued: it finds the invalid index and rebuilds
    assert [r.vectors for r in worker.index_builder.built] == [16]
    assert (info(db_url, model).state, info(db_url, model).valid) == ("built", True)
    assert nearest(db_url, model, q) == exact(db_url, model, q)


def test_the_api_shows_each_state(conn, db_url):
    model = active(conn)
    conn.commit()
    shown = [msgspec.convert(_model_info(i), ModelInfo) for i in [info(db_url, model)]]
    assert (shown[0].index.state, shown[0].index.exact_search) == ("built", False)
    indexes.defer_index(db_url, model, only_empty=True)
    shown = msgspec.convert(_model_info(info(db_url, model)), ModelInfo)
    assert (shown.index.state, shown.index.exact_search, shown.index.size_bytes) == ("deferred", True, None)
    with connect(db_url) as c:
        c.execute("UPDATE pgclip.models SET index_kind = 'none' WHERE id = %s", [model.id])
    shown = msgspec.convert(_model_info(info(db_url, model)), ModelInfo)
    assert (shown.index.state, shown.index.exact_search) == ("none", True)
