"""Real ``pgclip worker`` processes while their PostgreSQL crashes, restarts and goes away for a
while: a server of the test's own (``tests/outage.py``), broken under a running queue."""

from __future__ import annotations

import re
import signal
import time

import psycopg
import pytest

from tests.acceptance.test_cli_db import run
from tests.acceptance.test_worker_signals import logged_worker, outage_lines
from tests.acceptance.test_workers import assert_every_image_embedded_once, env_for, job_states
from tests.images import write_jpegs
from tests.outage import RestartablePostgres
from tests.waiting import wait_for

# alone: faults under load with time bounds; `make test` runs them after the parallel part.
pytestmark = [pytest.mark.slow, pytest.mark.alone]

OUTAGE_SECONDS = 20  # the long outage: ten times the workers' longest reconnection backoff


@pytest.fixture
def restartable(tmp_path):
    server = RestartablePostgres()  # its own folder: pytest may delete its tree while another session starts
    url = server.start()
    try:
        run("migrate", env=env_for(url, tmp_path, PGCLIP_PRETRAINED="random"), check=True)
        yield server, url
    finally:
        server.close()


def done_count(url: str) -> int:
    return job_states(url).get("done", 0)


def test_workers_ride_out_two_crash_restarts_and_a_long_outage_without_losing_or_failing_a_job(restartable, tmp_path):
    server, url = restartable
    env = env_for(url, tmp_path, PGCLIP_PRETRAINED="random", PGCLIP_BATCH_SIZE="4", PGCLIP_MODEL_THREADS="1")
    waves = [150, 100, 100, 100]  # images keep coming: a wave before each fault keeps work in flight through it
    write_jpegs(tmp_path / "photos", sum(waves), size=(800, 600))
    files = sorted((tmp_path / "photos").iterdir())
    n_ingested = 0

    def ingest_wave(i: int) -> None:
        nonlocal n_ingested
        wave = tmp_path / f"wave{i}"
        wave.mkdir()
        for f in files[n_ingested:n_ingested + waves[i]]:
            f.rename(wave / f.name)
        run("ingest", str(wave), env=env, check=True)
        n_ingested += waves[i]

    ingest_wave(0)
    # Three worker processes: a --concurrency parent with two children, and one on its own.
    group, group_log = logged_worker(env, tmp_path / "group.log", "--concurrency", "2")
    single, single_log = logged_worker(env, tmp_path / "single.log")
    faults: list[str] = []

    def fault_under_load(name: str, wave: int, fault) -> None:
        ingest_wave(wave)
        before = done_count(url)
        wait_for(lambda: done_count(url) >= before + 8, timeout=120, interval=0.02)  # busy on the new wave
        in_flight = job_states(url).get("leased", 0)
        started = time.monotonic()
        fault()
        faults.append(name)
        print(f"{name}: {in_flight} jobs leased when it struck; fault took {time.monotonic() - started:.1f}s")
        assert group.poll() is None and single.poll() is None

    claiming: set[str] = set()

    def every_worker_claiming() -> bool:  # a worker still loading its model would sleep through a fault
        with psycopg.connect(url) as conn:
            claiming.update(w for (w,) in conn.execute(
                "SELECT DISTINCT locked_by FROM pgclip.embedding_jobs WHERE state = 'leased'"))
        return len(claiming) >= 3

    wait_for(every_worker_claiming, timeout=180, interval=0.02)
    wait_for(lambda: done_count(url) >= 20, timeout=180, interval=0.02)
    fault_under_load("crash-restart 1", 1, server.crash_restart)
    fault_under_load("crash-restart 2", 2, server.crash_restart)

    def long_outage() -> None:
        server.down()
        deadline = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < deadline:  # the workers wait, alive, for the whole outage
            assert group.poll() is None and single.poll() is None
            time.sleep(0.5)
        server.up()

    fault_under_load(f"down for {OUTAGE_SECONDS}s", 3, long_outage)
    back = time.monotonic()
    wait_for(lambda: done_count(url) == n_ingested, timeout=300, interval=0.1)
    print(f"all {n_ingested} done {time.monotonic() - back:.1f}s after the server came back")

    assert group.poll() is None and single.poll() is None  # alive throughout
    assert_every_image_embedded_once(url, n_ingested)  # one vector and one thumbnail each, every job done
    with psycopg.connect(url) as conn:
        attempts = dict(conn.execute("SELECT attempts, count(*) FROM pgclip.embedding_jobs GROUP BY 1").fetchall())
    print(f"attempts per job: {attempts}")
    assert max(attempts) <= 2  # an outage may re-run a batch in hand, but burns nothing beyond that
    assert attempts.get(1, 0) >= 0.9 * n_ingested

    group.send_signal(signal.SIGTERM)
    single.send_signal(signal.SIGTERM)
    assert group.wait(timeout=60) == 0 and single.wait(timeout=60) == 0
    logs = group_log.read_text() + single_log.read_text()
    print("\n".join(line for line in logs.splitlines() if "unavailable" in line or "gone" in line))
    assert "Traceback" not in logs
    assert "is gone" not in logs  # no live worker's leases were reaped while it reconnected
    per_worker = outage_lines(logs)
    # One line per outage from each of the three workers: no line per attempt, no traceback.
    assert len(per_worker) == 3 and set(per_worker.values()) == {len(faults)}, per_worker
    away = [float(s) for s in re.findall(r"database unavailable for ([\d.]+)s", logs)]
    assert sum(1 for s in away if s >= OUTAGE_SECONDS - 1) == 3  # the long outage, measured as such
    assert job_states(url) == {"done": n_ingested}


def test_a_worker_started_while_the_database_is_down_waits_for_it(restartable, tmp_path):
    server, url = restartable
    env = env_for(url, tmp_path, PGCLIP_PRETRAINED="random")
    write_jpegs(tmp_path / "photos", 12)
    run("ingest", str(tmp_path / "photos"), env=env, check=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # the test server commits asynchronously: keep the ingest through a crash
    server.down()
    worker, log = logged_worker(env, tmp_path / "worker.log", "--concurrency", "2", "--until-empty")
    wait_for(lambda: "waiting for the database" in log.read_text(), timeout=60)
    time.sleep(3)  # a few of its (quiet) attempts
    assert worker.poll() is None
    server.up()
    assert worker.wait(timeout=180) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert text.count("waiting for the database") == 1, text  # said once, then quiet
    assert "Traceback" not in text
    assert job_states(url) == {"done": 12}
