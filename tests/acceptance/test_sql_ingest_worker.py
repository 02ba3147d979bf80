"""Images added with SQL alone, embedded by a real ``pgclip worker`` process: an ETL job that
speaks only SQL (as pgclip_writer) inserts rows, and the running worker wakes, decodes, fills
in and embeds them, or fails them with the reason `pgclip status` shows."""

from __future__ import annotations

import signal

import psycopg
import pytest

from tests.acceptance.test_cli_db import run
from tests.acceptance.test_workers import env_for, job_states, listening_workers, start_worker
from tests.images import jpeg_bytes
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


def test_images_inserted_by_sql_are_embedded_by_the_running_worker(db_url, tmp_path):
    env = env_for(db_url, tmp_path, PGCLIP_BATCH_SIZE="8")
    worker = start_worker(env)
    wait_for(lambda: listening_workers(db_url) == 1, timeout=120, processes=[worker])

    with psycopg.connect(db_url) as conn:
        conn.execute("SET ROLE pgclip_writer")  # an ETL job's role: it may add images and nothing else
        with conn.cursor() as cur, cur.copy("COPY pgclip.image_inbox (data, source, captions) FROM STDIN") as copy:
            for i in range(20):
                copy.write_row((jpeg_bytes(i, (120, 80)), f"etl/{i}.jpg", [f"photo {i}"]))
        conn.execute("INSERT INTO pgclip.image_inbox (data, source) VALUES ('these are not image bytes', 'etl/bad.jpg')")

    wait_for(lambda: job_states(db_url) == {"done": 20, "failed": 1}, timeout=120, processes=[worker])
    with psycopg.connect(db_url) as conn:
        sizes = conn.execute(
            "SELECT DISTINCT width, height, format, mime FROM pgclip.images WHERE source LIKE 'etl/%.jpg'"
            " AND source <> 'etl/bad.jpg'"
        ).fetchall()
        assert sizes == [(120, 80, "JPEG", "image/jpeg")]
        assert conn.execute("SELECT count(*) FROM pgclip.embeddings").fetchone() == (20,)
        assert conn.execute(
            "SELECT j.last_error FROM pgclip.embedding_jobs j JOIN pgclip.images i ON i.id = j.image_id"
            " WHERE i.source = 'etl/bad.jpg'"
        ).fetchone() == ("not an image (cannot identify image file)",)

    status = run("status", env=env, check=True)
    assert "etl/bad.jpg" in status.stdout and "not an image (cannot identify image file)" in status.stdout

    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, stderr[-3000:]
