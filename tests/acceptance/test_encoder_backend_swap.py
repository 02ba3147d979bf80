"""Switching a collection to int8 vectors and back, on the re-embed path, while search answers.

int8 vectors are a model of their own (identity ``random-seed-0+onnx-int8``): never mixed
into the fp32 model's index, built by a worker beside it, activated in one transaction.
The API follows each activation without a restart and encodes query texts with the
backend the active model's identity implies, whatever its own PGCLIP_ENCODER says.
"""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import psycopg
import pytest

from pgclip.workers.encoder import ClipEncoder
from tests.acceptance.test_api import free_port, start_server
from tests.acceptance.test_cli_db import run
from tests.images import write_jpegs
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

QUERY = "a photo"
SIM_TOL = 1e-5  # pgvector computes cosine distance in single precision


def top_similarity(db_url: str, identity: str, text_vector: np.ndarray) -> float:
    """The best cosine similarity between `text_vector` and the stored vectors of one models row."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT e.embedding::text FROM pgclip.embeddings e JOIN pgclip.models m ON m.id = e.model_id"
            " WHERE m.pretrained = %s", [identity],
        ).fetchall()
    stored = np.array([[float(x) for x in r[0].strip("[]").split(",")] for r in rows], dtype=np.float32)
    return float((stored @ text_vector).max())


def test_reembed_to_int8_and_back_while_searches_run(db_url, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the API and workers share the exports
    port = free_port()
    env = {"PGCLIP_DATABASE_URL": db_url, "PGCLIP_DATA_DIR": str(tmp_path / "data"), "PGCLIP_MODEL": "test-tiny",
           "PGCLIP_PORT": str(port), "PGCLIP_ENCODER": "torch"}
    int8 = {**env, "PGCLIP_ENCODER": "onnx-int8"}
    write_jpegs(tmp_path / "photos", 16)
    run("ingest", str(tmp_path / "photos"), env=env, check=True)
    run("worker", "--until-empty", env=env, check=True, timeout=300)

    server, url = start_server(env, port)  # a torch API: it must still encode int8 queries with int8
    responses: list[tuple[float, int, float | None]] = []
    stop = threading.Event()

    def search_forever():
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                sent = time.monotonic()
                r = client.post("/api/search", json={"text": QUERY, "k": 3})
                results = r.json().get("results") or [{}]
                responses.append((sent, r.status_code, results[0].get("similarity")))

    def answered_after(moment: float, n: int) -> list[float]:
        wait_for(lambda: sum(1 for t, *_ in responses if t > moment) >= n, timeout=60)
        return [s for t, _, s in responses if t > moment]

    try:
        searcher = threading.Thread(target=search_forever, daemon=True)
        searcher.start()
        assert "16 images queued" in run("reembed", "test-tiny", env=int8, check=True).stdout
        run("worker", "--until-empty", env=int8, check=True, timeout=300)
        run("models", "activate", "test-tiny", "--pretrained", "random-seed-0+onnx-int8", env=env, check=True)
        on_int8 = answered_after(time.monotonic(), 5)
        run("models", "activate", "test-tiny", "--pretrained", "random-seed-0", env=env, check=True)
        back = answered_after(time.monotonic(), 5)
        stop.set()
        searcher.join(timeout=30)
    finally:
        stop.set()
        server.terminate()
        server.wait(timeout=10)

    assert responses and {status for _, status, _ in responses} == {200}  # zero errors throughout
    with psycopg.connect(db_url) as conn:
        rows = dict(conn.execute("SELECT pretrained, state FROM pgclip.models WHERE name = 'test-tiny'").fetchall())
        counts = dict(conn.execute(
            "SELECT m.pretrained, count(*) FROM pgclip.embeddings e JOIN pgclip.models m ON m.id = e.model_id"
            " GROUP BY m.pretrained").fetchall())
    assert rows == {"random-seed-0": "active", "random-seed-0+onnx-int8": "retired"}
    assert counts == {"random-seed-0": 16, "random-seed-0+onnx-int8": 16}  # never mixed
    # Each model answered with query vectors of its own backend.
    int8_query = ClipEncoder("test-tiny", "random", device="cpu", backend="onnx-int8").encode_texts([QUERY])[0]
    torch_query = ClipEncoder("test-tiny", "random", device="cpu", backend="torch").encode_texts([QUERY])[0]
    assert on_int8[-1] == pytest.approx(top_similarity(db_url, "random-seed-0+onnx-int8", int8_query), abs=SIM_TOL)
    assert back[-1] == pytest.approx(top_similarity(db_url, "random-seed-0", torch_query), abs=SIM_TOL)
