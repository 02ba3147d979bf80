"""Dead workers' leases and lost claims (``orphaned_workers``, ``reap``, ``release_strays`` in
db/sql/queue.sql) on a real PostgreSQL, and the names that make a worker's sessions findable."""

from __future__ import annotations

import logging
import socket

from pgclip.db import queue
from pgclip.db.engine import connect
from pgclip.workers import liveness
from pgclip.workers.reconnect import Outage
from tests.integration.test_queue import claim, enqueue_images, jobs, model  # noqa: F401  (fixture)


def test_a_workers_leases_are_reaped_only_once_it_has_no_session(conn, model, db_url):  # noqa: F811
    enqueue_images(conn, model, 4)
    alive, dead = "host:1:aaaaaa", "host:2:bbbbbb"
    with connect(db_url, app_name=liveness.app_name(alive)):  # the live worker's session, seen by everyone
        claim(conn, model, worker=alive, limit=2)
        claim(conn, model, worker=dead, limit=2)
        with conn.transaction():
            assert queue.orphaned_workers(conn) == {dead}
            # Even when asked to, reap leaves a worker that has a session alone.
            assert queue.reap(conn, [alive, dead]) == {dead: 2}
        with conn.transaction():
            assert queue.orphaned_workers(conn) == set()  # reaped leases are expired: nothing more to do
            taken = claim(conn, model, worker="rescuer", limit=10)
    # The dead worker's jobs were claimable at once and the claim counted a second attempt.
    assert sorted(j.attempts for j in taken) == [2, 2]
    assert {locked_by for _, _, locked_by, _ in jobs(conn).values()} == {alive, "rescuer"}


def test_release_strays_gives_back_what_a_worker_does_not_hold_with_its_attempt(conn, model):  # noqa: F811
    enqueue_images(conn, model, 3)
    claimed = claim(conn, model, worker="w1", limit=3)
    kept = claimed[0].id
    with conn.transaction():
        strays = queue.release_strays(conn, model_id=model.id, worker="w1", held=[kept])
    assert strays == {j.id for j in claimed[1:]}
    states = sorted(state_attempts[:2] for state_attempts in jobs(conn).values())
    assert states == [("leased", 1), ("pending", 0), ("pending", 0)]


def test_a_worker_id_fits_postgresqls_application_name_whatever_the_host(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "ünïcode-" + "very-long-host-name." * 10)
    worker = liveness.worker_id()
    name = liveness.app_name(worker)
    assert len(name.encode()) <= 63 and name.isascii()
    assert name == f"pgclip-worker[{worker}]" and worker.split(":")[1].isdigit()  # pid kept whole


def test_an_outage_is_logged_once_when_it_ends_and_a_stale_connection_is_not_another(caplog):
    outage = Outage()
    caplog.set_level(logging.WARNING, "pgclip.worker")
    started = outage.up_since + 1
    for _ in range(5):  # attempt after attempt while the server is away: quiet
        outage.failed(ConnectionError("connection refused"), started)
    outage.connected()
    outage.connected()
    stale_since = outage.up_since - 0.5  # a connection made before the outage ended, found broken afterwards
    outage.failed(ConnectionError("server closed the connection unexpectedly"), stale_since)
    outage.connected()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("database unavailable for") and "connection refused" in lines[0]
    assert outage.count == 1
