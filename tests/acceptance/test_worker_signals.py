"""Stopping, killing and hanging real ``pgclip worker`` processes: Ctrl-C and SIGTERM give every
claimed job back, a worker killed with SIGKILL has its jobs taken over in seconds (not a
lease), and a hung worker is stopped by its watchdog and restarted by its parent."""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from tests.acceptance import test_workers
from tests.acceptance.test_cli_db import run
from tests.acceptance.test_workers import assert_every_image_embedded_once, env_for, job_states
from tests.images import write_jpegs
from tests.waiting import wait_for

# alone: faults under load with time bounds; `make test` runs them after the parallel part.
pytestmark = [pytest.mark.slow, pytest.mark.alone]


def logged_worker(env: dict[str, str], log: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """`pgclip worker ARGS` with stdout and stderr in ``log``, in a process group of its own
    (as a shell runs a command: a signal to the group never reaches the tests)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pgclip.cli", "worker", *args], env={**base, **env},
                                stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    test_workers._started.append(proc)  # killed if the test fails (its children follow: PDEATHSIG)
    return proc, log


def outage_lines(text: str) -> Counter:
    """Worker pid -> its "database unavailable for ..." lines."""
    return Counter(re.findall(r"pgclip-worker\[(\d+)\] WARNING database unavailable for", text))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    write_jpegs(folder, 240, size=(800, 600))
    return folder


def leased_and_pending_attempts(url: str) -> tuple[int, int | None]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT count(*) FILTER (WHERE state = 'leased'), max(attempts) FILTER (WHERE state = 'pending')"
            " FROM pgclip.embedding_jobs"
        ).fetchone()


@pytest.mark.parametrize("how", ["ctrl-c to the group", "sigterm to the parent", "sigterm twice to the group"])
def test_stopping_workers_gives_back_every_claimed_job_and_exits_0(db_url, tmp_path, photos, how):
    env = env_for(db_url, tmp_path, PGCLIP_BATCH_SIZE="8", PGCLIP_LEASE_SECONDS="300", PGCLIP_MODEL_THREADS="2")
    run("ingest", str(photos), env=env, check=True)
    proc, log = logged_worker(env, tmp_path / "worker.log", "--concurrency", "2")
    # Mid-run: vectors written, batches in hand.
    wait_for(lambda: job_states(db_url).get("done", 0) >= 8 and job_states(db_url).get("leased", 0) > 0,
             timeout=120, interval=0.02)
    started = time.monotonic()
    if how == "ctrl-c to the group":  # what a terminal does: the whole foreground process group
        os.killpg(proc.pid, signal.SIGINT)
    elif how == "sigterm to the parent":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGTERM)
    code = proc.wait(timeout=90)
    print(f"{how}: exited {code} after {time.monotonic() - started:.1f}s")
    text = log.read_text()
    assert code == 0, text[-3000:]
    leased, pending_attempts = leased_and_pending_attempts(db_url)
    assert leased == 0  # nothing left stranded behind a 300 s lease
    assert pending_attempts in (None, 0)  # what was given back did not spend an attempt
    # (A child still loading its model when the signal came held nothing and left quietly.)
    running = len(re.findall(r"INFO worker \S+ on ", text))
    summaries = len(re.findall(r"^worker \S+: \d+ done, .* released", text, re.MULTILINE))
    assert running >= 1
    if how == "sigterm twice to the group":  # each child finished its batch first, or was cut short and gave it back
        assert summaries + text.count("second signal: giving back the jobs in hand") >= running, text[-3000:]
    else:  # each child finished its batch in hand and printed its summary
        assert summaries == running, text[-3000:]
    assert "RuntimeWarning" not in text
    assert "Traceback" not in text
    states = job_states(db_url)
    assert states.get("pending", 0) > 0 and sum(states.values()) == 240  # stopped early, nothing lost


def test_a_killed_workers_jobs_are_taken_over_in_seconds_not_after_its_lease(db_url, tmp_path, photos):
    lease = 120
    env = env_for(db_url, tmp_path, PGCLIP_BATCH_SIZE="8", PGCLIP_LEASE_SECONDS=str(lease), PGCLIP_MODEL_THREADS="1")
    run("ingest", str(photos), env=env, check=True)
    proc, log = logged_worker(env, tmp_path / "worker.log", "--concurrency", "3")
    wait_for(lambda: job_states(db_url).get("done", 0) >= 16, timeout=180, interval=0.02)

    def busiest_worker():
        with psycopg.connect(db_url) as conn:
            return conn.execute(
                "SELECT locked_by, count(*) FROM pgclip.embedding_jobs WHERE state = 'leased'"
                " GROUP BY 1 ORDER BY 2 DESC LIMIT 1"
            ).fetchone()

    victim, held = wait_for(busiest_worker, timeout=60, interval=0.01)
    os.kill(int(victim.split(":")[-2]), signal.SIGKILL)
    killed, killed_wall = time.monotonic(), time.time()

    def still_leased_by_victim() -> int:
        with psycopg.connect(db_url) as conn:
            return conn.execute(
                "SELECT count(*) FROM pgclip.embedding_jobs WHERE state = 'leased' AND locked_by = %s", [victim]
            ).fetchone()[0]

    wait_for(lambda: still_leased_by_victim() == 0, timeout=lease, interval=0.05)
    taken_over = time.monotonic() - killed
    print(f"SIGKILL of a worker holding {held} jobs: all re-claimed {taken_over:.1f}s later (lease {lease}s)")
    # The log line checked below shows the reaper took them back, not the end of their lease.

    wait_for(lambda: job_states(db_url) == {"done": 240}, timeout=300, interval=0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert_every_image_embedded_once(db_url, 240)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT max(attempts) FROM pgclip.embedding_jobs").fetchone()[0] == 2
    text = log.read_text()
    gone = re.search(rf"^(\S+ \S+) \S+ WARNING worker {re.escape(victim)} is gone \(no database session\)", text, re.M)
    assert gone, text[-3000:]
    reaped = datetime.datetime.strptime(gone[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() - killed_wall
    print(f"its leases were expired by another worker (claimable) {reaped:.1f}s after the kill")
    assert "was killed by SIGKILL" in text and "starting another" in text  # its parent replaced it


def test_a_hung_worker_dumps_its_threads_exits_and_is_restarted(db_url, tmp_path):
    env = env_for(db_url, tmp_path, PGCLIP_BATCH_SIZE="4", PGCLIP_LEASE_SECONDS="120", PGCLIP_MODEL_THREADS="1")
    write_jpegs(tmp_path / "photos", 60, size=(400, 300))
    run("ingest", str(tmp_path / "photos"), env=env, check=True)
    proc, log = logged_worker(env, tmp_path / "worker.log", "--concurrency", "2", "--watchdog", "4")
    wait_for(lambda: job_states(db_url).get("leased", 0) > 0, timeout=120, interval=0.01)
    # A hang a worker cannot see through: row locks it waits for forever (as behind a stuck
    # transaction or a half-open connection). Its writes and lease renewals block.
    with psycopg.connect(db_url) as blocker:
        blocker.execute("SELECT id FROM pgclip.embedding_jobs WHERE state = 'leased' FOR UPDATE").fetchall()
        wait_for(lambda: "is hung" in log.read_text(), timeout=120, interval=0.2)
        wait_for(lambda: "starting another" in log.read_text(), timeout=60, interval=0.2)
        blocker.rollback()
    wait_for(lambda: job_states(db_url) == {"done": 60}, timeout=240, interval=0.1)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    text = log.read_text()
    assert "no progress for" in text and "Thread 0x" in text  # the dump says where it was stuck
    assert "was hung (its watchdog stopped it)" in text
    assert_every_image_embedded_once(db_url, 60)
