"""`pgclip search "..." --in DIR` as the issue's user runs it: from nothing (the embedded default
server, never migrated, no worker anywhere) to answers, then again after the folder changed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg
import pytest

from tests.acceptance.test_cli_db import run
from tests.images import jpeg_bytes, write_jpegs

pytestmark = pytest.mark.slow


def sources(result) -> set[str]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return {hit["source"] for hit in json.loads(result.stdout)["results"]}


def test_search_in_a_folder_answers_on_the_first_try_and_follows_its_changes(tmp_path: Path):
    env = {"PGCLIP_DATA_DIR": str(tmp_path / "data"), "PGCLIP_MODEL": "test-tiny", "PGCLIP_PRETRAINED": "random",
           "PGCLIP_TORCH_THREADS": "1"}
    photos = tmp_path / "photos"
    write_jpegs(photos, 3)
    write_jpegs(photos / "trip", 2, start=10)
    elsewhere = tmp_path / "elsewhere"
    write_jpegs(elsewhere, 2, start=20)
    try:
        first = run("search", "a cat", "--in", str(photos), "-k", "20", "--json", env=env, timeout=300)
        every = {str(p) for p in [*photos.glob("*.jpg"), *(photos / "trip").glob("*.jpg")]}
        assert sources(first) == every  # every image embedded in that one command
        assert "5 added" in first.stderr and "5 embedded" in first.stderr

        # Another folder synced into the same database is not in the first one's answers.
        assert sources(run("search", "a cat", "--in", str(elsewhere), "-k", "20", "--json", env=env)) == \
            {str(p) for p in elsewhere.glob("*.jpg")}

        # Unchanged: no sync line, same answer, and an image as the query works too.
        again = run("search", "--in", str(photos), str(photos / "img0000.jpg"), "-k", "20", "--json", env=env)
        assert sources(again) == every and again.stderr == ""

        # Add, edit in place, move into a subfolder, delete.
        (photos / "new.jpg").write_bytes(jpeg_bytes(31))
        (photos / "img0001.jpg").write_bytes(jpeg_bytes(32))
        (photos / "img0002.jpg").rename(photos / "trip" / "moved.jpg")
        (photos / "trip" / "img0010.jpg").unlink()
        url = run("db", "url", env=env, check=True).stdout.strip()
        with psycopg.connect(url) as conn:
            images_before = conn.execute("SELECT count(*) FROM pgclip.images").fetchone()[0]
        changed = run("search", "a cat", "--in", str(photos), "-k", "20", "--json", env=env, timeout=300)
        assert sources(changed) == {str(photos / name) for name in
                                    ("img0000.jpg", "img0001.jpg", "new.jpg", "trip/moved.jpg", "trip/img0011.jpg")}
        assert "1 added, 1 updated, 1 moved, 1 removed" in changed.stderr and "2 embedded" in changed.stderr
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM pgclip.images").fetchone()[0] == images_before  # +1 -1
            # Each image has one vector: the edited one its new vector, none left over.
            per_image = conn.execute("SELECT count(e.image_id) FROM pgclip.images i"
                                     " LEFT JOIN pgclip.embeddings e ON e.image_id = i.id GROUP BY i.id").fetchall()
            assert {n for (n,) in per_image} == {1}

        # `pgclip sync` sees it the same way: nothing left to do.
        synced = run("sync", str(photos), env=env, check=True)
        assert "0 added, 0 updated, 0 moved, 0 removed, 5 unchanged" in synced.stdout
    finally:
        run("db", "stop", env=env)


def test_search_in_refuses_a_folder_that_is_not_there_in_one_line(db_url, tmp_path: Path):
    env = {"PGCLIP_DATABASE_URL": db_url, "PGCLIP_DATA_DIR": str(tmp_path / "data"), "PGCLIP_MODEL": "test-tiny"}
    result = run("search", "a cat", "--in", str(tmp_path / "nope"), env=env)
    assert result.returncode == 1 and result.stderr == f"pgclip: error: no such folder: {tmp_path / 'nope'}\n"
    assert not os.path.exists(tmp_path / "nope")


def test_a_query_image_that_is_a_fifo_is_one_line_not_a_hang(db_url, tmp_path: Path):
    env = {"PGCLIP_DATABASE_URL": db_url, "PGCLIP_DATA_DIR": str(tmp_path / "data"), "PGCLIP_MODEL": "test-tiny"}
    os.mkfifo(tmp_path / "q.jpg")
    for args in (["--image", str(tmp_path / "q.jpg")], [f"a cat + {tmp_path / 'q.jpg'}"]):
        result = run("search", *args, env=env, timeout=120)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith(f"pgclip: error: cannot read image {tmp_path / 'q.jpg'}: not a regular file")


def test_ctrl_c_while_search_in_embeds_gives_every_claimed_job_back(db_url, tmp_path: Path):
    """Ctrl-C during the folder's embedding: the batch in hand is finished, the rest released,
    none left leased to a process that is gone (16 were: Thread.join after an interrupted join)."""
    import signal
    import subprocess
    import sys

    from tests.waiting import wait_for

    env = {"PGCLIP_DATABASE_URL": db_url, "PGCLIP_DATA_DIR": str(tmp_path / "data"), "PGCLIP_MODEL": "test-tiny",
           "PGCLIP_MODEL_THREADS": "1", "PGCLIP_TORCH_THREADS": "1"}  # one thread: seconds of embedding to stop
    write_jpegs(tmp_path / "album", 600, size=(640, 480))
    base = {k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}
    search = subprocess.Popen([sys.executable, "-m", "pgclip.cli", "search", "a cat", "--in", str(tmp_path / "album")],
                              env={**base, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def states() -> dict[str, int]:
        with psycopg.connect(db_url) as conn:
            return dict(conn.execute("SELECT state, count(*) FROM pgclip.embedding_jobs GROUP BY 1").fetchall())

    try:
        wait_for(lambda: states().get("done", 0) > 0, 180, 0.05, "the folder's embedding under way", [search])
        search.send_signal(signal.SIGINT)
        out, err = search.communicate(timeout=120)
    finally:
        if search.poll() is None:
            search.kill()
            search.communicate()
    assert search.returncode == 130 and "Traceback" not in err, err
    left = states()
    assert left.get("leased", 0) == 0 and left.get("pending", 0) > 0, left
