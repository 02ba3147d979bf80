"""``ingest()`` on a real PostgreSQL with a corpus of odd files: no file ends the run."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from pgclip.db.models import active_model
from pgclip.workers.ingest import ingest
from pgclip.workers.manifest import load_manifest
from tests.images import jpeg_bytes, png_claiming_size
from tests.unit.test_ingest_files import LATIN1, corrupt_exif_jpeg, under


@pytest.fixture
def model_id(conn) -> int:
    model = active_model(conn)
    conn.commit()  # ingest's batches commit only outside a caller's transaction
    return model.id


def rows(conn) -> dict[str, tuple[bytes | None, int]]:
    """source -> (source_bytes, number of jobs)."""
    return {
        source: (raw, jobs)
        for source, raw, jobs in conn.execute(
            "SELECT i.source, i.source_bytes, count(j.id) FROM pgclip.images i"
            " LEFT JOIN pgclip.embedding_jobs j ON j.image_id = i.id GROUP BY i.id"
        )
    }


def make_corpus(root: Path) -> list[Path]:
    """Good files (returned) among every kind of thing that is not one."""
    root.mkdir()
    good = [root / "good.jpg", under(root, LATIN1), root / ("n" * 251 + ".jpg"), root / "line\nbreak.jpg",
            root / "rtl\u202emark 🐱.jpg", root / "x.jpg" / "inside.jpg"]
    (root / "x.jpg").mkdir()  # a folder named like an image
    for seed, path in enumerate(good):
        path.write_bytes(jpeg_bytes(seed))
    os.mkfifo(root / "fifo.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock.jpg"))
    sock.close()
    (root / "dangling.jpg").symlink_to(root / "gone.jpg")
    (root / "loop.jpg").symlink_to("loop.jpg")
    (root / "text.jpg").write_text("not a picture")
    return good


def test_every_good_file_is_stored_and_every_other_one_has_its_reason(conn, model_id, tmp_path):
    good = make_corpus(tmp_path / "corpus")
    report = ingest(conn, [tmp_path / "corpus"], model_id=model_id, batch_files=3)
    assert report.added == len(good) and report.enqueued == len(good)
    reasons = {Path(p).name: r for p, r in report.rejected}
    assert reasons == {
        "fifo.jpg": "not a regular file (a FIFO)",
        "sock.jpg": "not a regular file (a socket)",
        "dangling.jpg": "broken symbolic link (its target does not exist)",
        "loop.jpg": "symbolic link loop",
        "text.jpg": "not an image (cannot identify image file)",
    }
    stored = rows(conn)
    assert len(stored) == len(good)
    # Every name as stored gives back the exact bytes of the file it came from.
    originals = {raw or source.encode() for source, (raw, _) in stored.items()}
    assert originals == {os.fsencode(p) for p in good}
    latin1 = str(tmp_path / "corpus") + "/caf\\xe9.jpg"
    assert stored[latin1] == (os.fsencode(under(tmp_path / "corpus", LATIN1)), 1)
    assert all(raw is None for source, (raw, _) in stored.items() if source != latin1)


def test_a_second_run_finds_odd_names_again(conn, model_id, tmp_path):
    good = make_corpus(tmp_path / "corpus")
    ingest(conn, [tmp_path / "corpus"], model_id=model_id)
    again = ingest(conn, [tmp_path / "corpus"], model_id=model_id)
    assert (again.added, again.present, again.enqueued) == (0, len(good), 0)
    assert {jobs for _, jobs in rows(conn).values()} == {1}


def test_copies_of_one_file_are_counted_as_present_so_every_file_is_counted(conn, model_id, tmp_path):
    """Three copies in one batch read "added 1, already present 0" before: the copies vanished."""
    for n in range(3):
        (tmp_path / f"copy{n}.jpg").write_bytes(jpeg_bytes(7))
    (tmp_path / "other.jpg").write_bytes(jpeg_bytes(8))
    first = ingest(conn, [tmp_path], model_id=model_id)
    assert (first.added, first.present, first.enqueued) == (2, 2, 2)
    again = ingest(conn, [tmp_path], model_id=model_id, batch_files=2)  # copies across batches too
    assert (again.added, again.present) == (0, 4)


def test_a_manifest_naming_things_that_are_not_files_reports_each(conn, model_id, tmp_path):
    good = make_corpus(tmp_path / "corpus")
    manifest = tmp_path / "captions.jsonl"
    names = ["corpus/fifo.jpg", "corpus/x.jpg", "corpus/dangling.jpg", "corpus/loop.jpg", "corpus/missing.jpg",
             "corpus/good.jpg", "corpus/" + os.fsdecode(LATIN1)]
    manifest.write_text("".join(json.dumps({"path": n, "captions": [f"caption {i}"]}) + "\n" for i, n in enumerate(names)))
    report = ingest(conn, [], model_id=model_id, manifest=load_manifest(manifest))
    assert report.added == 2 and report.captions_added == 2
    assert {Path(p).name: r for p, r in report.rejected} == {
        "fifo.jpg": "not a regular file (a FIFO)",
        "x.jpg": "is a directory",
        "dangling.jpg": "broken symbolic link (its target does not exist)",
        "loop.jpg": "symbolic link loop",
        "missing.jpg": "no such file or directory",
    }
    assert len(good) > 2  # the folder's other files were not asked for


def test_a_latin1_results_csv_captions_the_file_of_the_same_bytes(conn, model_id, tmp_path):
    make_corpus(tmp_path / "corpus")
    manifest = tmp_path / "results.csv"
    manifest.write_bytes(b"image_name| comment_number| comment\n" + LATIN1 + b"| 0| A caf\xe9 terrace .\n")
    report = ingest(conn, [tmp_path / "corpus"], model_id=model_id, manifest=load_manifest(manifest))
    assert report.captions_added == 1 and report.manifest_missing == []
    (source, text), = conn.execute(
        "SELECT i.source, c.text FROM pgclip.captions c JOIN pgclip.images i ON i.id = c.image_id"
    ).fetchall()
    assert source.endswith("caf\\xe9.jpg") and text == "A caf\ufffd terrace ."


def test_files_that_vanish_or_turn_into_fifos_after_listing_are_rejected(conn, model_id, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        (folder / f"p{i}.jpg").write_bytes(jpeg_bytes(i))

    def change_the_tree(total: int) -> None:  # called between listing and reading
        (folder / "p1.jpg").unlink()
        (folder / "p3.jpg").unlink()
        os.mkfifo(folder / "p3.jpg")
        (folder / "p4.jpg").write_bytes(b"")

    report = ingest(conn, [folder], model_id=model_id, on_total=change_the_tree, batch_files=2)
    assert {Path(p).name: r for p, r in report.rejected} == {
        "p1.jpg": "vanished (deleted or renamed after it was listed)",
        "p3.jpg": "not a regular file (a FIFO)",
        "p4.jpg": "empty file",
    }
    assert report.added == 3


def test_library_warnings_are_counted_per_file_and_the_file_judged_on_its_pixels(conn, model_id, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(corrupt_exif_jpeg(1))
    (folder / "b.jpg").write_bytes(corrupt_exif_jpeg(2))
    (folder / "c.jpg").write_bytes(jpeg_bytes(3))
    (folder / "huge.png").write_bytes(png_claiming_size(10_000, 9_000))  # over the limit: warned, then rejected
    report = ingest(conn, [folder], model_id=model_id)
    assert report.added == 3
    assert [(Path(p).name, w.split(":")[0]) for p, w in report.warnings] == [
        ("a.jpg", "UserWarning"), ("b.jpg", "UserWarning"), ("huge.png", "DecompressionBombWarning"),
    ]
    assert [Path(p).name for p, _ in report.rejected] == ["huge.png"]


def test_a_file_the_database_refuses_is_rejected_alone(conn, model_id, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        (folder / f"p{i}.jpg").write_bytes(jpeg_bytes(i))
    manifest = tmp_path / "captions.jsonl"
    # Python's JSON reads NaN; PostgreSQL's jsonb does not: the batch fails on this file's metadata.
    manifest.write_text('{"path": "photos/p2.jpg", "metadata": {"score": NaN}}\n'
                        '{"path": "photos/p1.jpg", "metadata": {"tag": "nul\\u0000byte"}}\n')
    report = ingest(conn, [folder], model_id=model_id, manifest=load_manifest(manifest))
    assert report.added == 3
    ((path, reason),) = report.rejected
    assert path.endswith("p2.jpg") and reason.startswith("the database refused it: ")
    assert conn.execute("SELECT metadata->>'tag' FROM pgclip.images WHERE source LIKE '%p1.jpg'").fetchone() == ("nulbyte",)
    assert conn.execute("SELECT count(*) FROM pgclip.embedding_jobs").fetchone() == (3,)
