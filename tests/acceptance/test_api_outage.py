"""`pgclip serve` while its PostgreSQL crash-restarts and while it is down for a while.

The server under test has a PostgreSQL of its own (``tests/outage.py``) that these
tests crash; clients keep sending requests throughout, as real ones would.
"""

from __future__ import annotations

import collections
import threading
import time

import httpx
import pytest

from tests.acceptance.test_api import free_port, start_server
from tests.acceptance.test_cli_db import run
from tests.images import write_jpegs
from tests.outage import RestartablePostgres
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

CLIENT_TIMEOUT = 10.0  # seconds: a request that hangs longer than this counts as a hang
CLIENTS = 8


@pytest.fixture(scope="module")
def outage_server(tmp_path_factory):
    """(RestartablePostgres, base URL, an image id) for a server over a few embedded images."""
    tmp = tmp_path_factory.mktemp("outage")
    pg = RestartablePostgres()
    db_url = pg.start()
    port = free_port()
    env = {"PGCLIP_DATABASE_URL": db_url, "PGCLIP_DATA_DIR": str(tmp / "data"), "PGCLIP_MODEL": "test-tiny",
           "PGCLIP_PORT": str(port)}
    try:
        run("migrate", env=env, check=True)
        write_jpegs(tmp / "photos", 6, size=(96, 64))
        run("ingest", str(tmp / "photos"), env=env, check=True)
        run("worker", "--until-empty", env=env, check=True, timeout=300)
        proc, url = start_server(env, port)
        try:
            image_id = httpx.post(f"{url}/api/search", json={"text": "a photo", "k": 1}).json()["results"][0]["id"]
            yield pg, url, image_id, proc
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    finally:
        pg.close()


def _requests(image_id: int) -> list[tuple[str, str, dict]]:
    return [
        ("search", "POST /api/search", {"json": {"text": "a dog", "k": 3}}),
        ("caption search", "POST /api/search", {"json": {"caption_query": "dog", "k": 3}}),
        ("image", f"GET /api/images/{image_id}", {}),
        ("thumbnail", f"GET /api/images/{image_id}/thumbnail", {}),
        ("similar", f"GET /api/images/{image_id}/similar", {}),
        ("status", "GET /api/status", {}),
        ("models", "GET /api/models", {}),
        ("readyz", "GET /readyz", {}),
    ]


class Load:
    """CLIENTS threads sending the mix in a loop; every answer (or hang) is recorded."""

    def __init__(self, url: str, image_id: int) -> None:
        self.url = url
        self.mix = _requests(image_id)
        self.stop = threading.Event()
        self.answers: list[tuple[float, str, int, httpx.Response | None]] = []
        self.hangs: list[str] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(CLIENTS)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=CLIENT_TIMEOUT * 2)

    def _loop(self, offset: int) -> None:
        with httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT) as client:
            i = offset
            while not self.stop.is_set():
                kind, route, kwargs = self.mix[i % len(self.mix)]
                i += 1
                method, path = route.split(" ", 1)
                try:
                    response = client.request(method, path, **kwargs)
                except httpx.TimeoutException:
                    with self._lock:
                        self.hangs.append(route)
                    continue
                except httpx.TransportError:  # the API process itself must not drop connections
                    with self._lock:
                        self.answers.append((time.monotonic(), kind, -1, None))
                    continue
                with self._lock:
                    self.answers.append((time.monotonic(), kind, response.status_code, response))
                time.sleep(0.01)

    def statuses(self) -> collections.Counter:
        with self._lock:
            return collections.Counter(status for _, _, status, _ in self.answers)

    def count_after(self, t0: float) -> int:
        with self._lock:
            return sum(1 for t, *_ in self.answers if t > t0)


def _assert_clean_503s(load: Load) -> None:
    for _, kind, status, response in load.answers:
        assert status == -1 or status < 500 or status == 503, (kind, status, response.text if response else "")
        assert status != -1, f"{kind}: the API dropped the connection"
        if status == 503:
            assert response.headers.get("retry-after"), (kind, response.headers)
            body = response.json()
            assert body["status_code"] == 503 and "database" in body["detail"].lower(), body


def _wait_until(condition, timeout: float, what: str) -> float:
    """Seconds until ``condition()`` held (measured, printed, never asserted)."""
    start = time.monotonic()
    wait_for(condition, timeout=timeout, interval=0.1, what=what)
    return time.monotonic() - start


def _search_ok(url: str) -> bool:
    try:
        return httpx.post(f"{url}/api/search", json={"text": "a cat", "k": 2}, timeout=CLIENT_TIMEOUT).status_code == 200
    except httpx.HTTPError:
        return False


def test_crash_restarts_under_load_give_503_never_500(outage_server):
    pg, url, image_id, _ = outage_server
    with Load(url, image_id) as load:
        _wait_until(lambda: load.count_after(0) > 50, 60, "load started")
        for _ in range(3):
            pg.crash_restart()
            mark = time.monotonic()
            _wait_until(lambda: load.count_after(mark) > 40, 60, "answers after the restart")
    statuses = load.statuses()
    print(f"\nanswers by status across 3 crash-restarts: {dict(statuses)}")
    assert not load.hangs, load.hangs
    _assert_clean_503s(load)
    assert statuses[200] > 100
    assert _search_ok(url)


def test_outage_answers_503_fast_and_the_same_process_recovers(outage_server):
    pg, url, image_id, proc = outage_server
    with Load(url, image_id) as load:
        _wait_until(lambda: load.count_after(0) > 20, 60, "load started")
        pg.down()
        down_at = time.monotonic()
        try:
            # While it is down: health stays up, readiness and every database route say 503.
            _wait_until(lambda: load.count_after(down_at + 2) > 30, 60, "answers during the outage")
            assert httpx.get(f"{url}/healthz", timeout=CLIENT_TIMEOUT).status_code == 200
            ready = httpx.get(f"{url}/readyz", timeout=CLIENT_TIMEOUT)
            assert ready.status_code == 503 and ready.headers.get("retry-after"), ready.text
            during = [(kind, status) for t, kind, status, _ in load.answers if t > down_at + 2]
            assert during and all(status == 503 for _, status in during), collections.Counter(during)
            # Let the pool's reconnection backoff grow as in a long outage.
            time.sleep(8)
        finally:
            pg.up()
        back_at = time.monotonic()
        recovered = _wait_until(lambda: _search_ok(url), 60, "searches answer again after the outage")
    print(f"\noutage of {back_at - down_at:.1f} s: searches answered again {recovered:.2f} s after PostgreSQL "
          f"was back; answers by status: {dict(load.statuses())}")
    assert not load.hangs, load.hangs
    _assert_clean_503s(load)
    assert proc.poll() is None  # the same process, never restarted
    assert httpx.get(f"{url}/readyz", timeout=CLIENT_TIMEOUT).status_code == 200

