"""The schema on a real PostgreSQL: migrations, constraints, search columns, vectors, cascades."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import psycopg
import pytest
from psycopg import sql
from sqlalchemy import select
from sqlalchemy.orm import Session

from pgclip.db import migrate as migrations
from pgclip.db.engine import connect, create_engine
from pgclip.db.models import ensure_model, vector_sql
from pgclip.db.schema import Embedding, Image


def add_image(conn: psycopg.Connection, name: str = "a.jpg", *, metadata: dict | None = None) -> int:
    digest = hashlib.sha256(name.encode()).hexdigest()
    return conn.execute(
        "INSERT INTO pgclip.images (sha256, source, byte_size, width, height, format, mime, metadata)"
        " VALUES (%s, %s, 10, 4, 3, 'JPEG', 'image/jpeg', %s) RETURNING id",
        [digest, name, json.dumps(metadata or {})],
    ).fetchone()[0]


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


# --- migrations --------------------------------------------------------------


def test_migrations_go_up_down_and_up_again_with_no_drift(databases):
    url = databases.create_empty()
    try:
        migrations.upgrade(url)
        migrations.downgrade(url, "base")
        with connect(url) as conn:
            tables = conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'pgclip' AND tablename <> 'alembic_version'"
            ).fetchone()[0]
            assert tables == 0
        migrations.upgrade(url)
        with connect(url) as conn:
            migrations.require_head(conn)
        # `alembic check`: the SQLAlchemy models and the migrations describe the same schema.
        from alembic import command

        cfg = migrations.alembic_config()
        with create_engine(url).connect() as connection:
            cfg.attributes["connection"] = connection
            command.check(cfg)
    finally:
        databases.drop(url)


def test_migrating_moves_a_taken_at_no_client_reads_into_metadata_and_refuses_new_ones(databases):
    """Before 0018 an edit could store year 10000 (in UTC); reading the image then failed, and
    every search that held it. The migration keeps the value, as text, and the image readable."""
    url = databases.create_empty()
    try:
        migrations.upgrade(url, "0017")
        with connect(url) as conn:
            late, early, fine = (add_image(conn, f"{n}.jpg") for n in ("late", "early", "fine"))
            for image_id, when in ((late, "9999-12-31 23:59:59-12"), (early, "0001-01-01 00:00:00+14"),
                                   (fine, "2024-05-01 12:00:00+00")):
                conn.execute("UPDATE pgclip.images SET taken_at = %s::timestamptz WHERE id = %s", [when, image_id])
            conn.commit()
            with pytest.raises(psycopg.DataError, match="timestamp too large"):
                conn.execute("SELECT taken_at FROM pgclip.images WHERE id = %s", [late]).fetchone()
        migrations.upgrade(url)
        with connect(url) as conn:
            rows = {r[0]: r[1:] for r in conn.execute("SELECT id, taken_at, metadata FROM pgclip.images")}
            assert rows[late] == (None, {"taken_at_out_of_range": "10000-01-01 11:59:59 UTC"})
            assert rows[early] == (None, {"taken_at_out_of_range": "0001-12-31 10:00:00 BC UTC"})
            assert rows[fine][0].isoformat() == "2024-05-01T12:00:00+00:00" and rows[fine][1] == {}
            with pytest.raises(psycopg.errors.CheckViolation, match="images_taken_at_range_check"):
                conn.execute("UPDATE pgclip.images SET taken_at = '9999-12-31 12:00+00' WHERE id = %s", [fine])
    finally:
        databases.drop(url)


def test_migrations_started_at_once_take_turns(databases, tmp_path):
    """Deploys migrating one fresh database at once: the later ones failed on "relation images
    already exists" or a pg_type duplicate key. Each takes the migrations' advisory lock: while
    another holds it (here this test), `pgclip migrate` waits, then finds its way to head."""
    import os
    import subprocess
    import sys

    from tests.waiting import wait_for

    url = databases.create_empty()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")},
           "PGCLIP_DATABASE_URL": url, "PGCLIP_MODEL": "test-tiny", "PGCLIP_DATA_DIR": str(tmp_path)}
    try:
        with psycopg.connect(url, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(hashtext('pgclip: migrations'))")
            run = subprocess.Popen([sys.executable, "-m", "pgclip.cli", "migrate"], env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)

            def waiting() -> bool:
                return holder.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                      " AND wait_event = 'advisory' AND datname = current_database()").fetchone()[0] == 1

            wait_for(lambda: waiting() or run.poll() is not None, timeout=120, what="pgclip migrate at the lock")
            assert run.poll() is None, run.communicate()  # it waits for the lock, touching nothing
            assert holder.execute("SELECT to_regclass('pgclip.images')").fetchone() == (None,)
            holder.execute("SELECT pg_advisory_unlock(hashtext('pgclip: migrations'))")
            out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        with connect(url) as conn:
            migrations.require_head(conn)
    finally:
        databases.drop(url)


def test_the_head_every_process_checks_for_is_alembics_head():
    # A new migration without SCHEMA_HEAD moved on would let processes run on the old schema.
    assert migrations.SCHEMA_HEAD == migrations.head_revision()


def test_an_unmigrated_database_is_refused_with_the_fix(databases):
    from pgclip.core.errors import SchemaNotReady

    url = databases.create_empty()
    try:
        with connect(url) as conn, pytest.raises(SchemaNotReady, match="run `pgclip migrate`"):
            migrations.require_head(conn)
    finally:
        databases.drop(url)


def test_every_table_lives_in_the_pgclip_schema(conn):
    public = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
    ours = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'pgclip'")}
    assert public == 0
    assert {"images", "image_blobs", "thumbnails", "captions", "models", "embeddings", "embedding_jobs"} <= ours


# --- images and captions -------------------------------------------------------


def test_the_same_picture_twice_is_one_row(conn):
    add_image(conn, "cat.jpg")
    with pytest.raises(psycopg.errors.UniqueViolation, match="images_sha256_key"):
        add_image(conn, "cat.jpg")


def test_caption_words_are_searchable_through_the_generated_tsvector(conn):
    image = add_image(conn)
    conn.execute(
        "INSERT INTO pgclip.captions (image_id, text) VALUES (%s, 'Two dogs running on the beach')", [image]
    )
    hits = conn.execute(
        "SELECT image_id FROM pgclip.captions WHERE tsv @@ websearch_to_tsquery('english', %s)", ["dog beaches"]
    ).fetchall()
    misses = conn.execute(
        "SELECT image_id FROM pgclip.captions WHERE tsv @@ websearch_to_tsquery('english', 'cat')"
    ).fetchall()
    assert hits == [(image,)]
    assert misses == []
    lexemes = conn.execute("SELECT tsv::text FROM pgclip.captions").fetchone()[0]
    assert "'dog'" in lexemes and "'run'" in lexemes and "'the'" not in lexemes


def test_a_huge_caption_is_stored_once_per_image(conn):
    image = add_image(conn)
    text = "sunset " * 5000  # far past a B-tree entry's size limit
    conn.execute("INSERT INTO pgclip.captions (image_id, text) VALUES (%s, %s)", [image, text])
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO pgclip.captions (image_id, text) VALUES (%s, %s)", [image, text])


# --- the queue table ---------------------------------------------------------------


def test_queue_constraints_reject_impossible_jobs(conn):
    image = add_image(conn)
    model = conn.execute("SELECT id FROM pgclip.models WHERE state = 'active'").fetchone()[0]
    insert = "INSERT INTO pgclip.embedding_jobs (image_id, model_id, state, lease_until, locked_by) VALUES (%s, %s, %s, %s, %s)"
    conn.execute(insert, [image, model, "pending", None, None])
    with pytest.raises(psycopg.errors.UniqueViolation, match="embedding_jobs_open_key"), conn.transaction():
        conn.execute(insert, [image, model, "pending", None, None])  # one open job per image and model
    with pytest.raises(psycopg.errors.CheckViolation, match="embedding_jobs_state_check"), conn.transaction():
        conn.execute(insert, [image, model, "sleeping", None, None])
    with pytest.raises(psycopg.errors.CheckViolation, match="embedding_jobs_lease_check"), conn.transaction():
        conn.execute(insert, [image, model, "leased", None, None])  # a lease needs an owner and an expiry
    # A finished job does not block a new one (e.g. a re-embed).
    conn.execute("UPDATE pgclip.embedding_jobs SET state = 'done'")
    conn.execute(insert, [image, model, "pending", None, None])
    assert conn.execute("SELECT count(*) FROM pgclip.embedding_jobs").fetchone()[0] == 2


# --- vectors ------------------------------------------------------------------------


def test_vectors_round_trip_through_psycopg_and_sqlalchemy(conn, db_url):
    image = add_image(conn)
    model = conn.execute("SELECT id, dimension FROM pgclip.models WHERE state = 'active'").fetchone()
    v = unit(np.random.default_rng(1).normal(size=model[1]))
    conn.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)", [image, model[0], v])
    conn.commit()
    back = conn.execute("SELECT embedding FROM pgclip.embeddings").fetchone()[0]
    np.testing.assert_array_equal(back.to_numpy(), v)

    with Session(create_engine(db_url)) as session:
        row = session.scalars(select(Embedding)).one()
        np.testing.assert_array_equal(np.asarray(row.embedding, dtype=np.float32), v)
    with Session(create_engine(db_url)) as session:  # a second vector for the same (image, model) is refused
        session.add(Embedding(image_id=image, model_id=model[0], embedding=-v))
        with pytest.raises(Exception, match="embeddings_pkey"):
            session.commit()


def _generic_plan(conn: psycopg.Connection, query: sql.Composable, vec: np.ndarray, model_id: int) -> str:
    """EXPLAIN the generic plan of ``query`` (parameters $1 = query vector, $2 = model id) as a
    server-side prepared statement would run it."""
    conn.execute("DEALLOCATE ALL")
    conn.execute(sql.SQL("PREPARE nn(vector, int) AS ") + query)
    literal = "[" + ",".join(map(str, vec.tolist())) + "]"
    plan = conn.execute(f"EXPLAIN (FORMAT JSON) EXECUTE nn('{literal}', {int(model_id)})").fetchone()[0]
    return json.dumps(plan)


def test_two_models_of_different_dimensions_each_answer_from_their_own_index(conn):
    small = ensure_model(conn, "dim-3", "none", 3)
    large = ensure_model(conn, "dim-5", "none", 5)
    rng = np.random.default_rng(7)
    images = [add_image(conn, f"{i}.png") for i in range(60)]
    for image in images:
        conn.execute("INSERT INTO pgclip.embeddings VALUES (%s, %s, %s)", [image, small.id, unit(rng.normal(size=3))])
        conn.execute("INSERT INTO pgclip.embeddings VALUES (%s, %s, %s)", [image, large.id, unit(rng.normal(size=5))])
    conn.commit()
    # A small table would be scanned; make the planner use an index when it can. Generic
    # plans are the trap: a partial index whose predicate only matches a literal model id.
    conn.execute("SET enable_seqscan = off")
    conn.execute("SET enable_bitmapscan = off")
    conn.execute("SET plan_cache_mode = force_generic_plan")
    for model in (small, large):
        target = images[11]
        vec = conn.execute(
            "SELECT embedding FROM pgclip.embeddings WHERE image_id = %s AND model_id = %s", [target, model.id]
        ).fetchone()[0].to_numpy()
        frag = vector_sql(model)
        ours = sql.SQL(
            "SELECT e.image_id FROM pgclip.embeddings e WHERE {model_pred} AND $2 IS NOT NULL"
            " ORDER BY {vec} <=> $1::{qcast} LIMIT 3"
        ).format(**frag)
        nearest = conn.execute(
            sql.SQL(
                "SELECT e.image_id FROM pgclip.embeddings e WHERE {model_pred}"
                " ORDER BY {vec} <=> %(q)s::{qcast} LIMIT 3"
            ).format(**frag),
            {"q": vec},
        ).fetchall()
        assert nearest[0][0] == target
        assert model.index_name in _generic_plan(conn, ours, vec, model.id)
        # The trap itself: with the model id as a bound parameter the index is unusable.
        bound = sql.SQL(
            "SELECT e.image_id FROM pgclip.embeddings e WHERE e.model_id = $2"
            " ORDER BY {vec} <=> $1::{qcast} LIMIT 3"
        ).format(**frag)
        assert model.index_name not in _generic_plan(conn, bound, vec, model.id)
    with pytest.raises(psycopg.errors.DataException, match="expected 3 dimensions"):
        # A vector of the wrong dimension for its model is refused by that model's index.
        conn.execute("INSERT INTO pgclip.embeddings VALUES (%s, %s, %s)", [add_image(conn, "new.png"), small.id, unit(rng.normal(size=5))])


def test_a_metadata_edit_leaves_the_vector_rows_untouched(conn):
    image = add_image(conn, metadata={"tag": "cat"})
    model = conn.execute("SELECT id, dimension FROM pgclip.models").fetchone()
    v = unit(np.ones(model[1]))
    conn.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)", [image, model[0], v])
    conn.commit()
    before = conn.execute("SELECT ctid, xmin FROM pgclip.embeddings").fetchone()
    conn.execute("UPDATE pgclip.images SET metadata = metadata || '{\"tag\": \"dog\"}', taken_at = now() WHERE id = %s", [image])
    conn.commit()
    after = conn.execute("SELECT ctid, xmin FROM pgclip.embeddings").fetchone()
    assert before == after  # same tuple, same writing transaction: never rewritten
    assert conn.execute("SELECT metadata->>'tag' FROM pgclip.images").fetchone()[0] == "dog"


def test_deleting_an_image_deletes_everything_that_hangs_off_it(conn):
    image, other = add_image(conn, "gone.jpg"), add_image(conn, "stays.jpg")
    model = conn.execute("SELECT id, dimension FROM pgclip.models").fetchone()
    for i in (image, other):
        conn.execute("INSERT INTO pgclip.captions (image_id, text) VALUES (%s, 'a caption')", [i])
        conn.execute("INSERT INTO pgclip.image_blobs VALUES (%s, 'bytes')", [i])
        conn.execute("INSERT INTO pgclip.thumbnails (image_id, width, height, data) VALUES (%s, 1, 1, 'x')", [i])
        conn.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)", [i, model[0], unit(np.ones(model[1]))])
        conn.execute("INSERT INTO pgclip.embedding_jobs (image_id, model_id) VALUES (%s, %s)", [i, model[0]])
    conn.execute("DELETE FROM pgclip.images WHERE id = %s", [image])
    for table in ("captions", "image_blobs", "thumbnails", "embeddings", "embedding_jobs"):
        left = conn.execute(f"SELECT array_agg(DISTINCT image_id) FROM pgclip.{table}").fetchone()[0]
        assert left == [other], table


def test_the_orm_sees_the_same_images(db_url, conn):
    add_image(conn, "orm.jpg", metadata={"camera_make": "Canon"})
    conn.commit()
    with Session(create_engine(db_url)) as session:
        image = session.scalars(select(Image)).one()
        assert image.source == "orm.jpg"
        assert image.metadata_ == {"camera_make": "Canon"}


def test_vectors_are_stored_inline_even_at_the_largest_dimension(conn):
    storage = conn.execute(
        "SELECT attstorage FROM pg_attribute WHERE attrelid = 'pgclip.embeddings'::regclass AND attname = 'embedding'"
    ).fetchone()[0]
    assert storage == "p"  # plain: no TOAST fetch per distance
    big = ensure_model(conn, "dim-2000", "none", 2000)
    image = add_image(conn, "big.png")
    conn.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)",
                 [image, big.id, unit(np.ones(2000))])
    assert conn.execute("SELECT vector_dims(embedding) FROM pgclip.embeddings WHERE model_id = %s", [big.id]).fetchone()[0] == 2000
