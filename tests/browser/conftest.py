"""A real ``pgclip serve`` over a small embedded collection, and Chromium driven by Playwright.

The browser is Debian's ``/usr/bin/chromium`` (Playwright never downloads one);
without it, or without the ``playwright`` package, every browser test is skipped
with the reason (and fails with ``CI=true``: see tests/conftest.py).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from PIL import Image

from tests.acceptance.test_cli_db import run
from tests.chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: F401  (imported from here by tests)
from tests.images import jpeg_bytes, write_jpegs
from tests.waiting import wait_for

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PAGE_TIMEOUT_MS = 10_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dated_jpeg(seed: int, when: str, size: tuple[int, int] = (160, 120)) -> bytes:
    """A JPEG whose EXIF DateTime says when it was taken ("2021:06:01 12:00:00")."""
    image = Image.open(io.BytesIO(jpeg_bytes(seed, size)))
    exif = Image.Exif()
    exif[306] = when  # DateTime
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85, exif=exif)
    return out.getvalue()


def family_jpeg(family: int, member: int, size: tuple[int, int] = (160, 120)) -> bytes:
    """Pictures of one "family" share a colour layout and differ by a little noise and shift,
    so even the random-weight test model puts them close together (blocks in the heat-map)."""
    import numpy as np

    rng = np.random.default_rng(1000 + family)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 255, 3)
    freq = rng.uniform(2, 9, 2)
    shift = member * 0.35
    pixels = np.stack([base[c] + 90 * np.sin(freq[0] * x / w * np.pi + shift + c) * np.cos(freq[1] * y / h * np.pi + c)
                       for c in range(3)], axis=-1)
    pixels += np.random.default_rng(family * 100 + member).normal(0, 6, pixels.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=88)
    return out.getvalue()


CAPTIONS = [
    {"path": "photos/img0000.jpg", "captions": ["a brown dog on a sofa", "a sleepy pet"],
     "metadata": {"tag": "animal"}},
    {"path": "photos/img0001.jpg", "captions": ["a dog running on the beach"], "metadata": {"tag": "animal"}},
    {"path": "photos/img0002.jpg", "captions": ["a bowl of soup"], "metadata": {"tag": "food"}},
    {"path": "photos/img0003.jpg", "captions": ["a red bicycle against a wall"], "metadata": {"tag": "street"}},
    {"path": "photos/tall.jpg", "captions": ["a tall lighthouse"], "metadata": {"tag": "building"}},
    {"path": "photos/summer2019.jpg", "captions": ["a picnic in the park"], "metadata": {"tag": "people"}},
    {"path": "photos/summer2023.jpg", "captions": ["a picnic by the lake"], "metadata": {"tag": "people"}},
]


API_KEY = "browser-test-key-5d1f"  # the one key of the second ("keyed") server


class Served:
    """The running server: its URL, the pgclip environment, image ids by file name, the photo files.

    ``keyed_url`` is a second ``pgclip serve`` over the same database, also on 127.0.0.1 but with
    ``PGCLIP_API_KEYS`` set, so its writes need ``Authorization: Bearer API_KEY``.
    """

    def __init__(self, url: str, env: dict[str, str], ids: dict[str, int], photos: Path, keyed_url: str = "") -> None:
        self.url = url
        self.env = env
        self.ids = ids
        self.photos = photos
        self.keyed_url = keyed_url
        self.client = httpx.Client(base_url=url, timeout=30)


def _pgclip(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}
    return subprocess.Popen([sys.executable, "-m", "pgclip.cli", *args], env={**base, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _queue_empty(client: httpx.Client) -> bool:
    counts = client.get("/api/status").json()["models"][0]["counts"]
    return counts["pending"] == 0 and counts["leased"] == 0


def _add_broken_image(db_url: str, good: bytes) -> None:
    """Bytes that passed no ingest check (a restore, a hand-made row): the worker fails the job
    with its reason, so the status page has a failure to show."""
    with psycopg.connect(db_url) as conn:
        image_id = conn.execute(
            "INSERT INTO pgclip.images (sha256, source, byte_size, width, height, format, mime)"
            " VALUES (repeat('b', 64), 'broken.jpg', %s, 160, 120, 'JPEG', 'image/jpeg') RETURNING id",
            [len(good) // 3],
        ).fetchone()[0]
        conn.execute("INSERT INTO pgclip.image_blobs VALUES (%s, %s)", [image_id, good[: len(good) // 3]])
        conn.execute("INSERT INTO pgclip.embedding_jobs (image_id, model_id) SELECT %s, id FROM pgclip.models",
                     [image_id])


@pytest.fixture(scope="session")
def served(databases, tmp_path_factory) -> Iterator[Served]:
    """``pgclip serve`` and a running ``pgclip worker`` (test model) over 30 images ingested by the
    real CLI, plus one broken image whose job fails. The server starts while the CLI ingests; the
    worker keeps running, so an upload made by a test gets embedded as it would in production."""
    tmp = tmp_path_factory.mktemp("pages")
    db_url = databases.clone_template()
    port = free_port()
    env = {"PGCLIP_DATABASE_URL": db_url, "PGCLIP_DATA_DIR": str(tmp / "data"), "PGCLIP_MODEL": "test-tiny",
           "PGCLIP_PORT": str(port), "PGCLIP_UPLOAD_MAX_BYTES": "2000000"}
    photos = tmp / "photos"
    write_jpegs(photos, 18, size=(160, 120))
    (photos / "tall.jpg").write_bytes(jpeg_bytes(99, (60, 140)))
    (photos / "summer2019.jpg").write_bytes(dated_jpeg(201, "2019:07:14 15:30:00"))
    (photos / "summer2023.jpg").write_bytes(dated_jpeg(202, "2023:08:02 11:00:00"))
    for family in range(3):
        for member in range(3):
            (photos / f"family{family}-{member}.jpg").write_bytes(family_jpeg(family, member))
    (tmp / "captions.jsonl").write_text("\n".join(json.dumps(row) for row in CAPTIONS) + "\n")
    url = f"http://127.0.0.1:{port}"
    keyed_port = free_port()
    keyed_url = f"http://127.0.0.1:{keyed_port}"
    server = _pgclip(["serve"], env)
    # Started alongside (it costs no wall time): same database, but writes need the key.
    keyed = _pgclip(["serve"], {**env, "PGCLIP_PORT": str(keyed_port), "PGCLIP_API_KEYS": API_KEY})
    worker = None
    try:
        run("ingest", str(photos), "--captions", str(tmp / "captions.jsonl"), env=env, check=True)
        _add_broken_image(db_url, jpeg_bytes(7, (160, 120)))
        worker = _pgclip(["worker"], env)
        wait_for(lambda: _answers(f"{url}/readyz"), 90, 0.2, "pgclip serve coming up", [server])
        wait_for(lambda: _answers(f"{keyed_url}/readyz"), 90, 0.2, "pgclip serve (with PGCLIP_API_KEYS) coming up", [keyed])
        served = Served(url, env, {}, photos, keyed_url)
        wait_for(lambda: _queue_empty(served.client), 120, 0.2, "the worker embedding the collection", [worker, server])
        with psycopg.connect(db_url) as conn:
            served.ids = {Path(source).name: image_id
                          for image_id, source in conn.execute("SELECT id, source FROM pgclip.images ORDER BY id")}
        yield served
        served.client.close()
    finally:
        running = [p for p in (worker, server, keyed) if p is not None and p.poll() is None]
        for proc in running:  # both at once: the worker takes a moment to finish its batch
            proc.terminate()
        for proc in running:
            proc.wait(timeout=15)
        databases.drop(db_url)


class Console:
    """Every console message and uncaught error of a page; tests end with :meth:`assert_clean`."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.errors: list[str] = []
        self.allowed: list[str] = []

    def allow(self, fragment: str) -> None:
        """An error message containing ``fragment`` is expected (a test that provokes a 4xx)."""
        self.allowed.append(fragment)

    def assert_clean(self) -> None:
        unexpected = [e for e in self.errors if not any(a in e for a in self.allowed)]
        assert not unexpected, "console errors:\n" + "\n".join(unexpected)


@pytest.fixture
def console() -> Console:
    return Console()


def _context(browser, base_url: str, console: Console):
    """A fresh context (no shared storage) whose console, in every tab, goes to ``console``."""
    context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 860})
    context.set_default_timeout(PAGE_TIMEOUT_MS)

    def on_console(message) -> None:
        console.messages.append(f"{message.type}: {message.text}")
        if message.type == "error":
            console.errors.append(f"{message.text} ({message.location.get('url', '')})")

    context.on("console", on_console)  # every tab a test opens in this context
    context.on("weberror", lambda err: console.errors.append(f"uncaught: {err.error}"))
    return context


@pytest.fixture
def page(browser, served, console):
    """A fresh page (its own context: no shared storage) whose console goes to ``console``."""
    context = _context(browser, served.url, console)
    yield context.new_page()
    context.close()


@pytest.fixture
def keyed_page(browser, served, console):
    """A fresh page on the server whose writes need an API key (``served.keyed_url``)."""
    context = _context(browser, served.keyed_url, console)
    yield context.new_page()
    context.close()


def fake_map(page, real_id: int, n: int, seed: int) -> None:
    """Serve the page a PCA map of ``n`` points: ``n - 1`` made-up ones around the origin and the
    real image ``real_id`` far out in a corner, alone. A made-up point's thumbnail (asked on hover
    or at zoom) is any small picture."""
    rng = random.Random(seed)
    points = [{"id": 10_000_000 + i, "x": rng.gauss(0, 1), "y": rng.gauss(0, 1)} for i in range(n - 1)]
    points.append({"id": real_id, "x": 8.0, "y": 8.0})
    page.route("**/api/map?*", lambda route: route.fulfill(json={
        "projection": "pca", "method": "pca", "model": "test-tiny", "total": n, "points": points, "keys": []}))
    page.route(re.compile(r"/api/images/1\d{7}/thumbnail$"),
               lambda route: route.fulfill(body=jpeg_bytes(1, (32, 32)), content_type="image/jpeg"))


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
