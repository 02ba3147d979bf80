"""`pgclip export` / `pgclip import` (application/exchange.py, db/exchange.py) on a real
PostgreSQL and real files: the clip-retrieval layout, a round trip that searches the same,
the merge rule, and refusals (model or dimension mismatch, corrupt files, a bad row) that
leave the database as it was."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pgclip.application.exchange import MANIFEST, export_parquet, import_parquet
from pgclip.core.errors import ConfigError, InvalidInput, ModelLoadError
from pgclip.db.engine import connect
from pgclip.db.models import ensure_model
from pgclip.db.search import SearchParams, search
from tests.conftest import make_settings
from tests.searchdata import add_image, low_rank_vectors, model

DIM = 64  # test-tiny
UTC = dt.UTC
README = Path(__file__).resolve().parents[2] / "README.md"
TABLES = ("images", "image_blobs", "captions", "embeddings", "embedding_jobs", "thumbnails", "models")


@pytest.fixture
def target_url(databases) -> Iterator[str]:
    """A second fresh database (migrated, test-tiny active, empty): where imports go."""
    url = databases.clone_template()
    yield url
    databases.drop(url)


def fill(conn: psycopg.Connection, n: int = 23, *, seed: int = 0, unembedded: int = 2) -> list[int]:
    """``n`` images with vectors, captions, metadata, dates and thumbnails, plus ``unembedded``
    images still waiting for a worker (a pending job, no vector). Returns the embedded ids."""
    rng = np.random.default_rng(seed)
    vectors, _ = low_rank_vectors(rng, n, DIM)
    words = ["dog", "cat", "beach", "mountain", "city", "forest"]
    ids = []
    for i in range(n):
        spec = add_image(
            conn, vector=vectors[i], width=300 + 10 * i, height=200 + 7 * (i % 5), format="JPEG",
            captions=[f"a {words[i % 6]} number {i}", f"{words[(i + 1) % 6]} at dusk"][: 1 + i % 2] if i % 4 else [],
            taken_at=dt.datetime(2024, 1, 1, tzinfo=UTC) + dt.timedelta(days=i) if i % 3 else None,
            metadata={"n": i, "tag": words[i % 3], "nested": {"odd": bool(i % 2)}, "ünï": "côde"},
        )
        ids.append(spec.id)
        if i % 2:
            conn.execute("INSERT INTO pgclip.thumbnails (image_id, width, height, data) VALUES (%s, 4, 3, %s)",
                         [spec.id, f"webp-{i}".encode()])
        conn.execute("INSERT INTO pgclip.embedding_jobs (image_id, model_id, state) VALUES (%s, %s, 'done')",
                     [spec.id, model(conn).id])
    for _ in range(unembedded):
        spec = add_image(conn, captions=["not embedded yet"])
        conn.execute("INSERT INTO pgclip.embedding_jobs (image_id, model_id) VALUES (%s, %s)", [spec.id, model(conn).id])
    conn.commit()
    return ids


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM pgclip.{t}").fetchone()[0] for t in TABLES}


def by_sha(conn: psycopg.Connection) -> dict[int, str]:
    return dict(conn.execute("SELECT id, sha256 FROM pgclip.images").fetchall())


def results(url: str, params: SearchParams) -> list[tuple]:
    """A search's hits named by sha256 (ids are each database's own), with every score."""
    with connect(url, role="test") as conn:
        names = by_sha(conn)
        page = search(conn, params)
    return [(names[h.image_id], round(h.score, 6), h.similarity and round(h.similarity, 6), h.text_rank,
             h.vector_rank, h.text_rank_position) for h in page.hits]


def image_facts(url: str) -> dict[str, tuple]:
    """What a search result or an image page shows, per sha256."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT i.sha256, i.source, i.byte_size, i.width, i.height, i.format, i.mime, i.taken_at, i.metadata,"
            "       ARRAY(SELECT text FROM pgclip.captions c WHERE c.image_id = i.id ORDER BY c.id),"
            "       e.embedding::text, t.data, t.width, t.height"
            " FROM pgclip.images i JOIN pgclip.embeddings e ON e.image_id = i.id"
            " LEFT JOIN pgclip.thumbnails t ON t.image_id = i.id").fetchall()
    return {r[0]: r[1:] for r in rows}


def rewrite_manifest(folder: Path, change) -> None:
    """Edit a set's manifest and refresh the sha256 of every file (a consistent set, as a
    person or another tool might write it)."""
    doc = json.loads((folder / MANIFEST).read_text())
    change(doc)
    for part in doc["parts"]:
        for entry in part["files"].values():
            entry["sha256"] = hashlib.sha256((folder / entry["path"]).read_bytes()).hexdigest()
    (folder / MANIFEST).write_text(json.dumps(doc))


# --- the layout ------------------------------------------------------------------------


def test_an_export_is_clip_retrieval_s_layout_with_a_manifest(db_url, conn, tmp_path):
    ids = fill(conn, 23)
    out = tmp_path / "set"

    report = export_parquet(db_url, out, rows_per_file=10)

    assert (report.rows, report.images, report.parts) == (23, 25, 3)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted([
        MANIFEST, *(f"img_emb/img_emb_{i}.npy" for i in range(3)),
        *(f"metadata/metadata_{i}.parquet" for i in range(3)), *(f"thumbnails/thumbnails_{i}.parquet" for i in range(3)),
    ])
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["model"] == {"name": "test-tiny", "pretrained": "random-seed-0", "dimension": DIM}
    assert (manifest["rows"], manifest["images_without_vector"], manifest["embedding_dtype"]) == (23, 2, "float32")
    assert [p["rows"] for p in manifest["parts"]] == [10, 10, 3]
    # Plain numpy and pyarrow read it: row r of img_emb_<i> is row r of metadata_<i>.
    vectors = np.concatenate([np.load(out / f"img_emb/img_emb_{i}.npy") for i in range(3)])
    meta = pa.concat_tables([pq.read_table(out / f"metadata/metadata_{i}.parquet") for i in range(3)]).to_pylist()
    assert vectors.dtype == np.float32 and vectors.shape == (23, DIM)
    assert [m["image_id"] for m in meta] == ids
    stored = dict(conn.execute("SELECT image_id, embedding FROM pgclip.embeddings").fetchall())
    for row, vector in zip(meta, vectors, strict=True):
        np.testing.assert_array_equal(vector, stored[row["image_id"]].to_numpy())
    first = meta[1]
    assert first["image_path"].startswith("img") and first["caption"] == "a cat number 1"
    assert first["captions"] == ["a cat number 1", "beach at dusk"]
    assert json.loads(first["metadata"]) == {"n": 1, "tag": "cat", "nested": {"odd": True}, "ünï": "côde"}
    assert first["taken_at"] == dt.datetime(2024, 1, 2, tzinfo=UTC) and meta[0]["taken_at"] is None
    assert (first["width"], first["format"], first["mime"]) == (310, "JPEG", "image/jpeg")
    thumbs = pq.read_table(out / "thumbnails/thumbnails_0.parquet").to_pylist()
    assert thumbs[1]["thumbnail"] == b"webp-1" and thumbs[0]["thumbnail"] is None


def test_the_readme_s_reading_example_runs_on_an_export(db_url, conn, tmp_path, monkeypatch):
    fill(conn, 4)
    export_parquet(db_url, tmp_path / "set")
    section = README.read_text().split("### Export and import (parquet)", 1)[1].split("\n## ", 1)[0]
    (example,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    monkeypatch.chdir(tmp_path / "set")
    scope: dict = {}
    exec(example, scope)
    assert scope["vectors"].shape == (4, DIM) and len(scope["rows"]) == 4
    assert scope["rows"][1]["captions"] == ["a cat number 1", "beach at dusk"]


def test_export_refuses_a_folder_that_is_not_empty_and_writes_nothing_there(db_url, conn, tmp_path):
    fill(conn, 3)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInput, match="not an empty folder"):
        export_parquet(db_url, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    with pytest.raises(InvalidInput, match="notes.txt is a file, not a folder"):
        export_parquet(db_url, tmp_path / "notes.txt")


def test_a_vector_far_from_unit_length_is_imported_as_its_direction(db_url, conn, target_url, tmp_path):
    """Another tool's set (or an edited one) may hold unnormalised vectors; one scaled by 1e30
    made NaN distances and an image no search could find."""
    fill(conn, 3, unembedded=0)
    folder = tmp_path / "set"
    export_parquet(db_url, folder)
    path = folder / "img_emb/img_emb_0.npy"
    vectors = np.load(path)
    scaled = vectors.copy()
    scaled[1] *= 1e30
    np.save(path, scaled)
    rewrite_manifest(folder, lambda d: None)

    import_parquet(target_url, folder, make_settings(target_url, tmp_path))

    with psycopg.connect(target_url) as t:
        stored = [np.array(json.loads(r[0]), dtype=np.float32) for r in
                  t.execute("SELECT embedding::text FROM pgclip.embeddings e JOIN pgclip.images i ON i.id = e.image_id"
                            " ORDER BY i.id")]
    assert np.allclose(stored[1], vectors[1], atol=1e-6)
    assert [s.tolist() for s in (stored[0], stored[2])] == [vectors[0].tolist(), vectors[2].tolist()]  # untouched
    hits = results(target_url, SearchParams(vector=vectors[1], k=1))
    assert hits[0][2] == pytest.approx(1.0, abs=1e-5)  # found, at similarity 1


# --- the round trip ---------------------------------------------------------------------


def test_a_round_trip_into_a_fresh_database_searches_the_same(db_url, conn, target_url, tmp_path):
    fill(conn, 23)
    export_parquet(db_url, tmp_path / "set", rows_per_file=10)

    report = import_parquet(target_url, tmp_path / "set", make_settings(target_url, tmp_path))

    c = report.counts
    assert (c.rows, c.images_added, c.images_present, c.vectors_added, c.vectors_kept) == (23, 23, 0, 23, 0)
    assert (report.model.label, report.registered, report.activated) == ("test-tiny (random-seed-0)", False, False)
    # Everything a result shows, equal image by image (vectors exactly).
    source_facts = image_facts(db_url)
    assert image_facts(target_url) == source_facts
    rng = np.random.default_rng(7)
    queries = [SearchParams(vector=q, k=10) for q in low_rank_vectors(rng, 3, DIM)[0]]
    queries += [SearchParams(caption_query="dog"), SearchParams(caption_query="dusk -cat", k=5),
                SearchParams(vector=queries[0].vector, caption_query="beach OR forest", k=8),
                SearchParams(vector=queries[1].vector, filters={"metadata": {"tag": "cat"}, "taken_after": "2024-01-05"}),
                SearchParams(vector=queries[2].vector, order="newest", k=20)]
    for params in queries:
        expected = results(db_url, params)
        assert expected and results(target_url, params) == expected, params
    # Nothing for a worker to do: each imported image has one done job, and no bytes.
    with psycopg.connect(target_url) as t:
        assert t.execute("SELECT state, count(*) FROM pgclip.embedding_jobs GROUP BY state").fetchall() == [("done", 23)]
        assert t.execute("SELECT count(*) FROM pgclip.image_blobs").fetchone()[0] == 0
    # Importing the same set again adds nothing.
    again = import_parquet(target_url, tmp_path / "set", make_settings(target_url, tmp_path)).counts
    assert (again.images_added, again.vectors_added, again.captions_added, again.jobs_done) == (0, 0, 0, 0)
    assert image_facts(target_url) == source_facts


def test_float16_and_no_thumbnails_round_trip_close_enough(db_url, conn, target_url, tmp_path):
    fill(conn, 12)
    export_parquet(db_url, tmp_path / "set", dtype="float16", thumbnails=False)
    assert np.load(tmp_path / "set/img_emb/img_emb_0.npy").dtype == np.float16
    assert not (tmp_path / "set/thumbnails").exists()

    import_parquet(target_url, tmp_path / "set", make_settings(target_url, tmp_path))

    query = SearchParams(vector=low_rank_vectors(np.random.default_rng(3), 1, DIM)[0][0], k=12)
    source, imported = results(db_url, query), results(target_url, query)
    assert [r[0] for r in imported[:3]] == [r[0] for r in source[:3]]
    assert [r[2] for r in imported] == pytest.approx([r[2] for r in source], abs=2e-3)
    assert counts(target_url)["thumbnails"] == 0


def test_a_model_new_to_the_database_is_registered_indexed_and_takes_over_an_unused_active_one(
        db_url, conn, target_url, tmp_path):
    alt = ensure_model(conn, "test-tiny-alt", "random-seed-0", 48)
    for i, v in enumerate(low_rank_vectors(np.random.default_rng(1), 5, 48)[0]):
        spec = add_image(conn, captions=[f"alt {i}"])
        conn.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)",
                     [spec.id, alt.id, v])
    conn.commit()
    export_parquet(db_url, tmp_path / "set", model_name="test-tiny-alt")

    report = import_parquet(target_url, tmp_path / "set", make_settings(target_url, tmp_path))

    assert (report.registered, report.activated, report.model.state, report.model.dimension) == (True, True, "active", 48)
    with psycopg.connect(target_url) as t:
        assert t.execute("SELECT to_regclass(%s) IS NOT NULL", [f"pgclip.embeddings_m{report.model.id}_vectors"]).fetchone()[0]
        assert t.execute("SELECT name, state FROM pgclip.models ORDER BY id").fetchall() == [
            ("test-tiny", "building"), ("test-tiny-alt", "active")]


def test_an_empty_model_exports_an_empty_set_that_imports_as_nothing(db_url, target_url, tmp_path):
    report = export_parquet(db_url, tmp_path / "set")
    assert (report.rows, report.parts) == (0, 0)
    before = counts(target_url)
    assert import_parquet(target_url, tmp_path / "set", make_settings(target_url, tmp_path)).counts.rows == 0
    assert counts(target_url) == before


# --- the merge rule ---------------------------------------------------------------------


def test_an_image_the_database_has_gains_only_what_it_lacks(db_url, conn, target_url, tmp_path):
    ids = fill(conn, 4, unembedded=0)
    export_parquet(db_url, tmp_path / "set")
    with psycopg.connect(db_url) as src:
        shas = [src.execute("SELECT sha256 FROM pgclip.images WHERE id = %s", [i]).fetchone()[0] for i in ids]
    own = np.eye(DIM, dtype=np.float32)[5]
    with connect(target_url, role="test") as t:
        tiny = model(t)
        # Image 1: here already, with its own source, metadata, caption and vector.
        one = t.execute(
            "INSERT INTO pgclip.images (sha256, source, byte_size, width, height, format, mime, metadata)"
            " VALUES (%s, 'mine.jpg', 1, 9, 9, 'PNG', 'image/png', '{\"tag\": \"mine\"}') RETURNING id", [shas[1]],
        ).fetchone()[0]
        t.execute("INSERT INTO pgclip.captions (image_id, text) VALUES (%s, 'beach at dusk')", [one])
        t.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)", [one, tiny.id, own])
        # Image 2: here, bytes stored, still waiting for a worker (a pending job, no vector).
        two = t.execute(
            "INSERT INTO pgclip.images (sha256, source, byte_size, width, height, format, mime)"
            " VALUES (%s, 'two.jpg', 1, 9, 9, 'JPEG', 'image/jpeg') RETURNING id", [shas[2]]).fetchone()[0]
        t.execute("INSERT INTO pgclip.image_blobs (image_id, data) VALUES (%s, 'bytes')", [two])
        t.execute("INSERT INTO pgclip.embedding_jobs (image_id, model_id) VALUES (%s, %s)", [two, tiny.id])
        t.commit()

    c = import_parquet(target_url, tmp_path / "set", make_settings(target_url, tmp_path)).counts

    assert (c.images_added, c.images_present, c.vectors_added, c.vectors_kept) == (2, 2, 3, 1)
    with psycopg.connect(target_url) as t:
        source, metadata, fmt = t.execute("SELECT source, metadata, format FROM pgclip.images WHERE id = %s", [one]).fetchone()
        assert (source, fmt) == ("mine.jpg", "PNG")  # its own values stay
        assert metadata == {"tag": "mine", "n": 1, "nested": {"odd": True}, "ünï": "côde"}  # keys it lacked added
        assert t.execute("SELECT array_agg(text ORDER BY id) FROM pgclip.captions WHERE image_id = %s",
                         [one]).fetchone()[0] == ["beach at dusk", "a cat number 1"]  # the one it lacked added
        assert t.execute("SELECT embedding::text FROM pgclip.embeddings WHERE image_id = %s", [one]).fetchone()[0] == \
            "[" + ",".join("1" if i == 5 else "0" for i in range(DIM)) + "]"  # its own vector kept
        assert t.execute("SELECT state FROM pgclip.embedding_jobs WHERE image_id = %s", [two]).fetchall() == [("done",)]
        assert t.execute("SELECT count(*) FROM pgclip.embeddings WHERE image_id = %s", [two]).fetchone()[0] == 1
        assert t.execute("SELECT count(*) FROM pgclip.image_blobs").fetchone()[0] == 1  # its bytes untouched


def add_video(conn: psycopg.Connection, frames: dict[int, float], *, name: str = "clip.mp4") -> str:
    """A video with its bytes, and ``frames`` (image id -> seconds) as its frames; its sha256."""
    sha = hashlib.sha256(name.encode()).hexdigest()
    video_id = conn.execute(
        "INSERT INTO pgclip.videos (sha256, source, byte_size, mime, container, duration_s, frame_interval_s,"
        " width, height) VALUES (%s, %s, 5, 'video/mp4', 'mp4', 12.5, 2.0, 640, 360) RETURNING id", [sha, name],
    ).fetchone()[0]
    conn.execute("INSERT INTO pgclip.video_blobs (video_id, data) VALUES (%s, 'bytes')", [video_id])
    for image_id, ts in frames.items():
        conn.execute("UPDATE pgclip.images SET video_id = %s, video_ts = %s WHERE id = %s", [video_id, ts, image_id])
    conn.commit()
    return sha


def frame_links(url: str) -> dict[str, tuple]:
    """Per image sha256: its video's sha256, the frame's time and the video's fields; pictures left out."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT i.sha256, v.sha256, i.video_ts, v.source, v.byte_size, v.mime, v.container, v.duration_s,"
            "       v.frame_interval_s, v.width, v.height"
            " FROM pgclip.images i JOIN pgclip.videos v ON v.id = i.video_id").fetchall()
    return {r[0]: r[1:] for r in rows}


def test_frames_keep_their_video_and_time_through_a_round_trip(db_url, conn, target_url, tmp_path):
    from pgclip.core.errors import NotFound
    from pgclip.db import videos as db_videos

    ids = fill(conn, 6, unembedded=0)
    add_video(conn, {ids[1]: 0.0, ids[2]: 2.0, ids[4]: 4.0})
    export_parquet(db_url, tmp_path / "set")
    rows = pq.read_table(tmp_path / "set/metadata/metadata_0.parquet").to_pylist()
    assert [r["video_ts"] for r in rows] == [None, 0.0, 2.0, None, 4.0, None]
    assert rows[2]["video"]["container"] == "mp4" and rows[0]["video"] is None

    c = import_parquet(target_url, tmp_path / "set", make_settings(target_url, tmp_path)).counts

    assert (c.videos_added, c.frames_linked) == (1, 3)
    assert frame_links(target_url) == frame_links(db_url) and len(frame_links(db_url)) == 3
    with connect(target_url, role="test") as t:  # the video came without its bytes, and says so
        (video_id,) = t.execute("SELECT id FROM pgclip.videos").fetchone()
        assert db_videos.video(t, video_id).frames == 3
        with pytest.raises(NotFound, match=f"video {video_id} has no stored bytes"):
            db_videos.stored_size(t, video_id)
    again = import_parquet(target_url, tmp_path / "set", make_settings(target_url, tmp_path)).counts
    assert (again.videos_added, again.frames_linked) == (0, 0)


def test_frames_join_a_video_the_database_has_and_an_image_keeps_its_own_video(db_url, conn, target_url, tmp_path):
    ids = fill(conn, 3, unembedded=0)
    sha = add_video(conn, {ids[0]: 0.0, ids[1]: 2.0, ids[2]: 4.0})
    export_parquet(db_url, tmp_path / "set")
    with psycopg.connect(db_url) as src:
        shas = [src.execute("SELECT sha256 FROM pgclip.images WHERE id = %s", [i]).fetchone()[0] for i in ids]
    with connect(target_url, role="test") as t:
        # The same video, with its bytes, and image 0 as a plain picture; image 2 a frame of another video.
        for n in (0, 2):
            t.execute("INSERT INTO pgclip.images (sha256, source, byte_size, width, height, format, mime)"
                      " VALUES (%s, %s, 1, 9, 9, 'JPEG', 'image/jpeg')", [shas[n], f"mine{n}.jpg"])
        t.commit()
        same = add_video(t, {}, name="clip.mp4")
        other = add_video(t, {}, name="other.mp4")
        t.execute("UPDATE pgclip.images SET video_id = (SELECT id FROM pgclip.videos WHERE sha256 = %s),"
                  " video_ts = 9 WHERE sha256 = %s", [other, shas[2]])
        t.commit()
    assert same == sha

    c = import_parquet(target_url, tmp_path / "set", make_settings(target_url, tmp_path)).counts

    # Image 2 stays a frame of the video it had; the set's video lists it as a shared frame.
    assert (c.videos_added, c.frames_linked, c.frames_shared) == (0, 2, 1)
    assert shared_links(target_url) == {(sha, shas[2], 4.0)}
    links = frame_links(target_url)
    assert (links[shas[0]][:2], links[shas[1]][:2], links[shas[2]][:2]) == ((sha, 0.0), (sha, 2.0), (other, 9.0))
    with psycopg.connect(target_url) as t:
        assert t.execute("SELECT count(*) FROM pgclip.video_blobs").fetchone()[0] == 2  # its bytes untouched


def share(conn: psycopg.Connection, video_sha: str, frames: dict[int, float]) -> None:
    """``frames`` (image id -> seconds), owned by another video or pictures, shared by this one."""
    for image_id, ts in frames.items():
        conn.execute("INSERT INTO pgclip.shared_frames (video_id, image_id, video_ts)"
                     " SELECT id, %s, %s FROM pgclip.videos WHERE sha256 = %s", [image_id, ts, video_sha])
    conn.commit()


def shared_links(url: str) -> set[tuple[str, str, float]]:
    with psycopg.connect(url) as conn:
        return set(conn.execute(
            "SELECT v.sha256, i.sha256, s.video_ts FROM pgclip.shared_frames s"
            " JOIN pgclip.videos v ON v.id = s.video_id JOIN pgclip.images i ON i.id = s.image_id").fetchall())


def test_frames_two_videos_share_keep_both_videos_through_a_round_trip(db_url, conn, target_url, tmp_path):
    """A frame stored once for two videos (a black frame, the same film in two containers):
    the video that owns none of its frames comes through, with its frames, and deleting the
    owner hands them over as it did in the exporting database."""
    from pgclip.db import videos as db_videos

    ids = fill(conn, 4, unembedded=0)
    film = add_video(conn, {ids[0]: 0.0, ids[1]: 2.0}, name="film.mp4")
    remux = add_video(conn, {}, name="film.mkv")  # every frame is film.mp4's
    other = add_video(conn, {ids[2]: 0.0}, name="other.mp4")
    share(conn, remux, {ids[0]: 0.0, ids[1]: 2.0})
    share(conn, other, {ids[0]: 6.0, ids[3]: 8.0})  # a frame of film.mp4 and a picture
    export_parquet(db_url, tmp_path / "set")
    rows = pq.read_table(tmp_path / "set/metadata/metadata_0.parquet").to_pylist()
    assert [sorted(s["video"]["source"] for s in r["shared_videos"]) for r in rows] == [
        ["film.mkv", "other.mp4"], ["film.mkv"], [], ["other.mp4"]]

    c = import_parquet(target_url, tmp_path / "set", make_settings(target_url, tmp_path)).counts

    assert (c.videos_added, c.frames_linked, c.frames_shared) == (3, 3, 4)
    assert shared_links(target_url) == shared_links(db_url) and len(shared_links(db_url)) == 4
    assert frame_links(target_url) == frame_links(db_url)
    again = import_parquet(target_url, tmp_path / "set", make_settings(target_url, tmp_path)).counts
    assert (again.videos_added, again.frames_linked, again.frames_shared) == (0, 0, 0)
    with connect(target_url, role="test") as t:
        frames = {sha: db_videos.video(t, t.execute("SELECT id FROM pgclip.videos WHERE sha256 = %s",
                                                    [sha]).fetchone()[0]).frames for sha in (film, remux, other)}
        assert frames == {film: 2, remux: 2, other: 3}
        t.execute("DELETE FROM pgclip.videos WHERE sha256 = %s", [film])
        t.commit()
        assert t.execute("SELECT count(*) FROM pgclip.images").fetchone()[0] == 4  # handed over, not deleted
        video_ids = dict(t.execute("SELECT sha256, id FROM pgclip.videos").fetchall())
        assert {sha: db_videos.video(t, video_ids[sha]).frames for sha in (remux, other)} == {remux: 2, other: 3}


def test_a_set_without_video_columns_imports_its_frames_as_pictures(db_url, conn, target_url, tmp_path):
    """A set written before frames kept their video (or by another tool) has no video columns."""
    ids = fill(conn, 3, unembedded=0)
    add_video(conn, {ids[1]: 2.0})
    folder = tmp_path / "set"
    export_parquet(db_url, folder)
    path = folder / "metadata/metadata_0.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["video", "video_ts", "shared_videos"]), path)
    rewrite_manifest(folder, lambda d: None)

    c = import_parquet(target_url, folder, make_settings(target_url, tmp_path)).counts

    assert (c.images_added, c.videos_added, c.frames_linked) == (3, 0, 0) and frame_links(target_url) == {}


# --- refusals: one line, nothing written --------------------------------------------------


def test_a_model_mismatch_is_refused(db_url, conn, target_url, tmp_path):
    fill(conn, 3)
    export_parquet(db_url, tmp_path / "set")
    before = counts(target_url)
    with pytest.raises(ConfigError, match=r"model mismatch: .* holds vectors of test-tiny \(random-seed-0\), not ViT-B-32"):
        import_parquet(target_url, tmp_path / "set", make_settings(target_url, tmp_path), model_name="ViT-B-32")
    assert counts(target_url) == before


def test_a_dimension_mismatch_is_refused(db_url, conn, target_url, tmp_path):
    fill(conn, 3)
    export_parquet(db_url, tmp_path / "set")
    # The set's 64-d vectors relabelled as test-tiny-alt's, which has 48 dimensions.
    rewrite_manifest(tmp_path / "set", lambda d: d["model"].update(name="test-tiny-alt"))
    before = counts(target_url)
    with pytest.raises(ConfigError, match="dimension mismatch: .* 64-dimensional vectors, but open_clip's config gives "
                                          r"test-tiny-alt \(random-seed-0\) 48"):
        import_parquet(target_url, tmp_path / "set", make_settings(target_url, tmp_path))
    assert counts(target_url) == before
    # The same when the database already registers the model.
    with connect(target_url, role="test") as t:
        ensure_model(t, "test-tiny-alt", "random-seed-0", 48)
    before = counts(target_url)
    with pytest.raises(ConfigError, match="but this database registers test-tiny-alt .* 48 dimensions"):
        import_parquet(target_url, tmp_path / "set", make_settings(target_url, tmp_path))
    assert counts(target_url) == before


def test_an_unknown_model_is_refused(db_url, conn, target_url, tmp_path):
    fill(conn, 2)
    export_parquet(db_url, tmp_path / "set")
    rewrite_manifest(tmp_path / "set", lambda d: d["model"].update(name="no-such-model", pretrained="x"))
    before = counts(target_url)
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-model'"):
        import_parquet(target_url, tmp_path / "set", make_settings(target_url, tmp_path))
    assert counts(target_url) == before


@pytest.mark.parametrize("damage, message", [
    ("truncate npy", "img_emb_1.npy: its sha256 differs from the manifest's"),
    ("flip parquet byte", "metadata_0.parquet: its sha256 differs from the manifest's"),
    ("truncate npy, manifest refreshed", "img_emb_1.npy: not a readable .npy file"),
    ("garbage parquet, manifest refreshed", "metadata_1.parquet: not a readable parquet file"),
    ("remove manifest", "holds no pgclip export"),
    ("remove thumbnails", "thumbnails_0.parquet: missing"),
    ("manifest not JSON", "pgclip-export.json: unreadable"),
    ("path outside", "lies outside the folder"),
])
def test_a_corrupt_or_truncated_set_is_refused_before_anything_is_written(
        db_url, conn, target_url, tmp_path, damage, message):
    fill(conn, 9)
    folder = tmp_path / "set"
    export_parquet(db_url, folder, rows_per_file=5)
    npy, parquet = folder / "img_emb/img_emb_1.npy", folder / "metadata/metadata_0.parquet"
    if damage.startswith("truncate npy"):
        npy.write_bytes(npy.read_bytes()[:-100])
    elif damage == "flip parquet byte":
        data = bytearray(parquet.read_bytes())
        data[len(data) // 2] ^= 0xFF
        parquet.write_bytes(bytes(data))
    elif damage.startswith("garbage parquet"):
        (folder / "metadata/metadata_1.parquet").write_bytes(b"PAR1 not really")
    elif damage == "remove manifest":
        (folder / MANIFEST).unlink()
    elif damage == "remove thumbnails":
        (folder / "thumbnails/thumbnails_0.parquet").unlink()
    elif damage == "manifest not JSON":
        (folder / MANIFEST).write_text('{"format": "pgclip-export", ')
    elif damage == "path outside":
        doc = json.loads((folder / MANIFEST).read_text())
        doc["parts"][0]["files"]["img_emb"]["path"] = "../../etc/passwd"
        (folder / MANIFEST).write_text(json.dumps(doc))
    if "manifest refreshed" in damage:
        rewrite_manifest(folder, lambda d: None)
    before = counts(target_url)

    with pytest.raises(InvalidInput, match=message) as caught:
        import_parquet(target_url, folder, make_settings(target_url, tmp_path))

    assert "\n" not in str(caught.value)
    assert counts(target_url) == before


def test_a_bad_row_in_a_later_part_rolls_the_whole_import_back(db_url, conn, target_url, tmp_path):
    """Files that match their manifest but hold a row the database cannot take (a person
    edited a part and refreshed the manifest): the first parts were already written in
    the import's transaction, and all of it is rolled back."""
    fill(conn, 9)
    folder = tmp_path / "set"
    export_parquet(db_url, folder, rows_per_file=4)
    path = folder / "metadata/metadata_2.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    rows[0]["sha256"] = "not-a-sha"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    rewrite_manifest(folder, lambda d: None)
    before = counts(target_url)

    with pytest.raises(InvalidInput, match=r"metadata_2.parquet row 0: sha256 is not 64 lowercase hex digits"):
        import_parquet(target_url, folder, make_settings(target_url, tmp_path))

    assert counts(target_url) == before


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: r.update(video=None), "video and video_ts go together"),
    (lambda r: r.update(video_ts=-1.0), "video_ts -1.0 is not a time"),
    (lambda r: r["video"].update(sha256="x"), "the video's sha256 is not 64 lowercase hex digits"),
    (lambda r: r["video"].update(frame_interval_s=0.0), "the video's frame_interval_s 0.0 is not > 0"),
    (lambda r: r["video"].update(width=0), "the video's width 0 is not a positive integer"),
    (lambda r: r["video"].update(container=None), "the video's mime or container is missing"),
])
def test_a_bad_frame_row_is_refused_naming_it_and_nothing_is_written(db_url, conn, target_url, tmp_path, edit, message):
    ids = fill(conn, 2, unembedded=0)
    add_video(conn, {ids[0]: 1.0, ids[1]: 3.0})
    folder = tmp_path / "set"
    export_parquet(db_url, folder)
    path = folder / "metadata/metadata_0.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    edit(rows[1])
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    rewrite_manifest(folder, lambda d: None)
    before = counts(target_url)

    with pytest.raises(InvalidInput, match=re.escape(f"metadata_0.parquet row 1: {message}")):
        import_parquet(target_url, folder, make_settings(target_url, tmp_path))

    assert counts(target_url) == before and frame_links(target_url) == {}


@pytest.mark.parametrize(("texts", "expected"), [
    (["2024-05-01T12:30:00+02:00", "2024-05-02", None],
     [dt.datetime(2024, 5, 1, 10, 30, tzinfo=dt.UTC), dt.datetime(2024, 5, 2, tzinfo=dt.UTC), None]),
    (["yesterday", "2024-05-02", None], "row 0: taken_at is not a date and time (ISO 8601"),
    (["2024-05-01", "2024-13-45", None], "row 1: taken_at is not a date and time (ISO 8601"),
    (["2024-05-01", "9999-12-31T23:59:59-12:00", None], "row 1: taken_at must lie between 0001-01-02 and 9999-12-30"),
])
def test_a_taken_at_column_of_text_is_read_as_iso_8601_or_refused(db_url, conn, target_url, tmp_path, texts, expected):
    """Another tool's set may carry its dates as text: ISO 8601 is read (naive as UTC), anything else
    is refused, naming the row, never handed to PostgreSQL to read 'yesterday' as a day."""
    fill(conn, 3, unembedded=0)
    folder = tmp_path / "set"
    export_parquet(db_url, folder)
    path = folder / "metadata/metadata_0.parquet"
    table = pq.read_table(path)
    column = table.schema.get_field_index("taken_at")
    table = table.set_column(column, "taken_at", pa.array(texts, pa.string()))
    pq.write_table(table, path)
    rewrite_manifest(folder, lambda d: None)
    before = counts(target_url)
    if isinstance(expected, str):
        with pytest.raises(InvalidInput, match=re.escape(f"metadata_0.parquet {expected}")):
            import_parquet(target_url, folder, make_settings(target_url, tmp_path))
        assert counts(target_url) == before
        return
    import_parquet(target_url, folder, make_settings(target_url, tmp_path))
    shas = table.column("sha256").to_pylist()
    with psycopg.connect(target_url) as target:
        stored = dict(target.execute("SELECT sha256, taken_at FROM pgclip.images").fetchall())
    assert [stored[sha] for sha in shas] == expected


def test_a_new_model_s_failed_import_leaves_no_model_behind(db_url, conn, target_url, tmp_path):
    alt = ensure_model(conn, "test-tiny-alt", "random-seed-0", 48)
    for v in low_rank_vectors(np.random.default_rng(2), 3, 48)[0]:
        spec = add_image(conn)
        conn.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)",
                     [spec.id, alt.id, v])
    conn.commit()
    folder = tmp_path / "set"
    export_parquet(db_url, folder, model_name="test-tiny-alt")
    vectors = np.load(folder / "img_emb/img_emb_0.npy")
    vectors[2] = np.nan
    np.save(folder / "img_emb/img_emb_0.npy", vectors)
    rewrite_manifest(folder, lambda d: None)
    before = counts(target_url)

    with pytest.raises(InvalidInput, match="img_emb_0.npy row 2: the vector is zero or not finite"):
        import_parquet(target_url, folder, make_settings(target_url, tmp_path))

    assert counts(target_url) == before


def test_export_reads_one_snapshot(db_url, conn, tmp_path, monkeypatch):
    """Rows added while an export runs are not in it, and the manifest's count is the rows
    written: the export reads one repeatable-read snapshot, a batch at a time."""
    from pgclip.application import exchange

    fill(conn, 7, unembedded=0)
    monkeypatch.setattr(exchange, "BATCH_ROWS", 2)
    real_rows = exchange.db.export_rows
    added = []

    def rows_with_a_writer_between_batches(*args, **kwargs):
        for batch in real_rows(*args, **kwargs):
            yield batch
            if not added:
                added.append(add_image(conn, vector=np.eye(DIM, dtype=np.float32)[0]))
                conn.commit()

    monkeypatch.setattr(exchange.db, "export_rows", rows_with_a_writer_between_batches)
    report = export_parquet(db_url, tmp_path / "set", rows_per_file=3)

    assert added and report.rows == 7
    meta = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "set/metadata").iterdir())])
    assert meta.num_rows == 7 and added[0].id not in meta.column("image_id").to_pylist()

