"""pgclip.embed_text and pgclip.search_text on a real PostgreSQL, answered by a worker running
in this process (tests/acceptance/test_sql_text_search.py has the real `pgclip worker`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from pgclip.db import text_vectors
from pgclip.db.models import active_model
from pgclip.workers.encoder import ClipEncoder
from pgclip.workers.loop import Worker
from pgclip.workers.reconnect import Outage
from pgclip.workers.text_requests import TextRequests
from tests.integration.test_schema import add_image
from tests.integration.test_search_sql import assert_migrated_as_written

FUNCTIONS = ("pgclip.loopback_conninfo()", "pgclip.ask_workers(int, text, text, int)",
             "pgclip.embed_text(text, text, int)", "pgclip.search_text(text, text, jsonb, int, int, jsonb)")


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    enc = ClipEncoder("test-tiny", "random", backend="torch")
    enc.load()
    return enc


@pytest.fixture
def worker(db_url, conn, encoder) -> Iterator[Worker]:
    """An idle worker of the active model, running until the test ends."""
    model = active_model(conn)
    conn.commit()
    running = Worker(db_url, encoder=encoder, model=model, batch_size=4, lease_seconds=30, max_attempts=3)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    yield running
    running.stop()
    thread.join(timeout=30)


def session(db_url: str) -> psycopg.Connection:
    from pgclip.db.engine import connect

    return connect(db_url, role="test", autocommit=True)


def as_array(value) -> np.ndarray:
    return value.to_numpy() if hasattr(value, "to_numpy") else np.asarray(value, dtype=np.float32)


def test_the_migrated_functions_are_the_ones_in_text_sql(conn):
    assert_migrated_as_written(conn, "text.sql", FUNCTIONS, "0016_sql_arguments.py")


@pytest.mark.parametrize("text", ["a cat on a sofa", "it's 100% \"quoted\" $$x$$'); DROP TABLE pgclip.images; --"])
def test_a_worker_embeds_a_text_asked_for_in_sql_as_its_model_would(worker, db_url, encoder, text):
    with session(db_url) as c:
        vector = as_array(c.execute("SELECT pgclip.embed_text(%s)", [text]).fetchone()[0])
        assert np.allclose(vector, encoder.encode_texts([text])[0], atol=1e-6)
        # Answered once: the request is gone, the vector cached under the model.
        assert c.execute("SELECT count(*) FROM pgclip.text_requests").fetchone() == (0,)
        assert c.execute("SELECT text FROM pgclip.text_vectors").fetchall() == [(text,)]
        assert c.execute("SELECT count(*) FROM pgclip.images").fetchone() == (0,)  # still there, still empty


def test_a_cached_text_needs_no_worker(db_url, conn):
    model = active_model(conn)
    stored = np.eye(model.dimension, dtype=np.float32)[3]
    text_vectors.store(conn, model.id, {"a red bus": stored})
    conn.commit()
    with session(db_url) as c:
        # 1 ms would never do for a worker: the answer comes from the cache, trimmed text and all.
        got = c.execute("SELECT pgclip.embed_text('  a red bus ', NULL, 1)").fetchone()[0]
        assert np.array_equal(as_array(got), stored)


def test_a_text_longer_than_the_cache_holds_is_left_out_of_it(conn):
    model = active_model(conn)
    vector = np.eye(model.dimension, dtype=np.float32)[4]
    long = "x" * (text_vectors.CACHE_MAX_CHARS + 1)
    text_vectors.store(conn, model.id, {long: vector, "short": vector})  # no CHECK violation: the long one skipped
    conn.commit()
    assert text_vectors.cached(conn, model.id, "short") is not None
    assert text_vectors.cached(conn, model.id, long) is None


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"])
def test_the_answer_arrives_whatever_the_callers_isolation(worker, db_url, isolation):
    """A REPEATABLE READ snapshot never shows the worker's answer: the function reads it through dblink."""
    with session(db_url) as c, c.transaction():
        c.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        c.execute("SELECT count(*) FROM pgclip.images")  # the snapshot is taken
        got = c.execute("SELECT pgclip.embed_text(%s, NULL, 5000)", [f"a {isolation} dog"]).fetchone()[0]
        assert got is not None


def test_no_worker_is_an_error_naming_pgclip_worker_within_the_timeout(db_url):
    with session(db_url) as c:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="no pgclip worker answered within 300 ms"):
            c.execute("SELECT pgclip.embed_text('a lonely text', NULL, 300)")
        # The GUC sets the wait for search_text, which has no argument for it.
        c.execute("SET pgclip.text_timeout_ms = 200")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="pgclip worker") as raised:
            c.execute("SELECT * FROM pgclip.search_text('another lonely text')")
        assert "pgclip worker" in (raised.value.diag.message_hint or "")
        # Nobody waits for them any more: the requests are withdrawn.
        assert c.execute("SELECT count(*) FROM pgclip.text_requests").fetchone() == (0,)
        # An int8 model's workers need their encoder set: the hint says so.
        c.execute("INSERT INTO pgclip.models (name, pretrained, dimension, state) "
                  "SELECT name, pretrained || '+onnx-int8', dimension, 'building' FROM pgclip.models "
                  "WHERE state = 'active'")
        label = c.execute("SELECT format('%s (%s)', name, pretrained) FROM pgclip.models "
                          "WHERE pretrained LIKE '%+onnx-int8'").fetchone()[0]
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as raised:
            c.execute("SELECT pgclip.embed_text('an int8 text', %s, 200)", [label])
        assert "PGCLIP_ENCODER=onnx-int8" in (raised.value.diag.message_hint or "")


@pytest.mark.parametrize(("call", "message"), [
    ("pgclip.embed_text(repeat('a', 1001))", "the text has 1001 characters; at most 1000"),
    ("pgclip.embed_text('   ')", "give a text to embed"),
    ("pgclip.embed_text(NULL)", "give a text to embed"),
    ("pgclip.embed_text('a cat', 'no-such-model')", "no model named no-such-model"),
    ("pgclip.embed_text('a cat', NULL, 0)", "timeout_ms must be between 1 and 600000"),
    ("pgclip.search_text('a cat', NULL, '{}', 5, 0, '{\"model_id\": 999}')", "no model with id 999"),
])
def test_bad_input_is_an_error_at_once(db_url, call, message):
    with session(db_url) as c, pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        c.execute(f"SELECT {call}")


def test_a_model_is_named_by_its_name_or_its_label(db_url, conn):
    model = active_model(conn)
    text_vectors.store(conn, model.id, {"a kite": np.eye(model.dimension, dtype=np.float32)[0]})
    conn.commit()
    with session(db_url) as c:
        for name in (model.name, model.label):
            assert c.execute("SELECT pgclip.embed_text('a kite', %s, 1) IS NOT NULL", [name]).fetchone() == (True,)


def test_search_text_is_search_with_the_texts_vector(worker, db_url, conn):
    model = active_model(conn)
    rng = np.random.default_rng(1)
    for n in range(12):
        image = add_image(conn, f"t{n}.jpg")
        v = rng.normal(size=model.dimension).astype(np.float32)
        conn.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)",
                     [image, model.id, v / np.linalg.norm(v)])
        conn.execute("INSERT INTO pgclip.captions (image_id, text) VALUES (%s, %s)", [image, f"a cat, take {n}"])
    conn.commit()
    with session(db_url) as c:
        by_text = c.execute("SELECT * FROM pgclip.search_text('a cat', NULL, '{}', 5)").fetchall()
        vector = c.execute("SELECT pgclip.embed_text('a cat')").fetchone()[0]
        assert by_text == c.execute("SELECT * FROM pgclip.search(%s, NULL, '{}', 5)", [vector]).fetchall()
        assert len(by_text) == 5
        hybrid = c.execute("SELECT * FROM pgclip.search_text('a cat', 'cat', NULL, NULL, NULL, NULL)").fetchall()
        assert hybrid == c.execute("SELECT * FROM pgclip.search(%s, 'cat')", [vector]).fetchall()
        # No text: a caption search, as pgclip.search without a vector.
        assert c.execute("SELECT * FROM pgclip.search_text(NULL, 'cat')").fetchall() == \
            c.execute("SELECT * FROM pgclip.search(NULL, 'cat')").fetchall()


def test_the_cache_keeps_the_most_recently_used_texts(conn):
    model = active_model(conn)
    eye = np.eye(model.dimension, dtype=np.float32)
    for n in range(5):
        text_vectors.store(conn, model.id, {f"text {n}": eye[n]}, keep=3)
        conn.execute("UPDATE pgclip.text_vectors SET last_used = now() - make_interval(mins => 10 - %s)"
                     " WHERE text = %s", [n, f"text {n}"])
    assert text_vectors.cached(conn, model.id, "text 2") is not None  # older than a minute: used again now
    text_vectors.store(conn, model.id, {"text 5": eye[5]}, keep=3)
    kept = {r[0] for r in conn.execute("SELECT text FROM pgclip.text_vectors")}
    assert kept == {"text 2", "text 4", "text 5"}


def test_the_api_fills_the_cache_sql_callers_read(db_url, settings, encoder):
    from pgclip.application.service import Service

    service = Service(settings, db_url, encoder)
    service.pool.open()
    try:
        service.search(text="a yellow taxi", raw=None, image=None, options={})
    finally:
        service.close()
    with session(db_url) as c:
        got = c.execute("SELECT pgclip.embed_text('a yellow taxi', NULL, 1)").fetchone()[0]
        assert np.allclose(as_array(got), encoder.encode_texts(["a yellow taxi"])[0], atol=1e-6)


def test_a_text_the_model_cannot_embed_is_an_error_with_its_reason(db_url, conn):
    def broken(texts):
        raise RuntimeError("the tokenizer choked")

    model = active_model(conn)
    done = threading.Event()
    answering = TextRequests(db_url, worker="test:1:abc", model_id=model.id, encode_texts=broken, outage=Outage(),
                             done=done)
    answering.start()
    try:
        with session(db_url) as c, pytest.raises(psycopg.errors.InvalidParameterValue, match="the tokenizer choked"):
            c.execute("SELECT pgclip.embed_text('a choking text', NULL, 5000)")
    finally:
        done.set()
        answering.join(timeout=10)
