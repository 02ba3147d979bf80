"""`pgclip sync` on real folders changed between syncs, against a real PostgreSQL: files added,
edited in place, moved, renamed into a subfolder, deleted, odd names, files that are not
images, --dry-run and --keep-missing; what each leaves in the database."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from pgclip.application.sync import SyncReport, sync_root
from pgclip.application.sync_apply import sync
from pgclip.core.errors import InvalidInput
from pgclip.db.engine import connect
from pgclip.db.models import active_model
from pgclip.workers.ingest import ingest
from tests.images import jpeg_bytes, write_jpegs
from tests.unit.test_ingest_files import LATIN1, under


def run_sync(db_url: str, folder: Path, **options) -> SyncReport:
    with connect(db_url, role="test", autocommit=True) as conn:
        return sync(conn, sync_root(folder), model_id=active_model(conn).id, **options)


def rows(db_url: str, sql: str, args: list | None = None) -> list[tuple]:
    with connect(db_url, role="test", autocommit=True) as conn:
        cur = conn.execute(sql, args or [])
        return cur.fetchall() if cur.description else []


def image_of(db_url: str, path: Path) -> int | None:
    found = rows(db_url, "SELECT image_id FROM pgclip.files WHERE path_bytes = %s", [os.fsencode(path)])
    return found[0][0] if found else None


def count(db_url: str, table: str) -> int:
    return rows(db_url, f"SELECT count(*) FROM pgclip.{table}")[0][0]


def give_vectors(db_url: str) -> None:
    """Every image gets a vector and a done job, as a worker would leave them."""
    with connect(db_url, role="test", autocommit=True) as conn:
        model = active_model(conn)
        for (image_id,) in conn.execute("SELECT id FROM pgclip.images").fetchall():
            vector = np.zeros(model.dimension, dtype=np.float32)
            vector[image_id % model.dimension] = 1
            conn.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)"
                         " ON CONFLICT DO NOTHING", [image_id, model.id, vector])
            conn.execute("INSERT INTO pgclip.thumbnails (image_id, width, height, data) VALUES (%s, 1, 1, 'x')"
                         " ON CONFLICT DO NOTHING", [image_id])
        conn.execute("UPDATE pgclip.embedding_jobs SET state = 'done' WHERE state = 'pending'")


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    write_jpegs(folder, 3)
    write_jpegs(folder / "2024", 2, start=10)
    return folder


def test_a_first_sync_adds_every_image_and_an_unchanged_folder_is_not_read_again(db_url, photos):
    first = run_sync(db_url, photos)
    assert (len(first.added), first.unchanged, first.changes) == (5, 0, 5)
    assert count(db_url, "images") == 5 and count(db_url, "files") == 5
    assert rows(db_url, "SELECT count(*) FROM pgclip.embedding_jobs WHERE state = 'pending'") == [(5,)]
    sources = {r[0] for r in rows(db_url, "SELECT source FROM pgclip.images")}
    assert str(photos / "2024" / "img0010.jpg") in sources  # absolute paths

    # Other bytes behind the same size and mtime: the quick scan trusts the stat and reads nothing.
    path = photos / "img0000.jpg"
    st = path.stat()
    path.write_bytes(bytes(st.st_size))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = run_sync(db_url, photos)
    assert (again.changes, again.unchanged, again.rejected) == (0, 5, [])


def test_a_file_edited_in_place_is_the_same_image_with_new_bytes_and_no_old_vector(db_url, photos):
    run_sync(db_url, photos)
    give_vectors(db_url)
    path = photos / "img0001.jpg"
    image_id = image_of(db_url, path)
    rows(db_url, "INSERT INTO pgclip.captions (image_id, text) VALUES (%s, 'my dog')", [image_id])
    rows(db_url, "UPDATE pgclip.images SET metadata = '{\"album\": \"home\"}' WHERE id = %s", [image_id])
    path.write_bytes(jpeg_bytes(501, (120, 80)))

    report = run_sync(db_url, photos)
    assert report.updated == [str(path)] and not report.added
    assert image_of(db_url, path) == image_id  # the same image: not a second one
    assert count(db_url, "images") == 5
    sha, width, metadata = rows(db_url, "SELECT sha256, width, metadata FROM pgclip.images WHERE id = %s",
                                [image_id])[0]
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest() and width == 120
    assert metadata["album"] == "home"
    assert rows(db_url, "SELECT text FROM pgclip.captions WHERE image_id = %s", [image_id]) == [("my dog",)]
    assert rows(db_url, "SELECT data FROM pgclip.image_blobs WHERE image_id = %s", [image_id])[0][0] == \
        path.read_bytes()
    # The old vector and thumbnail are gone and the image is queued again; the others keep theirs.
    assert rows(db_url, "SELECT count(*) FROM pgclip.embeddings WHERE image_id = %s", [image_id]) == [(0,)]
    assert rows(db_url, "SELECT count(*) FROM pgclip.thumbnails WHERE image_id = %s", [image_id]) == [(0,)]
    assert rows(db_url, "SELECT state FROM pgclip.embedding_jobs WHERE image_id = %s ORDER BY id DESC LIMIT 1",
                [image_id]) == [("pending",)]
    assert count(db_url, "embeddings") == 4


def test_a_worker_holding_the_old_bytes_cannot_write_their_vector_after_an_edit(db_url, photos):
    from pgclip.db import queue

    run_sync(db_url, photos)
    path = photos / "img0002.jpg"
    image_id = image_of(db_url, path)
    with connect(db_url, role="test", autocommit=True) as conn:
        model = active_model(conn)
        claimed = queue.claim(conn, model_id=model.id, worker="old", limit=10, lease_seconds=60, max_attempts=5)
    job = next(j for j in claimed if j.image_id == image_id)
    path.write_bytes(jpeg_bytes(777))
    run_sync(db_url, photos)
    with connect(db_url, role="test", autocommit=True) as conn:
        written = queue.complete(conn, [queue.Finished(job.id, np.ones(model.dimension, dtype=np.float32))],
                                 worker="old")
    assert written == set()  # the old bytes' vector is refused
    assert rows(db_url, "SELECT count(*) FROM pgclip.embeddings WHERE image_id = %s", [image_id]) == [(0,)]
    assert rows(db_url, "SELECT state FROM pgclip.embedding_jobs WHERE id = %s", [job.id]) == [("pending",)]


def test_a_file_edited_into_the_bytes_of_another_image_points_there_and_its_old_image_goes(db_url, photos):
    run_sync(db_url, photos)
    a, b = photos / "img0000.jpg", photos / "img0001.jpg"
    old_b = image_of(db_url, b)
    b.write_bytes(a.read_bytes())
    report = run_sync(db_url, photos)
    assert report.updated == [str(b)]
    assert image_of(db_url, b) == image_of(db_url, a)
    assert rows(db_url, "SELECT count(*) FROM pgclip.images WHERE id = %s", [old_b]) == [(0,)]
    # Deleting one of the two copies keeps the image for the other; deleting both removes it.
    a.unlink()
    run_sync(db_url, photos)
    assert image_of(db_url, b) is not None and count(db_url, "images") == 4
    b.unlink()
    run_sync(db_url, photos)
    assert count(db_url, "images") == 3 and count(db_url, "files") == 3


def test_moved_and_renamed_files_keep_their_image_and_vector(db_url, photos):
    run_sync(db_url, photos)
    give_vectors(db_url)
    jobs_before = count(db_url, "embedding_jobs")
    moved = {photos / "img0000.jpg": photos / "2025" / "beach.jpg",  # into a new subfolder
             photos / "2024" / "img0010.jpg": photos / "img0010.jpg"}  # out of one
    ids = {old: image_of(db_url, old) for old in moved}
    (photos / "2025").mkdir()
    for old, new in moved.items():
        old.rename(new)

    report = run_sync(db_url, photos)
    assert sorted(report.moved) == sorted((str(old), str(new)) for old, new in moved.items())
    assert not report.added and not report.removed
    for old, new in moved.items():
        assert image_of(db_url, new) == ids[old] and image_of(db_url, old) is None
        assert rows(db_url, "SELECT source FROM pgclip.images WHERE id = %s", [ids[old]]) == [(str(new),)]
    assert count(db_url, "embeddings") == 5 and count(db_url, "embedding_jobs") == jobs_before  # nothing re-embedded


def test_a_deleted_file_takes_its_image_but_never_an_image_that_came_another_way(db_url, photos, tmp_path):
    # img0001's bytes arrived by a plain ingest first (as a copy elsewhere), then the folder was synced.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "copy.jpg").write_bytes((photos / "img0001.jpg").read_bytes())
    with connect(db_url, role="test") as conn:
        ingest(conn, [elsewhere], model_id=active_model(conn).id)
        conn.commit()
    run_sync(db_url, photos)
    ingested = image_of(db_url, photos / "img0001.jpg")
    assert rows(db_url, "SELECT source FROM pgclip.images WHERE id = %s", [ingested]) == \
        [(str(elsewhere / "copy.jpg"),)]
    synced = image_of(db_url, photos / "img0002.jpg")

    (photos / "img0001.jpg").unlink()
    (photos / "img0002.jpg").unlink()
    report = run_sync(db_url, photos)
    assert sorted(report.removed) == [str(photos / "img0001.jpg"), str(photos / "img0002.jpg")]
    assert rows(db_url, "SELECT count(*) FROM pgclip.images WHERE id = %s", [synced]) == [(0,)]
    assert rows(db_url, "SELECT count(*) FROM pgclip.images WHERE id = %s", [ingested]) == [(1,)]
    assert count(db_url, "files") == 3


def test_keep_missing_marks_deleted_files_and_a_file_that_comes_back_is_itself_again(db_url, photos):
    run_sync(db_url, photos)
    path = photos / "img0002.jpg"
    data, image_id = path.read_bytes(), image_of(db_url, path)
    path.unlink()
    report = run_sync(db_url, photos, keep_missing=True)
    assert report.missing == [str(path)] and not report.removed
    assert rows(db_url, "SELECT missing_since IS NOT NULL FROM pgclip.files WHERE image_id = %s",
                [image_id]) == [(True,)]
    assert count(db_url, "images") == 5
    # Syncing again keeps it missing (not "newly" missing), and `search --in`'s sync leaves it.
    assert run_sync(db_url, photos, keep_missing=True).changes == 0
    assert run_sync(db_url, photos, forget_missing=False).changes == 0
    path.write_bytes(data)
    back = run_sync(db_url, photos)
    assert back.changes == 0 and image_of(db_url, path) == image_id
    assert rows(db_url, "SELECT missing_since FROM pgclip.files WHERE image_id = %s", [image_id]) == [(None,)]
    # A plain sync removes what is missing.
    path.unlink()
    run_sync(db_url, photos, keep_missing=True)
    assert run_sync(db_url, photos).removed == [str(path)]
    assert count(db_url, "images") == 4


def test_dry_run_lists_every_change_and_writes_nothing(db_url, photos):
    run_sync(db_url, photos)
    (photos / "img0000.jpg").rename(photos / "renamed.jpg")
    (photos / "img0001.jpg").write_bytes(jpeg_bytes(901))
    (photos / "img0002.jpg").unlink()
    write_jpegs(photos / "new", 1, start=40)

    def snapshot() -> list:
        return [rows(db_url, f"SELECT * FROM pgclip.{t} ORDER BY 1")
                for t in ("files", "images", "image_blobs", "embedding_jobs")]

    before = snapshot()
    report = run_sync(db_url, photos, dry_run=True)
    assert snapshot() == before
    assert report.dry_run and report.summary().startswith("would sync")
    assert report.added == [str(photos / "new" / "img0040.jpg")]
    assert report.updated == [str(photos / "img0001.jpg")]
    assert report.moved == [(str(photos / "img0000.jpg"), str(photos / "renamed.jpg"))]
    assert report.removed == [str(photos / "img0002.jpg")]
    done = run_sync(db_url, photos)
    assert (done.added, done.updated, done.moved, done.removed) == \
        (report.added, report.updated, report.moved, report.removed)


def test_odd_names_are_synced_moved_and_removed_by_their_exact_bytes(db_url, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    latin1 = under(folder, LATIN1)
    latin1.write_bytes(jpeg_bytes(61))
    newline = folder / "two\nlines.jpg"
    newline.write_bytes(jpeg_bytes(62))
    run_sync(db_url, folder)
    assert rows(db_url, "SELECT path, path_bytes FROM pgclip.files ORDER BY path") == [
        (f"{folder}/caf\\xe9.jpg", os.fsencode(latin1)), (f"{folder}/two\nlines.jpg", os.fsencode(newline))]
    image_id = image_of(db_url, latin1)
    renamed = under(folder, b"caf\xe9 2.jpg")
    latin1.rename(renamed)
    report = run_sync(db_url, folder)
    assert report.moved == [(f"{folder}/caf\\xe9.jpg", f"{folder}/caf\\xe9 2.jpg")]
    assert image_of(db_url, renamed) == image_id
    assert rows(db_url, "SELECT source, source_bytes FROM pgclip.images WHERE id = %s", [image_id]) == [
        (f"{folder}/caf\\xe9 2.jpg", os.fsencode(renamed))]
    newline.unlink()
    renamed.unlink()
    assert len(run_sync(db_url, folder).removed) == 2 and count(db_url, "images") == 0


def test_a_file_that_is_not_an_image_is_read_once_until_it_changes(db_url, photos):
    broken = photos / "broken.jpg"
    broken.write_bytes(b"not a picture")
    first = run_sync(db_url, photos)
    assert [path for path, _ in first.rejected] == [str(broken)] and len(first.added) == 5
    again = run_sync(db_url, photos)
    assert again.rejected == [] and again.still_rejected == 1 and "1 still not images" in again.summary()
    broken.write_bytes(jpeg_bytes(71))  # repaired
    fixed = run_sync(db_url, photos)
    assert fixed.updated == [str(broken)] and image_of(db_url, broken) is not None
    assert count(db_url, "images") == 6


def test_an_image_edited_into_something_unreadable_goes_and_the_file_says_why(db_url, photos):
    run_sync(db_url, photos)
    path = photos / "img0000.jpg"
    image_id = image_of(db_url, path)
    path.write_bytes(b"\xff\xd8 truncated")
    report = run_sync(db_url, photos)
    assert [p for p, _ in report.rejected] == [str(path)]
    assert rows(db_url, "SELECT count(*) FROM pgclip.images WHERE id = %s", [image_id]) == [(0,)]
    assert rows(db_url, "SELECT image_id, problem IS NOT NULL FROM pgclip.files WHERE path_bytes = %s",
                [os.fsencode(path)]) == [(None, True)]


def test_syncing_a_folder_leaves_the_rows_of_other_folders_alone(db_url, tmp_path):
    write_jpegs(tmp_path / "a" / "b", 1)
    write_jpegs(tmp_path / "a" / "bc", 1, start=5)
    run_sync(db_url, tmp_path / "a")
    (tmp_path / "a" / "b" / "img0000.jpg").unlink()
    report = run_sync(db_url, tmp_path / "a" / "b")  # its sibling "bc" is not under it
    assert report.removed == [str(tmp_path / "a" / "b" / "img0000.jpg")] and report.unchanged == 0
    assert count(db_url, "files") == 1


def test_a_folder_that_is_not_there_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(InvalidInput, match="no such folder"):
        sync_root(tmp_path / "nope")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(InvalidInput, match="not a folder"):
        sync_root(tmp_path / "file.jpg")


def test_a_synced_folder_that_is_gone_is_refused_and_nothing_is_removed(db_url, photos, tmp_path):
    """Renamed or unmounted after the sync began (a --watch outlives its folder): not 5 deletions."""
    root = sync_root(photos)
    run_sync(db_url, photos)
    photos.rename(tmp_path / "moved")
    with connect(db_url, role="test", autocommit=True) as conn:
        with pytest.raises(InvalidInput, match=f"no such folder: {photos}: nothing removed"):
            sync(conn, root, model_id=active_model(conn).id)
    assert (count(db_url, "files"), count(db_url, "images")) == (5, 5)


@pytest.mark.parametrize("poll", [True, False])
def test_a_watch_whose_folder_went_before_it_began_is_the_same_refusal(tmp_path, poll):
    """`sync --watch`: the folder renamed between the first sync and the watch's start (CI saw a
    FileNotFoundError traceback there) is refused like a sync of it, not raised as an OSError."""
    from pgclip.application.sync_run import watch

    with pytest.raises(InvalidInput, match=f"no such folder: {tmp_path / 'gone'}: nothing removed"):
        watch(tmp_path / "gone", lambda: None, poll=poll)


def test_a_subfolder_that_cannot_be_listed_keeps_its_rows(db_url, photos, monkeypatch):
    """Permissions changed, or a drive gone mid-scan: what it holds is unknown, not deleted."""
    import pgclip.workers.ingest_files as ingest_files

    run_sync(db_url, photos)
    real = os.scandir

    def scandir(path):
        if Path(path) == photos / "2024":
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(ingest_files.os, "scandir", scandir)
    (photos / "img0000.jpg").unlink()
    report = run_sync(db_url, photos)
    assert report.removed == [str(photos / "img0000.jpg")]  # a file gone from a listed folder still goes
    assert report.rejected == [(str(photos / "2024"), "cannot list folder: permission denied")]
    assert count(db_url, "files") == 4 and image_of(db_url, photos / "2024" / "img0010.jpg") is not None


def test_a_symlinked_name_of_the_folder_syncs_the_same_rows(db_url, photos, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(photos)
    run_sync(db_url, photos)
    assert run_sync(db_url, link).changes == 0


def test_a_video_file_is_its_video_and_its_frames_are_the_folders_images(db_url, tmp_path):
    import json

    from tests.videos import write_video

    folder = tmp_path / "clips"
    write_jpegs(folder, 1)
    clip = write_video(folder, "walk.webm", 3, seconds=6)
    report = run_sync(db_url, folder)
    assert sorted(report.added) == sorted([str(clip), str(folder / "img0000.jpg")])
    video_id = rows(db_url, "SELECT video_id FROM pgclip.files WHERE path_bytes = %s", [os.fsencode(clip)])[0][0]
    frames = {r[0] for r in rows(db_url, "SELECT id FROM pgclip.images WHERE video_id = %s", [video_id])}
    assert video_id is not None and frames

    def in_folder(path: Path) -> set[int]:
        """The images the search's folder filter admits (its WHERE clause, as pgclip.search runs it)."""
        where = rows(db_url, "SELECT pgclip.filter_sql(%s)", [json.dumps({"folder": str(path)})])[0][0]
        return {r[0] for r in rows(db_url, f"SELECT i.id FROM pgclip.images i WHERE {where}")}

    assert in_folder(folder) == frames | {image_of(db_url, folder / "img0000.jpg")}
    # Moved: the same video, nothing sampled again; deleted: the video and its frames go.
    (folder / "sub").mkdir()
    clip.rename(folder / "sub" / "walk.webm")
    moved = run_sync(db_url, folder)
    assert moved.moved == [(str(clip), str(folder / "sub" / "walk.webm"))]
    assert in_folder(folder / "sub") == frames
    (folder / "sub" / "walk.webm").unlink()
    assert run_sync(db_url, folder).removed == [str(folder / "sub" / "walk.webm")]
    assert count(db_url, "videos") == 0 and count(db_url, "images") == 1


def test_a_video_whose_frames_another_video_owns_finds_them_in_its_folder(db_url, tmp_path):
    """The same film in two containers: its frames are stored once, owned by the first video,
    and a search in the second video's folder finds them there too (pgclip.file_images)."""
    import json

    from tests.videos import write_video

    write_video(tmp_path / "films/a", "film.avi", 7, fmt="avi", seconds=4)
    write_video(tmp_path / "films/b", "film.mkv", 7, fmt="matroska", seconds=4)
    run_sync(db_url, tmp_path / "films")
    (owner, frames), (sharer, own) = rows(
        db_url, "SELECT v.source, (SELECT count(*) FROM pgclip.images i WHERE i.video_id = v.id)"
        " FROM pgclip.videos v ORDER BY 2 DESC")
    assert frames > 0 and own == 0, (owner, frames, sharer, own)
    every = {r[0] for r in rows(db_url, "SELECT id FROM pgclip.images")}

    def in_folder(path: Path) -> set[int]:
        where = rows(db_url, "SELECT pgclip.filter_sql(%s)", [json.dumps({"folder": str(path)})])[0][0]
        return {r[0] for r in rows(db_url, f"SELECT i.id FROM pgclip.images i WHERE {where}")}

    assert in_folder(Path(owner).parent) == in_folder(Path(sharer).parent) == every and len(every) == frames
    # The owner's file deleted: its frames go over to the other video, still in its folder.
    Path(owner).unlink()
    run_sync(db_url, tmp_path / "films")
    assert in_folder(Path(sharer).parent) == every and in_folder(Path(owner).parent) == set()
