"""Real ``pgclip ingest`` and ``pgclip worker`` processes against a real PostgreSQL:
several at once, killed, signalled, and with the database restarted under them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.acceptance.test_cli_db import run
from tests.images import jpeg_bytes, png_claiming_size, write_jpegs
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


def env_for(db_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "PGCLIP_DATABASE_URL": db_url, "PGCLIP_DATA_DIR": str(tmp_path / "data"), "PGCLIP_MODEL": "test-tiny",
        "PGCLIP_TORCH_THREADS": "1", **extra,
    }


_started: list[subprocess.Popen] = []  # killed after each acceptance test (tests/acceptance/conftest.py)


def start_worker(env: dict[str, str], *args: str) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgclip.cli", "worker", *args], env={**base, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    _started.append(proc)
    return proc


def job_states(db_url: str) -> dict[str, int]:
    with psycopg.connect(db_url) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM pgclip.embedding_jobs GROUP BY state").fetchall())


def assert_every_image_embedded_once(db_url: str, n: int) -> None:
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM pgclip.images").fetchone()[0] == n
        per_image = conn.execute(
            "SELECT count(e.image_id) FROM pgclip.images i LEFT JOIN pgclip.embeddings e ON e.image_id = i.id GROUP BY i.id"
        ).fetchall()
        assert {c for (c,) in per_image} == {1}
        assert conn.execute("SELECT count(*) FROM pgclip.thumbnails").fetchone()[0] == n
        assert job_states(db_url) == {"done": n}


def listening_workers(db_url: str) -> int:
    """Workers connected to the database: each names its connections ``pgclip-worker[<its id>]``."""
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT count(DISTINCT application_name) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'pgclip-worker[%%'"
        ).fetchone()[0]


def test_four_workers_share_200_images_and_embed_each_exactly_once(db_url, tmp_path):
    env = env_for(db_url, tmp_path, PGCLIP_BATCH_SIZE="8")
    write_jpegs(tmp_path / "photos", 200)
    # Four idle workers, as deployed, woken together by the ingest's notifications (started after
    # the ingest, the first one up may take every job before the others have loaded their model).
    proc = start_worker(env, "--concurrency", "4")
    wait_for(lambda: listening_workers(db_url) == 4, timeout=120)
    ingested = run("ingest", str(tmp_path / "photos"), "--json", env=env, check=True)
    assert json.loads(ingested.stdout)["added"] == 200
    wait_for(lambda: job_states(db_url) == {"done": 200}, timeout=300)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    assert_every_image_embedded_once(db_url, 200)
    with psycopg.connect(db_url) as conn:
        # Claimed once each: no job was ever handed to two workers.
        assert conn.execute("SELECT max(attempts), min(attempts) FROM pgclip.embedding_jobs").fetchone() == (1, 1)
    done_per_worker = [int(n) for n in re.findall(r"^worker \S+: (\d+) done", stdout, re.MULTILINE)]
    assert len(done_per_worker) == 4 and sum(done_per_worker) == 200, stdout
    assert sum(1 for d in done_per_worker if d > 0) >= 2  # the work was actually shared


def test_worker_processes_start_from_a_folder_that_holds_a_folder_named_pgclip(db_url, tmp_path):
    """`~/pgclip/.venv/bin/pgclip worker --concurrency 2` run from ~: the checkout folder must not
    shadow the installed package in the worker processes the command starts."""
    env = env_for(db_url, tmp_path)
    write_jpegs(tmp_path / "photos", 6)
    run("ingest", str(tmp_path / "photos"), env=env, check=True)
    (tmp_path / "pgclip" / "db").mkdir(parents=True)  # a checkout's layout: no __init__.py at its top
    base = {k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}
    script = Path(sys.executable).with_name("pgclip")
    done = subprocess.run([str(script), "worker", "--concurrency", "2", "--until-empty"], env={**base, **env},
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Error while finding module" not in done.stderr, done.stderr[-3000:]
    assert job_states(db_url) == {"done": 6}


def test_a_worker_killed_mid_batch_loses_nothing(db_url, tmp_path):
    env = env_for(db_url, tmp_path, PGCLIP_BATCH_SIZE="16", PGCLIP_LEASE_SECONDS="3", PGCLIP_MODEL_THREADS="2")
    write_jpegs(tmp_path / "photos", 48, size=(1600, 1200))  # big: decoding a batch takes a while
    run("ingest", str(tmp_path / "photos"), env=env, check=True)

    victim = start_worker(env)

    def leased_by_victim():
        with psycopg.connect(db_url) as conn:
            return conn.execute(
                "SELECT count(*) FROM pgclip.embedding_jobs WHERE state = 'leased' AND locked_by LIKE %s",
                [f"%:{victim.pid}:%"],
            ).fetchone()[0]

    wait_for(leased_by_victim, timeout=90, interval=0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert job_states(db_url).get("leased", 0) > 0  # its batch is stranded ... until the lease expires

    rescuer = start_worker(env, "--until-empty")
    out, err = rescuer.communicate(timeout=180)
    assert rescuer.returncode == 0, err[-3000:]
    assert_every_image_embedded_once(db_url, 48)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT max(attempts) FROM pgclip.embedding_jobs").fetchone()[0] == 2


def test_sigterm_finishes_the_batch_in_hand_and_gives_back_the_rest(db_url, tmp_path):
    env = env_for(db_url, tmp_path, PGCLIP_BATCH_SIZE="8", PGCLIP_LEASE_SECONDS="300", PGCLIP_MODEL_THREADS="2")
    write_jpegs(tmp_path / "photos", 64, size=(1600, 1200))
    run("ingest", str(tmp_path / "photos"), env=env, check=True)
    worker = start_worker(env)
    wait_for(lambda: job_states(db_url).get("done", 0) > 0, timeout=90, interval=0.02)
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err[-3000:]
    states = job_states(db_url)
    assert states.get("leased", 0) == 0  # nothing left stranded behind a 300 s lease
    assert states.get("pending", 0) > 0  # it stopped early rather than draining the queue
    with psycopg.connect(db_url) as conn:
        # Jobs given back unstarted did not spend an attempt.
        assert conn.execute("SELECT max(attempts) FROM pgclip.embedding_jobs WHERE state = 'pending'").fetchone()[0] == 0


def test_workers_survive_a_database_restart(db_url, tmp_path, pg_server):
    _, server = pg_server
    if server is None:
        pytest.skip("restarts the embedded test server")
    env = env_for(db_url, tmp_path, PGCLIP_BATCH_SIZE="4", PGCLIP_LEASE_SECONDS="30", PGCLIP_MODEL_THREADS="2")
    write_jpegs(tmp_path / "photos", 60, size=(800, 600))
    run("ingest", str(tmp_path / "photos"), env=env, check=True)
    worker = start_worker(env, "--until-empty")
    wait_for(lambda: job_states(db_url).get("done", 0) >= 4, timeout=90, interval=0.02)
    server.stop()
    time.sleep(2)
    assert worker.poll() is None  # still alive, waiting for the database
    server.start()
    out, err = worker.communicate(timeout=180)
    assert worker.returncode == 0, err[-3000:]
    assert_every_image_embedded_once(db_url, 60)


def test_a_corpus_of_bad_files_ends_with_the_right_states_and_reasons(db_url, tmp_path):
    env = env_for(db_url, tmp_path)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "zero.jpg").write_bytes(b"")
    (corpus / "text.jpg").write_text("this is not a picture\n")
    good = jpeg_bytes(1, (300, 200))
    (corpus / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (corpus / "bomb.png").write_bytes(png_claiming_size(30000, 30000))
    (corpus / "fine.jpg").write_bytes(good)
    (corpus / "cyrillic.jpg").write_bytes(jpeg_bytes(2))
    (corpus / "readme.txt").write_text("skipped")
    manifest = tmp_path / "captions.jsonl"
    manifest.write_text(
        json.dumps({"path": "corpus/fine.jpg", "captions": ["word " * 5000]}) + "\n"
        + json.dumps({"path": "corpus/cyrillic.jpg", "captions": ["Кошка сидит на траве"]}, ensure_ascii=False) + "\n"
    )
    result = run("ingest", str(corpus), "--captions", str(manifest), "--json", env=env)
    assert result.returncode == 1, result.stderr  # some files were rejected: listed, the rest stored
    report = json.loads(result.stdout)
    reasons = {Path(r["path"]).name: r["reason"] for r in report["rejected"]}
    assert reasons["zero.jpg"] == "empty file"
    assert reasons["text.jpg"].startswith("not an image")
    assert "truncated" in reasons["truncated.jpg"]
    assert "900000000 pixels exceeds the limit" in reasons["bomb.png"]
    assert (report["added"], report["skipped"]) == (2, 1)
    assert any("longer than" in p for p in report["manifest_problems"])  # the huge caption, reported

    # Bytes that reach the queue without passing ingest's checks (an older version, a
    # restore, a hand-made row) fail in the worker with their reason; the rest succeed.
    with psycopg.connect(db_url) as conn:
        image = conn.execute(
            "INSERT INTO pgclip.images (sha256, source, byte_size, width, height, format, mime)"
            " VALUES (repeat('a', 64), 'broken.jpg', 10, 300, 200, 'JPEG', 'image/jpeg') RETURNING id"
        ).fetchone()[0]
        conn.execute("INSERT INTO pgclip.image_blobs VALUES (%s, %s)", [image, good[: len(good) // 3]])
        conn.execute("INSERT INTO pgclip.embedding_jobs (image_id, model_id) SELECT %s, id FROM pgclip.models", [image])
    worker = start_worker(env, "--until-empty")
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err[-3000:]
    assert job_states(db_url) == {"done": 2, "failed": 1}
    status = json.loads(run("status", "--json", env=env, check=True).stdout)
    (failure,) = status["failures"]
    assert failure["source"] == "broken.jpg" and "truncated" in failure["last_error"]
    with psycopg.connect(db_url) as conn:
        found = conn.execute(
            "SELECT i.source FROM pgclip.captions c JOIN pgclip.images i ON i.id = c.image_id"
            " WHERE c.tsv @@ websearch_to_tsquery('english', 'кошка')"
        ).fetchall()
        assert [Path(s).name for (s,) in found] == ["cyrillic.jpg"]


def test_reingesting_a_tree_adds_and_enqueues_nothing_but_new_captions(db_url, tmp_path):
    env = env_for(db_url, tmp_path)
    write_jpegs(tmp_path / "photos", 5)
    first = json.loads(run("ingest", str(tmp_path / "photos"), "--json", env=env, check=True).stdout)
    manifest = tmp_path / "results.csv"
    manifest.write_text("image_name| comment_number| comment\nimg0001.jpg| 0| A dog on a sofa .\nimg0001.jpg| 1| A brown dog .\n")
    again = json.loads(run("ingest", str(tmp_path / "photos"), "--captions", str(manifest), "--json", env=env, check=True).stdout)
    assert (first["added"], first["enqueued"]) == (5, 5)
    assert (again["added"], again["present"], again["enqueued"], again["captions_added"]) == (0, 5, 0, 2)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM pgclip.embedding_jobs").fetchone()[0] == 5
