"""Images added with SQL alone (db/sql/sql_ingest.sql): pgclip.add_image and INSERT / COPY into
pgclip.image_inbox store, queue and notify in one statement; a worker decodes, fills in and
embeds them, or fails them with the reason; only pgclip_writer may add."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import psycopg
import pytest
from PIL import ExifTags, Image

from pgclip.db.models import active_model, ensure_model
from pgclip.workers.encoder import ClipEncoder
from pgclip.workers.loop import Worker
from tests.images import jpeg_bytes
from tests.integration.test_search_sql import assert_migrated_as_written

FUNCTIONS = ("pgclip.take_inbox()", "pgclip.add_image(bytea, text, text[], jsonb)")


def jobs(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "SELECT j.image_id, m.name, j.state, j.last_error FROM pgclip.embedding_jobs j"
        " JOIN pgclip.models m ON m.id = j.model_id ORDER BY j.image_id, m.id"
    ).fetchall()


def exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Canon"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2021:06:15 14:30:05"
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(out, "JPEG", exif=exif)
    return out.getvalue()


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    enc = ClipEncoder("test-tiny", "random", backend="torch")
    enc.load()
    return enc


def run_worker(db_url, model, encoder) -> Worker:
    worker = Worker(db_url, encoder=encoder, model=model, batch_size=8, lease_seconds=30, max_attempts=3)
    worker.run(until_empty=True)
    return worker


def test_the_migrated_functions_are_the_ones_in_sql_ingest_sql(conn):
    assert_migrated_as_written(conn, "sql_ingest.sql", FUNCTIONS, "0009_sql_ingest.py")


def test_add_image_stores_the_bytes_captions_and_metadata_and_queues_it(conn):
    data = jpeg_bytes(1)
    image_id = conn.execute(
        "SELECT pgclip.add_image(%s, 'etl/a.jpg', ARRAY['a dog', ''], '{\"batch\": 7}')", [data]
    ).fetchone()[0]

    row = conn.execute(
        "SELECT sha256, source, byte_size, width, height, format, mime, metadata FROM pgclip.images WHERE id = %s",
        [image_id],
    ).fetchone()
    assert row == (hashlib.sha256(data).hexdigest(), "etl/a.jpg", len(data), None, None, None, None, {"batch": 7})
    assert conn.execute("SELECT data FROM pgclip.image_blobs WHERE image_id = %s", [image_id]).fetchone()[0] == data
    assert conn.execute("SELECT text FROM pgclip.captions").fetchall() == [("a dog",)]  # an empty one is none
    assert jobs(conn) == [(image_id, "test-tiny", "pending", None)]
    assert conn.execute("SELECT count(*) FROM pgclip.image_inbox").fetchone() == (0,)
    # Its size is unknown until a worker decodes it: no orientation yet (not 'square').
    assert conn.execute("SELECT orientation FROM pgclip.images_with_captions").fetchone() == (None,)


def test_known_bytes_return_the_stored_image_with_new_captions_and_metadata_and_no_new_job(conn):
    data = jpeg_bytes(2)
    first = conn.execute("SELECT pgclip.add_image(%s, 'a.jpg', ARRAY['one'], '{\"a\": 1}')", [data]).fetchone()[0]
    conn.execute("UPDATE pgclip.embedding_jobs SET state = 'done'")

    again = conn.execute(
        "SELECT pgclip.add_image(%s, 'b.jpg', ARRAY['one', 'two'], '{\"b\": 2}')", [data]
    ).fetchone()[0]

    assert again == first
    assert conn.execute("SELECT source, metadata FROM pgclip.images").fetchall() == [("a.jpg", {"a": 1, "b": 2})]
    assert [t for (t,) in conn.execute("SELECT text FROM pgclip.captions ORDER BY id")] == ["one", "two"]
    assert jobs(conn) == [(first, "test-tiny", "done", None)]


def test_a_copy_of_many_rows_is_taken_queued_and_notified_by_its_one_statement(conn, db_url):
    rows = [(jpeg_bytes(i, (16, 16)), f"copy/{i}.jpg", [f"caption {i}"], {"n": i}) for i in range(200)]
    rows.append(rows[0])  # the same bytes twice in one statement are one image
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN pgclip_jobs")
        with conn.cursor() as cur, cur.copy(
            "COPY pgclip.image_inbox (data, source, captions, metadata) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["bytea", "text", "text[]", "jsonb"])
            for data, source, captions, metadata in rows:
                copy.write_row((data, source, captions, metadata))
        conn.commit()
        model = active_model(conn)
        notices = list(listener.notifies(timeout=5, stop_after=1))
    assert [(n.channel, n.payload) for n in notices] == [("pgclip_jobs", str(model.id))]
    assert conn.execute("SELECT count(*) FROM pgclip.images").fetchone() == (200,)
    assert conn.execute("SELECT count(*) FROM pgclip.image_blobs").fetchone() == (200,)
    assert conn.execute("SELECT count(*) FROM pgclip.captions").fetchone() == (200,)
    assert conn.execute("SELECT count(*), min(state), max(state) FROM pgclip.embedding_jobs").fetchone() \
        == (200, "pending", "pending")
    assert conn.execute("SELECT count(*) FROM pgclip.image_inbox").fetchone() == (0,)


def test_an_insert_select_fires_the_trigger_once_for_all_its_rows(conn):
    conn.execute("CREATE TEMP TABLE staged (data bytea)")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO staged VALUES (%s)", [(jpeg_bytes(i, (16, 16)),) for i in range(50)])
    calls_before = conn.execute(
        "SELECT coalesce(calls, 0) FROM pg_stat_xact_user_functions WHERE funcname = 'take_inbox'"
    ).fetchone()
    conn.execute("SET LOCAL track_functions = 'pl'")
    conn.execute("INSERT INTO pgclip.image_inbox (data) SELECT data FROM staged")
    calls = conn.execute(
        "SELECT calls FROM pg_stat_xact_user_functions WHERE funcname = 'take_inbox'"
    ).fetchone()
    assert calls_before is None and calls == (1,)
    assert conn.execute("SELECT count(*) FROM pgclip.embedding_jobs").fetchone() == (50,)


def test_images_are_queued_for_the_active_model_and_models_being_built_only(conn):
    building = ensure_model(conn, "being-built", "none", 3)  # registered as building; commits
    retired = ensure_model(conn, "old", "none", 3)
    conn.execute("UPDATE pgclip.models SET state = 'retired' WHERE id = %s", [retired.id])
    image_id = conn.execute("SELECT pgclip.add_image(%s, 'x.jpg')", [jpeg_bytes(3)]).fetchone()[0]
    assert [(m, s) for _, m, s, _ in jobs(conn)] == [("test-tiny", "pending"), (building.name, "pending")]
    assert {i for i, *_ in jobs(conn)} == {image_id}


def test_metadata_that_is_not_an_object_is_refused_by_name(conn):
    with pytest.raises(psycopg.errors.CheckViolation, match="image_inbox_metadata_object_check"):
        conn.execute("SELECT pgclip.add_image('x', 'x.jpg', NULL, '[1, 2]')")


def test_the_worker_fills_in_what_sql_could_not_know_and_embeds_it(conn, db_url, encoder):
    good = conn.execute(
        "SELECT pgclip.add_image(%s, 'sql/exif.jpg', NULL, '{\"camera_make\": \"given wins\"}')", [exif_jpeg()]
    ).fetchone()[0]
    bad = conn.execute("SELECT pgclip.add_image('not an image at all', 'sql/bad.jpg')").fetchone()[0]
    conn.commit()

    worker = run_worker(db_url, active_model(conn), encoder)

    assert (worker.stats.done, worker.stats.failed) == (1, 1)
    row = conn.execute(
        "SELECT width, height, format, mime, taken_at IS NOT NULL, metadata FROM pgclip.images WHERE id = %s", [good]
    ).fetchone()
    assert row == (40, 30, "JPEG", "image/jpeg", True, {"camera_make": "given wins"})
    assert conn.execute("SELECT count(*) FROM pgclip.embeddings WHERE image_id = %s", [good]).fetchone() == (1,)
    assert conn.execute("SELECT width FROM pgclip.thumbnails WHERE image_id = %s", [good]).fetchone() == (40,)
    state = dict((i, (s, e)) for i, _, s, e in jobs(conn))
    assert state[good] == ("done", None)
    assert state[bad] == ("failed", "not an image (cannot identify image file)")
    assert conn.execute("SELECT width FROM pgclip.images WHERE id = %s", [bad]).fetchone() == (None,)


def test_only_the_writer_role_may_add_images_and_it_may_do_nothing_else(conn):
    conn.commit()
    with conn.transaction():
        conn.execute("SET LOCAL ROLE pgclip_writer")
        added = conn.execute("SELECT pgclip.add_image(%s, 'w.jpg')", [jpeg_bytes(4)]).fetchone()[0]
        conn.execute("INSERT INTO pgclip.image_inbox (data, source) VALUES (%s, 'w2.jpg')", [jpeg_bytes(5)])
        for statement in [
            "SELECT * FROM pgclip.images",
            "SELECT * FROM pgclip.image_inbox",
            "INSERT INTO pgclip.images (sha256, byte_size) VALUES (repeat('a', 64), 1)",
            "INSERT INTO pgclip.embedding_jobs (image_id, model_id) SELECT 1, 1",
            "DELETE FROM pgclip.image_inbox",
            "UPDATE pgclip.image_inbox SET source = 'x'",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(statement)
    assert added is not None
    assert conn.execute("SELECT count(*) FROM pgclip.embedding_jobs").fetchone() == (2,)

    with conn.transaction():
        conn.execute("SET LOCAL ROLE pgclip_analyst")
        for statement in [
            "SELECT pgclip.add_image('x', 'x.jpg')",
            "INSERT INTO pgclip.image_inbox (data) VALUES ('x')",
            "COPY pgclip.image_inbox (data) FROM STDIN",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(statement)
    assert conn.execute("SELECT count(*) FROM pgclip.images").fetchone() == (2,)


def readme_examples() -> list[str]:
    """The SQL examples of the README's "Adding images with SQL" (fenced as plpgsql: the
    analyst, who runs the section's ```sql examples, may not add images)."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("### Adding images with SQL", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```plpgsql\n(.*?)```", section, flags=re.S)


def test_the_readmes_examples_run_for_the_writer_and_queue_their_images(conn):
    examples = readme_examples()
    assert len(examples) == 2
    conn.commit()
    with conn.transaction():
        conn.execute("SET LOCAL ROLE pgclip_writer")
        for example in examples:
            conn.execute(example)
    rows = conn.execute(
        "SELECT i.source, j.state FROM pgclip.images i JOIN pgclip.embedding_jobs j ON j.image_id = i.id ORDER BY i.source"
    ).fetchall()
    assert rows == [("etl/broken.jpg", "pending"), ("etl/dot.gif", "pending"), ("etl/grey.png", "pending")]


def test_the_api_describes_an_image_not_yet_decoded_without_inventing_its_size(db_url, settings, encoder):
    """Between the INSERT and the worker, an image has bytes but no size or type: its detail
    says null for them (as the schema says) and its original goes out as octet-stream."""
    import msgspec

    from pgclip.api.schemas import ImageDetail
    from pgclip.application.service import Service

    data = jpeg_bytes(3)
    with psycopg.connect(db_url, autocommit=True) as conn:
        image_id = conn.execute("SELECT pgclip.add_image(%s, 'etl/pending.jpg')", [data]).fetchone()[0]
    service = Service(settings, db_url, encoder)
    service.pool.open()
    try:
        detail = service.image(image_id)
        assert [detail[k] for k in ("width", "height", "format", "mime")] == [None, None, None, None]
        # The API's schema admits what it sends: a strict decode of exactly those fields passes.
        fields = {k: detail[k] for k in ("width", "height", "format", "mime")}
        partial = msgspec.defstruct("Partial", [(k, ImageDetail.__annotations__[k]) for k in fields])
        msgspec.json.decode(msgspec.json.encode(fields), type=partial)
        original = service.blob(image_id, "image_blobs")
        assert (original.data, original.mime) == (data, "application/octet-stream")
    finally:
        service.close()
