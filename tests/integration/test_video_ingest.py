"""Videos through ``ingest()`` on a real PostgreSQL: frames become queued images that know their
video and time, the workers embed them unchanged, a damaged video stores nothing, and deleting a
video takes its frames with it."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from PIL import Image

from pgclip.db import videos as db_videos
from pgclip.db.models import active_model
from pgclip.workers.encoder import ClipEncoder
from pgclip.workers.ingest import ingest
from pgclip.workers.loop import Worker
from pgclip.workers.video import VideoOptions
from tests.images import jpeg_bytes
from tests.videos import video_bytes, write_video


@pytest.fixture
def model(conn):
    found = active_model(conn)
    conn.commit()  # ingest's batches commit only outside a caller's transaction
    return found


def frames(conn) -> list[tuple[str, float, int, str]]:
    """(video source, time, image bytes length, job state) of every frame, in order."""
    return conn.execute(
        "SELECT v.source, i.video_ts, octet_length(b.data), j.state FROM pgclip.images i"
        " JOIN pgclip.videos v ON v.id = i.video_id JOIN pgclip.image_blobs b ON b.image_id = i.id"
        " JOIN pgclip.embedding_jobs j ON j.image_id = i.id ORDER BY v.source, i.video_ts"
    ).fetchall()


def counts(conn) -> tuple[int, int, int, int]:
    return conn.execute(
        "SELECT (SELECT count(*) FROM pgclip.videos), (SELECT count(*) FROM pgclip.video_blobs),"
        " (SELECT count(*) FROM pgclip.images), (SELECT count(*) FROM pgclip.embedding_jobs)"
    ).fetchone()


def test_a_folder_with_videos_stores_each_frame_as_a_queued_image_that_knows_its_video(conn, model, tmp_path):
    clip = write_video(tmp_path / "shows", "episode.webm", 1, seconds=12)
    write_video(tmp_path / "shows", "trailer.mp4", 2, fmt="mp4", seconds=7)
    (tmp_path / "shows" / "photo.jpg").write_bytes(jpeg_bytes(3))
    report = ingest(conn, [tmp_path / "shows"], model_id=model.id)
    assert not report.rejected
    assert (report.added, report.videos_added, report.frames_added, report.enqueued) == (1, 2, 5, 6)
    episode, trailer = str(tmp_path / "shows" / "episode.webm"), str(tmp_path / "shows" / "trailer.mp4")
    stored = frames(conn)
    assert [(s, ts, state) for s, ts, _, state in stored] == [
        (episode, 0.0, "pending"), (episode, 5.0, "pending"), (episode, 10.0, "pending"),
        (trailer, 0.0, "pending"), (trailer, 5.0, "pending")]
    # Each frame is an image as any other: a JPEG at the video's size, its source the video's path.
    image_id, data = conn.execute(
        "SELECT i.id, b.data FROM pgclip.images i JOIN pgclip.image_blobs b ON b.image_id = i.id"
        " WHERE i.source = %s AND i.video_ts = 5", [episode]).fetchone()
    assert Image.open(io.BytesIO(data)).size == (64, 48)
    assert conn.execute("SELECT format, mime, width, height, sha256 FROM pgclip.images WHERE id = %s",
                        [image_id]).fetchone() == ("JPEG", "image/jpeg", 64, 48, hashlib.sha256(data).hexdigest())
    # The original stays in the database, byte for byte.
    video_id = db_videos.frames_of(conn, [image_id])[image_id].video_id
    assert db_videos.read_range(conn, video_id, 0, 10**9) == clip.read_bytes()
    assert db_videos.video(conn, video_id).frames == 3


def test_ingesting_the_same_videos_again_adds_nothing(conn, model, tmp_path):
    write_video(tmp_path, "a.mkv", 4, fmt="matroska")
    first = ingest(conn, [tmp_path], model_id=model.id)
    before = counts(conn)
    again = ingest(conn, [tmp_path], model_id=model.id)
    assert (first.videos_added, again.videos_added, again.videos_present, again.enqueued) == (1, 0, 1, 0)
    assert counts(conn) == before


def test_a_damaged_video_is_rejected_with_its_reason_and_nothing_of_it_is_stored(conn, model, tmp_path):
    good = video_bytes(5, fmt="webm", seconds=20)
    (tmp_path / "cut.webm").write_bytes(good[: len(good) // 2])  # frames at 0 and 5 s stored, then the end: rolled back
    (tmp_path / "random.mp4").write_bytes(hashlib.sha512(b"x").digest() * 80)
    (tmp_path / "empty.avi").write_bytes(b"")
    write_video(tmp_path, "fine.avi", 6, fmt="avi", seconds=3)
    report = ingest(conn, [tmp_path], model_id=model.id)
    reasons = {path.rsplit("/", 1)[1]: reason for path, reason in report.rejected}
    assert reasons == {
        "cut.webm": reasons["cut.webm"], "random.mp4": "not a video (not an MP4, MOV, WebM, Matroska or AVI file)",
        "empty.avi": "empty file"}
    assert reasons["cut.webm"].startswith("truncated video (its frames end at ")
    assert reasons["cut.webm"].endswith(" s of the 20.0 s it declares)")
    assert (report.videos_added, report.frames_added) == (1, 1)
    assert counts(conn) == (1, 1, 1, 1)  # fine.avi and its one frame, nothing of the others


def test_the_frame_interval_is_the_callers_and_each_frame_is_dated_from_the_videos_creation_time(conn, model, tmp_path):
    write_video(tmp_path, "phone.mov", 7, fmt="mov", seconds=5, creation_time="2024-05-01T12:00:00.000000Z")
    ingest(conn, [tmp_path], model_id=model.id, video=VideoOptions(frame_interval=2))
    rows = conn.execute("SELECT video_ts, taken_at FROM pgclip.images ORDER BY video_ts").fetchall()
    assert [(ts, taken.isoformat()) for ts, taken in rows] == [
        (0.0, "2024-05-01T12:00:00+00:00"), (2.0, "2024-05-01T12:00:02+00:00"), (4.0, "2024-05-01T12:00:04+00:00")]
    assert conn.execute("SELECT frame_interval_s, container, mime FROM pgclip.videos").fetchone() == (
        2.0, "mov", "video/quicktime")


def test_a_frame_equal_to_a_stored_image_is_not_stored_twice(conn, model, tmp_path):
    """Two videos that open on the same picture: the second's first frame is the first's."""
    import av

    def still(seconds: int, then_seed: int) -> bytes:
        from tests.videos import picture

        buf = io.BytesIO()
        with av.open(buf, "w", format="matroska") as out:
            stream = out.add_stream("mpeg4", rate=1)
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
            stream.options = {"qscale": "2"}
            for second in range(seconds):
                pixels = picture(0 if second < 5 else then_seed, (64, 48))
                for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        return buf.getvalue()

    (tmp_path / "one.mkv").write_bytes(still(7, 11))
    (tmp_path / "two.mkv").write_bytes(still(7, 12))
    report = ingest(conn, [tmp_path], model_id=model.id)
    assert (report.videos_added, report.frames_added) == (2, 3), report.rejected
    by_video = conn.execute("SELECT v.source, array_agg(i.video_ts ORDER BY i.video_ts) FROM pgclip.videos v"
                            " LEFT JOIN pgclip.images i ON i.video_id = v.id GROUP BY v.source ORDER BY v.source"
                            ).fetchall()
    assert [(s.rsplit("/", 1)[1], ts) for s, ts in by_video] == [("one.mkv", [0.0, 5.0]), ("two.mkv", [5.0])]
    # The second video shares the first's opening frame: it lists it, at its own time.
    one, two = (r[0] for r in conn.execute("SELECT id FROM pgclip.videos ORDER BY source"))
    opening = db_videos.frame_ids(conn, one)[0]
    assert db_videos.frame_ids(conn, two)[0] == opening and len(db_videos.frame_ids(conn, two)) == 2
    assert (db_videos.video(conn, one).frames, db_videos.video(conn, two).frames) == (2, 2)


def _remuxed(seed: int) -> tuple[bytes, bytes]:
    """One film in two containers: different files whose frames decode to the same pictures."""
    import av

    first = video_bytes(seed, fmt="matroska", seconds=11)
    out = io.BytesIO()
    with av.open(io.BytesIO(first)) as src, av.open(out, "w", format="mp4") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    return first, out.getvalue()


def test_a_video_whose_frames_another_video_has_keeps_them_when_that_video_is_deleted(conn, db_url, model, tmp_path):
    """The same film as .mkv and .mp4: the second shares every frame of the first; deleting the
    first hands them over (vectors, time, source) instead of leaving the second with nothing."""
    mkv, mp4 = _remuxed(21)
    (tmp_path / "a.mkv").write_bytes(mkv)
    (tmp_path / "b.mp4").write_bytes(mp4)
    (tmp_path / "still.jpg").write_bytes(jpeg_bytes(3))
    report = ingest(conn, [tmp_path], model_id=model.id)
    assert (report.videos_added, report.frames_added) == (2, 3), report.rejected  # frames at 0, 5 and 10 s
    a, b = (r[0] for r in conn.execute("SELECT id FROM pgclip.videos ORDER BY source"))
    assert db_videos.frame_ids(conn, b) == db_videos.frame_ids(conn, a) and db_videos.video(conn, b).frames == 3
    encoder = ClipEncoder("test-tiny", "random")
    encoder.load()
    Worker(db_url, encoder=encoder, model=model, batch_size=8, lease_seconds=30, max_attempts=3,
           model_threads=1).run(until_empty=True)
    frames_of_a = db_videos.frame_ids(conn, a)
    with conn.transaction():
        assert db_videos.delete_videos(conn, [a]) == {a}
    assert db_videos.frame_ids(conn, b) == frames_of_a
    owner = conn.execute("SELECT DISTINCT video_id, source FROM pgclip.images WHERE id = ANY(%s)",
                         [frames_of_a]).fetchall()
    assert owner == [(b, str(tmp_path / "b.mp4"))]
    assert conn.execute("SELECT count(*) FROM pgclip.embeddings WHERE image_id = ANY(%s)",
                        [frames_of_a]).fetchone()[0] == 3  # still searchable: nothing to embed again
    assert conn.execute("SELECT count(*) FROM pgclip.shared_frames").fetchone()[0] == 0
    with conn.transaction():
        assert db_videos.delete_videos(conn, [b]) == {b}
    assert conn.execute("SELECT count(*), count(*) FILTER (WHERE video_id IS NULL) FROM pgclip.images"
                        ).fetchone() == (1, 1)  # the still picture alone


def test_a_frame_that_is_a_stored_picture_is_listed_and_the_picture_outlives_the_video(conn, model, tmp_path):
    """A picture ingested first, then a video whose frame has its bytes: the video lists the
    picture among its frames; deleting the video leaves the picture, and its metadata, alone."""
    clip = tmp_path / "clip"
    write_video(clip, "clip.webm", 8, seconds=6)
    first = ingest(conn, [clip], model_id=model.id)
    assert first.frames_added == 2
    video_id = conn.execute("SELECT id FROM pgclip.videos").fetchone()[0]
    frame_bytes = conn.execute(
        "SELECT b.data FROM pgclip.images i JOIN pgclip.image_blobs b ON b.image_id = i.id"
        " WHERE i.video_id = %s ORDER BY i.video_ts LIMIT 1", [video_id]).fetchone()[0]
    with conn.transaction():
        assert db_videos.delete_videos(conn, [video_id]) == {video_id}
    (tmp_path / "pictures").mkdir()
    (tmp_path / "pictures" / "frame.jpg").write_bytes(bytes(frame_bytes))
    (tmp_path / "captions.jsonl").write_text(
        json.dumps({"path": "pictures/frame.jpg", "metadata": {"kind": "picture"}}) + "\n"
        + json.dumps({"path": "clip/clip.webm", "metadata": {"kind": "video"}}) + "\n")
    from pgclip.workers.manifest import load_manifest

    report = ingest(conn, [tmp_path / "pictures", clip], model_id=model.id,
                    manifest=load_manifest(tmp_path / "captions.jsonl"))
    assert (report.added, report.videos_added, report.frames_added) == (1, 1, 1), report.rejected
    video_id = conn.execute("SELECT id FROM pgclip.videos").fetchone()[0]
    picture = conn.execute("SELECT id FROM pgclip.images WHERE video_id IS NULL").fetchone()[0]
    assert db_videos.frame_ids(conn, video_id)[0] == picture and db_videos.video(conn, video_id).frames == 2
    assert conn.execute("SELECT metadata->>'kind' FROM pgclip.images WHERE id = %s", [picture]).fetchone()[0] \
        == "picture"  # the video's manifest entry describes its own frames, not the picture
    with conn.transaction():
        db_videos.delete_videos(conn, [video_id])
    assert conn.execute("SELECT id, video_id FROM pgclip.images").fetchall() == [(picture, None)]


def test_frames_are_embedded_by_the_unchanged_workers_and_deleting_the_video_takes_everything(
        conn, db_url, model, tmp_path):
    write_video(tmp_path, "clip.webm", 8, seconds=11)
    (tmp_path / "photo.jpg").write_bytes(jpeg_bytes(9))
    (tmp_path / "captions.jsonl").write_text(json.dumps(
        {"path": "clip.webm", "captions": ["a cartoon chase"], "metadata": {"show": "demo"}}) + "\n")
    from pgclip.workers.manifest import load_manifest

    report = ingest(conn, [tmp_path], model_id=model.id, manifest=load_manifest(tmp_path / "captions.jsonl"))
    assert report.captions_added == 3 and not report.manifest_missing
    encoder = ClipEncoder("test-tiny", "random")
    encoder.load()
    Worker(db_url, encoder=encoder, model=model, batch_size=8, lease_seconds=30, max_attempts=3,
           model_threads=1).run(until_empty=True)
    assert conn.execute("SELECT count(*) FROM pgclip.embeddings").fetchone()[0] == 4
    assert conn.execute("SELECT count(*) FROM pgclip.thumbnails").fetchone()[0] == 4
    assert conn.execute("SELECT count(*) FROM pgclip.images WHERE metadata->>'show' = 'demo'").fetchone()[0] == 3
    video_id = conn.execute("SELECT id FROM pgclip.videos").fetchone()[0]
    with conn.transaction():
        assert db_videos.delete_videos(conn, [video_id]) == {video_id}
    left = conn.execute(
        "SELECT (SELECT count(*) FROM pgclip.images), (SELECT count(*) FROM pgclip.embeddings),"
        " (SELECT count(*) FROM pgclip.embedding_jobs), (SELECT count(*) FROM pgclip.captions),"
        " (SELECT count(*) FROM pgclip.video_blobs), (SELECT count(*) FROM pgclip.image_blobs)").fetchone()
    assert left == (1, 1, 1, 0, 0, 1)  # the photo alone


def test_a_frame_row_must_name_both_its_video_and_its_time(conn):
    import psycopg

    with pytest.raises(psycopg.errors.CheckViolation, match="images_video_frame_check"):
        conn.execute("INSERT INTO pgclip.images (sha256, byte_size, width, height, format, mime, video_ts)"
                     " VALUES (repeat('c', 64), 1, 1, 1, 'JPEG', 'image/jpeg', 5)")
