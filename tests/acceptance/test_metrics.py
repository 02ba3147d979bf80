"""Operators' eyes: `/metrics` of a real `pgclip serve` over real HTTP, a real `pgclip worker
--metrics-port`, both while their database is up and while it is down, and their JSON logs
read line by line as a log collector would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.acceptance.test_api import _ready, free_port
from tests.acceptance.test_cli_db import assert_one_line_error, run
from tests.acceptance.test_workers import env_for, start_worker
from tests.images import jpeg_bytes, write_jpegs
from tests.outage import RestartablePostgres
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

SCRAPE_TIMEOUT = 10.0  # seconds, Prometheus's default: a scrape that takes longer has failed
MODEL = {"model": "test-tiny", "pretrained": "random-seed-0"}
STAGES = ("claim", "fetch", "decode", "encode", "write")


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """GET url (a /metrics page), parsed as Prometheus parses it: {(sample name, labels): value}."""
    response = httpx.get(url, timeout=SCRAPE_TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def label_values(samples: dict, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for (n, labels) in samples if n == name and label in dict(labels)}


def json_lines(text: str) -> list[dict]:
    """Each line of a process's stderr as the JSON object it must be."""
    lines = text.splitlines()
    assert lines, "no log lines"
    return [json.loads(line) for line in lines]


def serve(env: dict[str, str], port: int, log: Path) -> tuple[subprocess.Popen, str]:
    """`pgclip serve` with its stderr (the log) in ``log``; returns once /readyz answers 200."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "pgclip.cli", "serve"], env={**base, **env, "PGCLIP_PORT": str(port)},
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _ready(url), 90, interval=0.2, what="pgclip serve coming up", processes=[proc])
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def test_api_metrics_count_requests_by_route_template_and_searches_by_kind(databases, tmp_path):
    db_url = databases.clone_template()
    env = env_for(db_url, tmp_path, PGCLIP_LOG_FORMAT="json")
    write_jpegs(tmp_path / "photos", 6)
    run("ingest", str(tmp_path / "photos"), env=env, check=True)
    run("worker", "--until-empty", env=env, check=True, timeout=300)
    proc, url = serve(env, free_port(), tmp_path / "api.log")
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            hits = client.post("/api/search", json={"text": "a dog", "k": 3}).json()["results"]
            assert client.post("/api/search", json={"text": "a dog", "k": 3}).status_code == 200  # cached text
            assert client.post("/api/search", json={"text": "x", "caption_query": "dog"}).status_code == 200
            image_id = hits[0]["id"]
            assert client.get(f"/api/images/{image_id}").status_code == 200
            assert client.get("/api/images/999999").status_code == 404
            assert client.get(f"/api/images/{image_id}/similar").status_code == 200
            upload = {"file": ("q.jpg", jpeg_bytes(77), "image/jpeg")}
            assert client.post("/api/search/image", files=upload).status_code == 200
            assert client.get("/wp-login.php").status_code == 404
            assert client.get(f"/no/such/{image_id}").status_code == 404
            assert "/metrics" not in client.get("/schema/openapi.json").json()["paths"]
        # A request that is not HTTP at all: uvicorn's own warning must follow the log format too.
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10) as raw:
            raw.sendall(b"NOT HTTP\x00\r\n\r\n")
            raw.recv(1024)

        first = scrape(f"{url}/metrics")
        requests = "pgclip_http_requests_total"
        assert value(first, requests, method="GET", route="/api/images/{image_id}", status="200") == 1
        assert value(first, requests, method="GET", route="/api/images/{image_id}", status="404") == 1
        assert value(first, requests, method="GET", route="/api/images/{image_id}/similar", status="200") == 1
        assert value(first, requests, method="POST", route="/api/search", status="200") == 3
        assert value(first, "pgclip_http_request_duration_seconds_count",
                     method="POST", route="/api/search", status="200") == 3
        # Paths no route matched are one series, whatever they were: clients cannot grow the series.
        assert value(first, requests, method="GET", route="unmatched", status="404") == 2
        assert not any(str(image_id) in route for route in label_values(first, requests, "route"))

        searches = "pgclip_search_duration_seconds_count"
        assert {kind: value(first, searches, kind=kind) for kind in ("text", "hybrid", "image", "similar")} == {
            "text": 2, "hybrid": 1, "image": 1, "similar": 1}
        # "a dog" went through the model once, then came from the cache; "x" went through it too.
        assert value(first, "pgclip_text_cache_requests_total", result="hit") == 1
        assert value(first, "pgclip_text_cache_requests_total", result="miss") == 2
        assert value(first, "pgclip_encoder_duration_seconds_count", tower="text") == 2
        assert value(first, "pgclip_encoder_duration_seconds_count", tower="image") == 1
        assert value(first, "pgclip_db_pool_max") == 8
        assert value(first, "pgclip_db_pool_connections", state="in_use") is not None
        assert value(first, "pgclip_db_pool_waiting") == 0
        assert value(first, "pgclip_database_up") == 1
        assert value(first, "pgclip_queue_jobs", **MODEL, state="done") == 6
        assert value(first, "pgclip_queue_jobs", **MODEL, state="pending") == 0
        assert value(first, "process_resident_memory_bytes") > 0

        second = scrape(f"{url}/metrics")  # the first scrape is counted by the second
        assert value(second, requests, method="GET", route="/metrics", status="200") == 1
    finally:
        stop(proc)
        databases.drop(db_url)

    lines = json_lines((tmp_path / "api.log").read_text())
    assert {line["process"] for line in lines} == {"pgclip-api"}
    assert any(line["logger"] == "uvicorn.error" and line["message"] == "Invalid HTTP request received."
               for line in lines), lines


def test_api_metrics_answer_while_the_database_is_down(tmp_path):
    pg = RestartablePostgres()
    try:
        db_url = pg.start()
        env = env_for(db_url, tmp_path, PGCLIP_LOG_FORMAT="json")
        run("migrate", env=env, check=True)
        proc, url = serve(env, free_port(), tmp_path / "api.log")
        try:
            assert value(scrape(f"{url}/metrics"), "pgclip_database_up") == 1
            pg.down()
            for _ in range(3):  # each scrape answers, none hangs (scrape() allows SCRAPE_TIMEOUT)
                down = scrape(f"{url}/metrics")
                assert value(down, "pgclip_database_up") == 0
                assert value(down, "pgclip_queue_jobs", **MODEL, state="done") is None
                assert value(down, "process_resident_memory_bytes") > 0  # the process's own figures stay
                assert value(down, "pgclip_http_requests_total", method="GET", route="/metrics", status="200") >= 1
            assert httpx.get(f"{url}/healthz", timeout=SCRAPE_TIMEOUT).status_code == 200
            pg.up()
            wait_for(lambda: value(scrape(f"{url}/metrics"), "pgclip_database_up") == 1, timeout=30,
                     what="the queue figures back once the database is")
        finally:
            stop(proc)
    finally:
        pg.close()
    lines = json_lines((tmp_path / "api.log").read_text())
    messages = [line["message"] for line in lines]
    assert any(m.startswith("metrics: the database did not answer the queue query") for m in messages), messages
    assert "metrics: the database answers the queue query again" in messages


def test_worker_metrics_count_jobs_and_time_stages_and_its_log_is_json(db_url, tmp_path):
    env = env_for(db_url, tmp_path, PGCLIP_BATCH_SIZE="4", PGCLIP_LOG_FORMAT="json")
    write_jpegs(tmp_path / "photos", 12)
    run("ingest", str(tmp_path / "photos"), env=env, check=True)
    port = free_port()
    worker = start_worker(env, "--metrics-port", str(port))
    metrics = f"http://127.0.0.1:{port}/metrics"
    wait_for(lambda: _answers(metrics), timeout=60, what="the worker's metrics port", processes=[worker])
    labels = {**MODEL}

    def all_done() -> dict | None:
        samples = scrape(metrics)
        return samples if value(samples, "pgclip_worker_jobs_total", **labels, outcome="done") == 12 else None

    done = wait_for(all_done, timeout=120, what="12 jobs done", processes=[worker])
    assert value(done, "pgclip_worker_jobs_total", **labels, outcome="failed") == 0
    for stage in STAGES:
        assert value(done, "pgclip_worker_stage_seconds_count", **labels, stage=stage) >= 3, stage
    assert value(done, "pgclip_worker_batch_size_sum", **labels) == 12
    assert value(done, "pgclip_worker_batch_size_bucket", **labels, le="4.0") == value(
        done, "pgclip_worker_batch_size_count", **labels)
    (worker_id,) = label_values(done, "pgclip_worker_info", "worker")
    # One scrape reads the queue before the worker's counters, so the scrape that first counts
    # 12 may hold queue figures from just before the last batch committed; the worker commits
    # before it counts, so any scrape begun after that one sees all 12 done in the queue.
    after = scrape(metrics)
    assert value(after, "pgclip_database_up") == 1
    assert value(after, "pgclip_queue_jobs", **MODEL, state="done") == 12

    worker.send_signal(signal.SIGTERM)
    stdout, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, stderr[-3000:]
    assert f"worker {worker_id}: 12 done" in stdout  # the command's own report stays plain text
    lines = json_lines(stderr)
    started = next(line for line in lines if line["message"].startswith(f"worker {worker_id} on "))
    assert started["level"] == "INFO" and started["logger"] == "pgclip.worker" and started["pid"] == worker.pid
    assert all(line["worker"] == worker_id for line in lines[lines.index(started):])


def test_concurrent_workers_serve_their_metrics_on_consecutive_ports(db_url, tmp_path):
    env = env_for(db_url, tmp_path, PGCLIP_BATCH_SIZE="2")
    write_jpegs(tmp_path / "photos", 16)
    port = _two_free_ports()
    supervisor = start_worker({**env, "PGCLIP_WORKER_METRICS_PORT": str(port)}, "--concurrency", "2")
    urls = [f"http://127.0.0.1:{port + i}/metrics" for i in range(2)]
    # Each port answers from its child's start, and names its worker once the model is loaded.
    ids = [wait_for(lambda: _answers(url) and label_values(scrape(url), "pgclip_worker_info", "worker"),
                    timeout=120, what=url, processes=[supervisor]) for url in urls]
    assert len(ids[0] | ids[1]) == 2  # two workers, one on each port
    run("ingest", str(tmp_path / "photos"), env=env, check=True)

    def done_per_child() -> list[float]:
        return [value(scrape(url), "pgclip_worker_jobs_total", **MODEL, outcome="done") for url in urls]

    wait_for(lambda: sum(done_per_child()) == 16, timeout=120, what="16 jobs done", processes=[supervisor])
    supervisor.send_signal(signal.SIGTERM)
    _, stderr = supervisor.communicate(timeout=60)
    assert supervisor.returncode == 0, stderr[-3000:]


def test_a_metrics_port_already_taken_is_a_one_line_error(db_url, tmp_path):
    env = env_for(db_url, tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        single = run("worker", "--metrics-port", str(port), env=env)
        assert_one_line_error(single, f"cannot serve metrics on 127.0.0.1:{port}")
        several = run("worker", "--concurrency", "2", "--metrics-port", str(port), env=env)
        assert_one_line_error(several, f"cannot serve metrics on 127.0.0.1:{port}")
    with psycopg.connect(db_url) as conn:  # neither claimed anything
        assert conn.execute("SELECT count(*) FROM pgclip.embedding_jobs WHERE state <> 'pending'").fetchone()[0] == 0


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _two_free_ports() -> int:
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise AssertionError("no two consecutive free ports")
