"""The worker loop in-process on a real PostgreSQL: what it stores, and how it fails."""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from pgclip.db import queue
from pgclip.db.models import active_model
from pgclip.workers.encoder import ClipEncoder
from pgclip.workers.ingest import ingest
from pgclip.workers.loop import Worker
from tests.images import jpeg_bytes
from tests.unit.test_decode import odd_images


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    enc = ClipEncoder("test-tiny", "random", backend="torch")  # the reference below runs the torch model
    enc.load()
    return enc


def run_worker(db_url, model, encoder, **kwargs) -> Worker:
    worker = Worker(db_url, encoder=encoder, model=model, batch_size=kwargs.pop("batch_size", 8),
                    lease_seconds=kwargs.pop("lease_seconds", 30), max_attempts=kwargs.pop("max_attempts", 3),
                    model_threads=kwargs.pop("model_threads", 1))
    worker.run(until_empty=True)
    return worker


def open_clip_reference(encoder: ClipEncoder, data: bytes) -> np.ndarray:
    """open_clip's own pipeline on the upright RGB picture (the white-composited rendering for alpha)."""
    im = Image.open(io.BytesIO(data))
    im.seek(0)
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "P", "PA") and ("A" in im.getbands() or "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    if im.mode == "I;16":
        im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257).round().astype(np.uint8))
    im = im.convert("RGB")
    with torch.inference_mode():
        features = encoder._runner.model.encode_image(encoder.preprocess(im).unsqueeze(0)).float()
    v = features[0].numpy()
    return v / np.linalg.norm(v)


def test_stored_vectors_equal_open_clips_own_pipeline_for_every_odd_mode(conn, db_url, encoder, tmp_path):
    files = {**odd_images(), "photo_jpeg": jpeg_bytes(3, (200, 150))}
    for name, data in files.items():
        (tmp_path / f"{name}.{'jpg' if 'jpeg' in name else 'gif' if 'gif' in name else 'png'}").write_bytes(data)
    model = active_model(conn)
    conn.commit()  # ingest's batches commit only outside a caller's transaction
    report = ingest(conn, [tmp_path], model_id=model.id)
    assert report.added == len(files), report.rejected
    run_worker(db_url, model, encoder)
    rows = conn.execute(
        "SELECT i.source, e.embedding FROM pgclip.embeddings e JOIN pgclip.images i ON i.id = e.image_id"
    ).fetchall()
    assert len(rows) == len(files)
    for source, stored in rows:
        name = source.rsplit("/", 1)[1].rsplit(".", 1)[0]
        expected = open_clip_reference(encoder, files[name])
        np.testing.assert_allclose(stored.to_numpy(), expected, atol=1e-5, err_msg=name)


def test_two_model_threads_embed_every_image_once_with_open_clips_vectors(conn, db_url, encoder, tmp_path):
    """How `pgclip worker` runs on a CPU with 2+ cores: two threads, each encoding its own batch."""
    files = {f"p{n:02d}": jpeg_bytes(n, (90 + n, 60)) for n in range(21)}
    for name, data in files.items():
        (tmp_path / f"{name}.jpg").write_bytes(data)
    model = active_model(conn)
    conn.commit()
    ingest(conn, [tmp_path], model_id=model.id)
    worker = run_worker(db_url, model, encoder, batch_size=8, model_threads=2)
    assert worker.batch_size == 4  # each thread's share: 8 images in the model at once
    assert (worker.stats.done, worker.stats.failed, worker.stats.lost) == (21, 0, 0)
    rows = conn.execute(
        "SELECT i.source, e.embedding, j.attempts FROM pgclip.images i"
        " JOIN pgclip.embeddings e ON e.image_id = i.id JOIN pgclip.embedding_jobs j ON j.image_id = i.id"
        " WHERE j.state = 'done'"
    ).fetchall()
    assert len(rows) == len(files) and {attempts for _, _, attempts in rows} == {1}
    for source, stored, _ in rows:
        expected = open_clip_reference(encoder, files[Path(source).stem])
        np.testing.assert_allclose(stored.to_numpy(), expected, atol=1e-5, err_msg=source)


class FlakyEncoder:
    """The real encoder, except that images of one exact size always raise (a poison image)."""

    def __init__(self, inner: ClipEncoder, poison_size: tuple[int, int]) -> None:
        self.inner = inner
        self.poison_size = poison_size
        self.calls = 0
        self.lock = threading.Lock()

    def load(self) -> None:
        self.inner.load()

    def prepare(self, image):
        return image.size, self.inner.prepare(image)

    def encode_prepared(self, prepared):
        with self.lock:
            self.calls += 1
        if any(size == self.poison_size for size, _ in prepared):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.inner.encode_prepared([tensor for _, tensor in prepared])


def test_an_image_whose_encoding_always_raises_fails_alone_after_its_attempts(conn, db_url, encoder, tmp_path, monkeypatch):
    monkeypatch.setattr(queue, "BACKOFF_BASE", 0.01)  # retry at once instead of after seconds
    for n in range(7):
        (tmp_path / f"ok{n}.jpg").write_bytes(jpeg_bytes(n, (64, 48)))
    (tmp_path / "poison.jpg").write_bytes(jpeg_bytes(99, (77, 33)))
    model = active_model(conn)
    conn.commit()
    ingest(conn, [tmp_path], model_id=model.id)
    flaky = FlakyEncoder(encoder, (77, 33))
    worker = run_worker(db_url, model, flaky, max_attempts=3)
    states = dict(conn.execute(
        "SELECT i.source, j.state || ':' || j.attempts || ':' || coalesce(j.last_error, '')"
        " FROM pgclip.embedding_jobs j JOIN pgclip.images i ON i.id = j.image_id"
    ).fetchall())
    poison = states.pop(str(tmp_path / "poison.jpg"))
    assert poison.startswith("failed:3:RuntimeError: CUDA error")
    assert all(s.startswith("done:1") for s in states.values()), states  # the rest of its batch succeeded
    assert (worker.stats.done, worker.stats.failed) == (7, 1)


def test_a_deleted_image_is_skipped_without_error(conn, db_url, encoder, tmp_path):
    for n in range(3):
        (tmp_path / f"d{n}.jpg").write_bytes(jpeg_bytes(n))
    model = active_model(conn)
    conn.commit()  # ingest's batches commit only outside a caller's transaction
    report = ingest(conn, [tmp_path], model_id=model.id)
    conn.execute("DELETE FROM pgclip.images WHERE id = %s", [report.image_ids[0]])
    conn.commit()
    worker = run_worker(db_url, model, encoder)
    assert worker.stats.done == 2
    assert conn.execute("SELECT count(*) FROM pgclip.embeddings").fetchone()[0] == 2


def test_an_image_without_bytes_fails_with_the_fix_and_ingesting_its_file_mends_it(conn, db_url, encoder, tmp_path):
    """A row `pgclip import` brought has no bytes: its job fails at once saying what to do (it
    does not cycle through lease expiries), and ingesting the file stores the bytes it lacked."""
    for n in range(2):
        (tmp_path / f"b{n}.jpg").write_bytes(jpeg_bytes(n))
    model = active_model(conn)
    conn.commit()
    bare = ingest(conn, [tmp_path], model_id=model.id).image_ids[0]
    conn.execute("DELETE FROM pgclip.image_blobs WHERE image_id = %s", [bare])
    conn.commit()
    worker = run_worker(db_url, model, encoder)
    assert (worker.stats.done, worker.stats.failed) == (1, 1)
    state, attempts, error = conn.execute(
        "SELECT state, attempts, last_error FROM pgclip.embedding_jobs WHERE image_id = %s", [bare]).fetchone()
    assert (state, attempts) == ("failed", 1) and "no stored bytes" in error and "retry-failed" in error

    assert ingest(conn, [tmp_path], model_id=model.id).present == 2
    assert conn.execute("SELECT count(*) FROM pgclip.image_blobs").fetchone()[0] == 2
    with conn.transaction():
        queue.retry_failed(conn, model.id)
    conn.commit()
    assert run_worker(db_url, model, encoder).stats.done == 1
    assert conn.execute("SELECT count(*) FROM pgclip.embeddings").fetchone()[0] == 2


def test_a_worker_holding_a_lease_on_a_deleted_image_writes_nothing_for_it(conn, db_url, encoder):
    model = active_model(conn)
    image = conn.execute(
        "INSERT INTO pgclip.images (sha256, source, byte_size, width, height, format, mime)"
        " VALUES (repeat('b', 64), 'x.jpg', 1, 64, 48, 'JPEG', 'image/jpeg') RETURNING id"
    ).fetchone()[0]
    conn.execute("INSERT INTO pgclip.image_blobs VALUES (%s, %s)", [image, jpeg_bytes(5, (64, 48))])
    queue.enqueue(conn, [image], model.id)
    conn.commit()
    with conn.transaction():
        (job,) = queue.claim(conn, model_id=model.id, worker="w", limit=1, lease_seconds=60, max_attempts=3)
    conn.execute("DELETE FROM pgclip.images WHERE id = %s", [image])
    conn.commit()
    with conn.transaction():
        owned = queue.complete(conn, [queue.Finished(job.id, np.ones(model.dimension, np.float32) / 8)], worker="w")
    assert owned == set()
    assert conn.execute("SELECT count(*) FROM pgclip.embeddings").fetchone()[0] == 0


def test_lost_notifications_are_covered_by_polling(conn, db_url, encoder, tmp_path, monkeypatch):
    """A worker idle on LISTEN still picks up jobs enqueued without a NOTIFY."""
    from pgclip.workers import loop

    monkeypatch.setattr(loop, "POLL_SECONDS", 0.3)
    model = active_model(conn)
    worker = Worker(db_url, encoder=encoder, model=model, batch_size=4, lease_seconds=30, max_attempts=3)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        image = conn.execute(
            "INSERT INTO pgclip.images (sha256, source, byte_size, width, height, format, mime)"
            " VALUES (repeat('c', 64), 'quiet.jpg', 1, 64, 48, 'JPEG', 'image/jpeg') RETURNING id"
        ).fetchone()[0]
        conn.execute("INSERT INTO pgclip.image_blobs VALUES (%s, %s)", [image, jpeg_bytes(6, (64, 48))])
        conn.execute("INSERT INTO pgclip.embedding_jobs (image_id, model_id) VALUES (%s, %s)", [image, model.id])
        conn.commit()  # no pg_notify: only polling can find it
        for _ in range(100):
            if conn.execute("SELECT state FROM pgclip.embedding_jobs").fetchone()[0] == "done":
                break
            conn.commit()
            threading.Event().wait(0.1)
        assert conn.execute("SELECT state FROM pgclip.embedding_jobs").fetchone()[0] == "done"
    finally:
        worker.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_worker_whose_model_is_dropped_under_it_stops_and_says_so(conn, db_url, encoder, monkeypatch, caplog):
    """It claimed nothing for ever, silently: its jobs went with the model, and a model of the
    same name registered again is another row."""
    from pgclip.db.models import ensure_model
    from pgclip.workers import loop

    monkeypatch.setattr(loop, "POLL_SECONDS", 0.3)
    doomed = ensure_model(conn, "test-tiny", "random-doomed", active_model(conn).dimension)
    conn.commit()
    worker = Worker(db_url, encoder=encoder, model=doomed, batch_size=4, lease_seconds=30, max_attempts=3)
    thread = threading.Thread(target=worker.run, daemon=True)
    # At WARNING whatever another test left the root logger at (an in-process CLI sets it to ERROR).
    with caplog.at_level(logging.WARNING, logger="pgclip.worker"):
        thread.start()
        try:
            conn.execute("DELETE FROM pgclip.models WHERE id = %s", [doomed.id])  # what `pgclip models drop` deletes
            conn.commit()
            thread.join(timeout=30)
            assert not thread.is_alive()
        finally:
            worker.stop()
            thread.join(timeout=10)
    assert any("was dropped (`pgclip models drop`)" in r.getMessage() and "it stops" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_a_re_embed_keeps_the_thumbnails_and_makes_only_missing_ones(conn, db_url, encoder, tmp_path, monkeypatch):
    """A second model's worker decodes each image for its vector but leaves a thumbnail that is
    there alone (made by the first model's worker): no WebP encode, no rewritten row."""
    import pgclip.workers.loop as loop
    from pgclip.db.models import ensure_model

    for n in range(3):
        (tmp_path / f"p{n}.jpg").write_bytes(jpeg_bytes(n, (120, 90)))
    first = active_model(conn)
    conn.commit()
    ingest(conn, [tmp_path], model_id=first.id)
    run_worker(db_url, first, encoder)
    ids = [r[0] for r in conn.execute("SELECT id FROM pgclip.images ORDER BY id")]
    conn.execute("DELETE FROM pgclip.thumbnails WHERE image_id = %s", [ids[0]])  # say, imported --no-thumbnails
    kept = dict(conn.execute("SELECT image_id, xmin::text FROM pgclip.thumbnails").fetchall())
    second = ensure_model(conn, "test-tiny", "random-second", first.dimension)
    queue.enqueue(conn, ids, second.id)
    conn.commit()
    made, real = [], loop.make_thumbnail

    def counting(image, side):
        made.append(image.size)
        return real(image, side)

    monkeypatch.setattr(loop, "make_thumbnail", counting)

    worker = run_worker(db_url, second, encoder)

    assert (worker.stats.done, worker.stats.failed) == (3, 0)
    assert conn.execute("SELECT count(*) FROM pgclip.embeddings WHERE model_id = %s", [second.id]).fetchone()[0] == 3
    assert made == [(120, 90)]  # the missing one only
    after = dict(conn.execute("SELECT image_id, xmin::text FROM pgclip.thumbnails").fetchall())
    assert set(after) == set(ids) and {i: after[i] for i in kept} == kept  # the others not rewritten
