"""Re-embedding with another model while search keeps answering, then switching without a restart."""

from __future__ import annotations

import threading
import time

import httpx
import psycopg
import pytest

from tests.acceptance.test_api import free_port, start_server
from tests.acceptance.test_cli_db import assert_one_line_error, run
from tests.images import write_jpegs
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


def test_reembed_and_activate_while_searches_run_over_http(db_url, tmp_path):
    port = free_port()
    env = {"PGCLIP_DATABASE_URL": db_url, "PGCLIP_DATA_DIR": str(tmp_path / "data"), "PGCLIP_MODEL": "test-tiny",
           "PGCLIP_PORT": str(port)}
    write_jpegs(tmp_path / "photos", 24)
    run("ingest", str(tmp_path / "photos"), env=env, check=True)
    run("worker", "--until-empty", env=env, check=True, timeout=300)

    server, url = start_server(env, port)
    responses: list[tuple[float, int, str | None, int]] = []
    stop = threading.Event()

    def search_forever():
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                sent = time.monotonic()  # when the request left: it cannot have been answered before
                r = client.post("/api/search", json={"text": "a photo", "k": 5})
                body = r.json()
                responses.append((sent, r.status_code, body.get("model"), len(body.get("results", []))))

    try:
        searcher = threading.Thread(target=search_forever, daemon=True)
        searcher.start()

        queued = run("reembed", "test-tiny-alt", env=env, check=True)
        assert "24 images queued" in queued.stdout
        # Images added during the re-embed are queued for both models; the summary counts images.
        write_jpegs(tmp_path / "more", 6, start=24)
        added = run("ingest", str(tmp_path / "more"), env=env, check=True)
        assert "added 6," in added.stdout and ", 6 queued" in added.stdout, added.stdout
        # Not every image has its vector yet: activation refuses and says how far along it is.
        assert_one_line_error(run("models", "activate", "test-tiny-alt", env=env), "0 of 30", "--force")
        run("worker", "--model", "test-tiny-alt", "--until-empty", env=env, check=True, timeout=300)
        listing = run("models", env=env, check=True).stdout
        assert "30/30 (100%)" in listing

        switch_started = time.monotonic()
        run("models", "activate", "test-tiny-alt", env=env, check=True)
        switch_done = time.monotonic()
        wait_for(lambda: sum(1 for t, *_ in responses if t > switch_done) >= 10, timeout=60)
        stop.set()
        searcher.join(timeout=30)
    finally:
        stop.set()
        server.terminate()
        server.wait(timeout=10)

    assert responses, "no searches ran"
    assert {status for _, status, _, _ in responses} == {200}  # zero errors throughout
    assert all(n == 5 for *_, n in responses)
    models = [m for _, _, m, _ in responses]
    assert all(m == "test-tiny" for t, _, m, _ in responses if t < switch_started)
    # The activation had committed when `pgclip models activate` exited: every search sent after
    # that is answered by the new model (each request reads the active model afresh).
    late = [(round(t - switch_done, 3), m) for t, _, m, _ in responses if t > switch_done and m != "test-tiny-alt"]
    assert not late, late[:10]
    first_new = models.index("test-tiny-alt")
    assert set(models[first_new:]) == {"test-tiny-alt"}  # never back to the old model
    assert models[0] == "test-tiny"

    dropped = run("models", "drop", "test-tiny", env=env, check=True)
    assert "24 vectors" in dropped.stdout  # no worker of the old model ran after the 6 were added
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM pgclip.embeddings").fetchone()[0] == 30  # the new model's
        assert conn.execute("SELECT count(*) FROM pgclip.embedding_jobs WHERE state = 'pending'").fetchone() == (0,)
        assert conn.execute("SELECT name FROM pgclip.models").fetchall() == [("test-tiny-alt",)]
    assert_one_line_error(run("models", "drop", "test-tiny-alt", env=env), "active model")

    # PGCLIP_MODEL still names the dropped model (the README's own order of steps): ingest and
    # migrate say so and queue for the active one; they brought the old model back, "building"
    # for ever, with every new image queued for it.
    write_jpegs(tmp_path / "after", 3, start=40)
    after = run("ingest", str(tmp_path / "after"), env=env, check=True)
    assert ", 3 queued" in after.stdout
    assert "PGCLIP_MODEL=test-tiny (random-seed-0) is not registered" in after.stderr, after.stderr
    assert "queued for the active model test-tiny-alt" in after.stderr
    migrated = run("migrate", env=env, check=True)
    assert "model test-tiny-alt" in migrated.stdout and "is not registered" in migrated.stderr
    assert _models(db_url) == [("test-tiny-alt", "random-seed-0")]
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM pgclip.embedding_jobs WHERE state = 'pending'").fetchone() == (3,)
    # A sync says so too; one that would embed with the dropped model refuses, as a worker for it does.
    synced = run("sync", str(tmp_path / "after"), env=env, check=True)
    assert "queued for the active model test-tiny-alt" in synced.stderr
    assert_one_line_error(run("sync", "--embed", str(tmp_path / "after"), env=env), "test-tiny", "is not registered")
    assert _models(db_url) == [("test-tiny-alt", "random-seed-0")]


def _models(db_url: str) -> list[tuple[str, str]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute("SELECT name, pretrained FROM pgclip.models ORDER BY id").fetchall()


def test_reembed_refuses_weights_no_worker_could_load_and_registers_nothing(db_url, tmp_path):
    env = {"PGCLIP_DATABASE_URL": db_url, "PGCLIP_DATA_DIR": str(tmp_path / "data")}
    before = _models(db_url)
    assert_one_line_error(run("reembed", "ViT-B-32", "--pretrained", "bogus-tag", env=env),
                          "unknown pretrained tag 'bogus-tag' for model 'ViT-B-32'", "laion2b_s34b_b79k")
    text = tmp_path / "weights.pt"
    text.write_text("not a checkpoint\n")
    assert_one_line_error(run("reembed", "ViT-B-32", "--checkpoint", str(text), env=env, timeout=300),
                          "cannot load model 'ViT-B-32' with weights")
    assert_one_line_error(run("reembed", "ViT-Q-99", env=env), "unknown model 'ViT-Q-99'")
    assert _models(db_url) == before  # no model left "building" with jobs no worker takes


def test_a_worker_for_a_model_that_is_not_registered_refuses_instead_of_registering_it(db_url, tmp_path):
    """Beside an active model, a worker of weights nobody registered (a checkpoint replaced after
    `pgclip reembed`, int8 before its re-embed, a typo) would register a model no job is ever
    queued for and idle forever: it says so in one line and registers nothing."""
    env = {"PGCLIP_DATABASE_URL": db_url, "PGCLIP_DATA_DIR": str(tmp_path / "data"), "PGCLIP_MODEL": "test-tiny"}
    write_jpegs(tmp_path / "photos", 2)
    run("ingest", str(tmp_path / "photos"), env=env, check=True)
    before = _models(db_url)
    assert_one_line_error(run("worker", "--until-empty", env={**env, "PGCLIP_ENCODER": "onnx-int8"}, timeout=300),
                          "test-tiny is registered as random-seed-0, not as random-seed-0+onnx-int8: int8 vectors",
                          "pgclip reembed test-tiny")
    assert_one_line_error(run("worker", "--until-empty", "--model", "ViT-B-32", "--pretrained", "openai", env=env,
                              timeout=300),
                          "ViT-B-32 (openai) is not registered, so nothing is queued for it", "pgclip reembed ViT-B-32")
    assert _models(db_url) == before
    run("worker", "--until-empty", env=env, check=True, timeout=300)  # the registered model's worker: as before
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM pgclip.embeddings").fetchone()[0] == 2


def test_reembed_does_not_queue_a_failed_image_again_and_says_how_to_retry(db_url, tmp_path):
    env = {"PGCLIP_DATABASE_URL": db_url, "PGCLIP_DATA_DIR": str(tmp_path / "data"), "PGCLIP_MODEL": "test-tiny"}
    with psycopg.connect(db_url) as conn:  # an image whose job failed (its bytes are no image)
        image_id = conn.execute(
            "INSERT INTO pgclip.images (sha256, source, byte_size, width, height, format, mime)"
            " VALUES (repeat('c', 64), 'broken.jpg', 3, 1, 1, 'JPEG', 'image/jpeg') RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO pgclip.embedding_jobs (image_id, model_id, state, attempts, last_error)"
                     " SELECT %s, id, 'failed', 1, 'corrupt image' FROM pgclip.models WHERE state = 'active'",
                     [image_id])
    for _ in range(2):
        done = run("reembed", "test-tiny", env=env, check=True).stdout
        assert "test-tiny (random-seed-0) (active): 0 images queued for it" in done, done
        assert "1 images failed for it before and are not queued again: `pgclip retry-failed` retries them" in done
        assert "models activate" not in done  # it is the active model
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT state, count(*) FROM pgclip.embedding_jobs WHERE image_id = %s GROUP BY 1",
                            [image_id]).fetchall() == [("failed", 1)]
