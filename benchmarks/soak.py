"""Soak: a bounded run of mixed HTTP load on ``pgclip serve`` and two workers, with one database crash.

    .venv/bin/python benchmarks/soak.py                  # 10 minutes of load (about 13 in all)
    .venv/bin/python benchmarks/soak.py --minutes 2      # a quick look
    .venv/bin/python benchmarks/soak.py --minutes 2 --no-crash   # the same load without the crash
    .venv/bin/python benchmarks/soak.py --json > soak.json   # the report still goes to stderr

Loopback only, nothing outside this machine. It starts its own embedded PostgreSQL in a temporary
folder (tests/outage.py's RestartablePostgres, restartable on the same port; fsync off as in the
tests, but synchronous_commit on: a commit the client was told of must survive the crash), runs
``pgclip migrate``, ingests --images generated JPEGs with captions, starts ``pgclip serve`` on a
free loopback port with an API key and two ``pgclip worker`` processes, all with the test model
(``PGCLIP_MODEL=test-tiny PGCLIP_PRETRAINED=random``, one torch thread each), and waits until the
starting collection is embedded. Then:

1. Warm-up (10 s of reads and searches from every client, not counted), then the start figures:
   RSS of the API and of each worker, connections by application (pg_stat_activity), and the
   search mix (below).
2. --minutes of load from --clients threads, each a loop bounded in count and time: text and
   hybrid searches, image searches (POST /api/search/image), uploads of new JPEGs (POST
   /api/images, retried like a client would: up to 3 attempts, honouring Retry-After), edits
   (PATCH), deletes (DELETE, of the soak's own uploads only), reads (GET /api/images/{id}) and
   thumbnails. At --crash-at of the run, ``pg_ctl restart -m immediate``: every session is cut
   off and the server recovers from its WAL. The outage window runs from the crash to the first
   success of a request sent after it, plus GRACE_S; a failure whose request overlaps it counts
   as inside.
3. Load stopped: the queue drained (bounded), the warm-up's read burst again (so that the pools
   are at their working size, as at the start), the end figures, then the search mix three more
   times: as the collection is, after VACUUM (ANALYZE), after REINDEX SCHEMA pgclip (fresh indexes
   at the final size). Start -> end as is is the whole growth; end as is -> fresh indexes is
   what churn (dead tuples, a graph grown by inserts and deletes) costs; start -> fresh indexes
   is what the larger collection costs. Each mix runs MIX_ROUNDS times; the lowest p50 counts.
4. Checks: no lost rows (every image an upload got 202 for exists unless the soak deleted it;
   every image has exactly one vector of the active model; no failed jobs), no duplicated rows
   (images by sha256, vectors or jobs per image and model, captions per image and text).

Printed per minute: p50/p95 latency of successful requests by kind beside the collection's size,
responses by status (5xx and connection errors inside and outside the outage window apart), the
cores busy (ours: this script, its children and the server; others: the rest of the machine).
Targets, each PASS or FAIL: no 5xx or connection error outside the outage window; no lost or
duplicated rows; RSS of each process grows under 10 % from the end of minute 1 to the end;
connections back to the start count. Nothing here asserts; the exit status is 0 either way.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# benchmarks/soak.py: this script's folder is first on sys.path; the repository root for tests.*.
import ingest as ingest_bench
import psutil
import psycopg
from ingest import CpuMeter, write_jpegs
from search import PGCLIP, REPO, free_port, log, machine_facts, percentiles, run_cli, timed

sys.path.insert(0, str(REPO))
from tests.images import jpeg_bytes  # noqa: E402
from tests.outage import RestartablePostgres  # noqa: E402

KINDS = {  # request kind -> share of the mix (weights)
    "text_search": 28, "image_search": 8, "upload": 12, "edit": 10, "delete": 5, "read": 20, "thumbnail": 17,
}
READ_ONLY = ("text_search", "image_search", "read", "thumbnail")  # the warm-up's mix
WORDS = ("dog cat beach mountain river city street car bicycle boat tree flower forest snow sunset night "
         "bridge tower house window door garden field horse bird fish bowl soup bread cake coffee table chair "
         "book lamp phone train plane bus road market child woman man team ball game music guitar piano "
         "painting statue church castle lake island desert cloud rain storm sky moon star").split()
IMAGE_SIZE = (160, 120)  # pixels of every generated JPEG (about 5 KB)
UPLOAD_SEED0, QUERY_SEED0 = 1_000_000, 9_000_000  # jpeg_bytes seeds: the uploads', the image queries'
API_KEY = "soak-key-not-secret"
THINK_S = 0.02  # each client's pause between requests
WARMUP_S = 10.0  # reads and searches before the start figures (the pool grows to its working size)
GRACE_S = 5.0  # seconds after the first success after the crash that still count as the outage
REQUEST_TIMEOUT_S = 30.0
UPLOAD_ATTEMPTS = 3
RETRY_AFTER_MAX_S = 5.0  # longest a client honours Retry-After
SAMPLE_EVERY_S = 5.0  # collection size sampled this often
READY_TIMEOUT_S = 300.0  # for `pgclip serve` to answer /readyz, and for the starting collection's vectors
DRAIN_TIMEOUT_S = 180.0  # for the queue to empty after the load
# For connections to come back to the start count: the API's pool closes a connection idle
# for db.pool.MAX_IDLE_SECONDS (30 s) one at a time, so two surplus ones take about a minute.
SETTLE_TIMEOUT_S = 120.0
PROBE_TEXT, PROBE_IMAGE = 60, 20  # queries of the search mix (each run once untimed, then timed)
MIX_ROUNDS = 3
RSS_GROWTH_MAX = 0.10
MONITOR_APP = "pgclip-soak-monitor"


# --- the collection the soak knows -------------------------------------------------------------


class Ledger:
    """Ids the soak knows: the starting collection (never deleted) and its own uploads, live,
    deleted (204) or uncertain (a DELETE that failed may or may not have happened)."""

    def __init__(self, initial: list[int]) -> None:
        self.lock = threading.Lock()
        self.initial = tuple(initial)
        self.live: list[int] = []
        self.uploaded: set[int] = set()
        self.deleted: set[int] = set()
        self.uncertain: set[int] = set()
        self._seeds = itertools.count(UPLOAD_SEED0)

    def next_seed(self) -> int:
        with self.lock:
            return next(self._seeds)

    def upload_ok(self, image_id: int) -> None:
        with self.lock:
            if image_id not in self.uploaded:
                self.uploaded.add(image_id)
                self.live.append(image_id)

    def any_id(self, rng: random.Random) -> int:
        with self.lock:
            i = rng.randrange(len(self.initial) + len(self.live))
            return self.initial[i] if i < len(self.initial) else self.live[i - len(self.initial)]

    def take_for_delete(self, rng: random.Random) -> int | None:
        """One of the soak's live uploads, taken out so that no other client deletes it too."""
        with self.lock:
            if not self.live:
                return None
            i = rng.randrange(len(self.live))
            self.live[i], self.live[-1] = self.live[-1], self.live[i]
            return self.live.pop()

    def delete_done(self, image_id: int, status: int | str) -> None:
        with self.lock:
            (self.deleted if status == 204 else self.uncertain).add(image_id)


@dataclass
class Record:
    kind: str
    t0: float  # perf_counter at send
    t1: float  # and at the answer (or the failure)
    status: int | str  # HTTP status, or "conn" / "timeout"


def _ok(status: int | str) -> bool:
    return isinstance(status, int) and 200 <= status < 300


def _server_error(status: int | str) -> bool:
    return not isinstance(status, int) or status >= 500


# --- the clients -------------------------------------------------------------------------------


def _caption(rng: random.Random) -> str:
    return " ".join(rng.sample(WORDS, 3))


class Client:
    """One client thread's requests; each call records one Record per HTTP attempt."""

    def __init__(self, base: str, ledger: Ledger, records: list[Record], seed: int, query_images: list[bytes]) -> None:
        self.http = httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S)
        self.auth = {"Authorization": f"Bearer {API_KEY}"}
        self.ledger, self.records, self.rng, self.query_images = ledger, records, random.Random(seed), query_images
        self.pause_until = 0.0  # a Retry-After in force

    def _send(self, kind: str, method: str, url: str, **kwargs) -> httpx.Response | None:
        t0 = time.perf_counter()
        try:
            response = self.http.request(method, url, **kwargs)
            status: int | str = response.status_code
        except httpx.TimeoutException:
            response, status = None, "timeout"
        except httpx.TransportError:
            response, status = None, "conn"
        self.records.append(Record(kind, t0, time.perf_counter(), status))
        if response is not None and (retry := response.headers.get("retry-after")):
            with contextlib.suppress(ValueError):
                self.pause_until = time.perf_counter() + min(float(retry), RETRY_AFTER_MAX_S)
        return response

    def one(self, kind: str) -> None:
        rng, ledger = self.rng, self.ledger
        if kind == "text_search":
            body: dict = {"text": " ".join(rng.sample(WORDS, 2)), "k": 10}
            if rng.random() < 0.3:
                body["caption_query"] = rng.choice(WORDS)
            self._send(kind, "POST", "/api/search", json=body)
        elif kind == "image_search":
            files = {"file": ("query.jpg", rng.choice(self.query_images), "image/jpeg")}
            self._send(kind, "POST", "/api/search/image", files=files, data={"options": json.dumps({"k": 10})})
        elif kind == "upload":
            seed = ledger.next_seed()
            data = jpeg_bytes(seed, IMAGE_SIZE)
            form = {"captions": json.dumps([_caption(rng)]), "metadata": json.dumps({"soak": "upload"})}
            for _ in range(UPLOAD_ATTEMPTS):  # a client retries a failed upload with the same bytes
                self._wait_retry_after()
                response = self._send(kind, "POST", "/api/images", headers=self.auth, data=form,
                                      files={"file": (f"soak-{seed}.jpg", data, "image/jpeg")})
                if response is not None and response.status_code == 202:
                    ledger.upload_ok(response.json()["id"])
                    return
                if response is not None and response.status_code < 500:
                    return
                time.sleep(0.5)
        elif kind == "edit":
            body = {"metadata": {"soak_edit": rng.randrange(1_000_000)}, "captions_add": [_caption(rng)]}
            self._send(kind, "PATCH", f"/api/images/{ledger.any_id(rng)}", headers=self.auth, json=body)
        elif kind == "delete":
            image_id = ledger.take_for_delete(rng)
            if image_id is not None:
                response = self._send(kind, "DELETE", f"/api/images/{image_id}", headers=self.auth)
                ledger.delete_done(image_id, "conn" if response is None else response.status_code)
        elif kind == "read":
            self._send(kind, "GET", f"/api/images/{ledger.any_id(rng)}")
        elif kind == "thumbnail":  # the starting collection's, all embedded before the load
            self._send(kind, "GET", f"/api/images/{rng.choice(ledger.initial)}/thumbnail")

    def _wait_retry_after(self) -> None:
        wait = self.pause_until - time.perf_counter()
        if wait > 0:
            time.sleep(wait)

    def run(self, kinds: dict[str, int], deadline: float, max_requests: int) -> None:
        names, weights = list(kinds), list(kinds.values())
        for _ in range(max_requests):
            if time.perf_counter() >= deadline:
                break
            self._wait_retry_after()
            self.one(self.rng.choices(names, weights)[0])
            time.sleep(THINK_S)
        self.http.close()


def run_clients(base: str, ledger: Ledger, n: int, kinds: dict[str, int], seconds: float, seed: int,
                query_images: list[bytes]) -> tuple[list[threading.Thread], list[list[Record]], float]:
    """Start n client threads for ``seconds``; returns them, their records and the deadline."""
    deadline = time.perf_counter() + seconds
    max_requests = int(seconds / THINK_S) + 1  # a bound the deadline reaches first
    threads, all_records = [], []
    for i in range(n):
        records: list[Record] = []
        client = Client(base, ledger, records, seed * 1000 + i, query_images)
        thread = threading.Thread(target=client.run, args=(kinds, deadline, max_requests), name=f"client-{i}",
                                  daemon=True)
        thread.start()
        threads.append(thread)
        all_records.append(records)
    return threads, all_records, deadline


# --- the processes and the database ------------------------------------------------------------


def monitor(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, connect_timeout=2, application_name=MONITOR_APP)


def collection_counts(url: str) -> dict[str, int]:
    with monitor(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM pgclip.images),"
            " (SELECT count(*) FROM pgclip.embeddings e"
            "  JOIN pgclip.models m ON m.id = e.model_id AND m.state = 'active'),"
            " (SELECT count(*) FROM pgclip.embedding_jobs WHERE state IN ('pending', 'leased')),"
            " (SELECT count(*) FROM pgclip.embedding_jobs WHERE state = 'failed')"
        ).fetchone()
    return dict(zip(("images", "embedded", "open_jobs", "failed_jobs"), row, strict=True))


def wait_for_queue(url: str, timeout: float, procs: Processes) -> tuple[dict[str, int], float]:
    """Poll until no job is open (or ``timeout``, or every worker has exited); the last counts and
    the seconds waited."""
    t0 = time.perf_counter()
    counts: dict[str, int] = {}
    workers = [p for label, p in procs.procs.items() if label.startswith("worker")]
    while time.perf_counter() - t0 < timeout and any(p.poll() is None for p in workers):
        with contextlib.suppress(psycopg.OperationalError):
            counts = collection_counts(url)
            if counts["open_jobs"] == 0:
                break
        time.sleep(1.0)
    return counts, time.perf_counter() - t0


class Processes:
    """``pgclip serve`` and the workers, with their logs; labels by pid for pg_stat_activity."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env, self.tmp = env, tmp
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, label: str, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        log_file = (self.tmp / f"{label}.log").open("w")
        proc = subprocess.Popen([*PGCLIP, *args], env={**self.env, **(extra_env or {})}, cwd=REPO,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[label] = proc
        return proc

    def labels_by_pid(self) -> dict[int, str]:
        return {p.pid: label for label, p in self.procs.items()}

    def rss_mib(self) -> dict[str, float | None]:
        """Resident memory of each process and its children, MiB (None: it has exited)."""
        out: dict[str, float | None] = {}
        for label, proc in self.procs.items():
            try:
                root = psutil.Process(proc.pid)
                tree = [root, *root.children(recursive=True)]
                out[label] = sum(p.memory_info().rss for p in tree) / 2**20
            except psutil.Error:
                out[label] = None
        return out

    def log_problems(self, label: str, limit: int = 4) -> tuple[int, list[str]]:
        """(lines that report an error or a traceback, the first few distinct ones)."""
        path = self.tmp / f"{label}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        bad = [ln for ln in lines if re.search(r"\b(ERROR|CRITICAL|Traceback)\b", ln)]
        seen: list[str] = []
        for line in bad:
            short = re.sub(r"^\S+ \S+ ", "", line)[:160]
            if short not in seen:
                seen.append(short)
        return len(bad), seen[:limit]

    def stop(self) -> dict[str, int | None]:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        codes = {}
        for label, proc in self.procs.items():
            try:
                codes[label] = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                codes[label] = proc.wait(timeout=10)
        return codes


def wait_ready(base: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.perf_counter() + READY_TIMEOUT_S
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"`pgclip serve` exited with status {proc.returncode}: {log_path.read_text()[-500:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"`pgclip serve` did not become ready in {READY_TIMEOUT_S:.0f} s")


def connections(url: str, labels: dict[int, str], *, states: bool = False) -> dict[str, int]:
    """Client connections to the soak's database by application, pids replaced by process labels
    (``states``: by application and state: idle, active, idle in transaction)."""
    with monitor(url) as conn:
        rows = conn.execute(
            "SELECT application_name, state, count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND backend_type = 'client backend'"
            " AND application_name <> %s GROUP BY 1, 2", [MONITOR_APP],
        ).fetchall()
    out: collections.Counter[str] = collections.Counter()
    for name, state, count in rows:
        match = re.match(r"(pgclip-[\w-]+)\[[^:\]]*:(\d+)[^\]]*\]", name or "")  # pgclip-ROLE[host:pid...]
        key = f"{labels[int(match[2])]}: {match[1]}" if match and int(match[2]) in labels else name or "(no name)"
        out[f"{key} ({state})" if states else key] += count
    return dict(sorted(out.items()))


def start_connections(url: str, labels: dict[int, str], samples: int = 5) -> dict[str, int]:
    """The most connections each application held over ``samples`` looks a second apart (a worker
    opens some only now and then: the start is what it holds at most, the end must come back to it)."""
    most: dict[str, int] = {}
    for i in range(samples):
        for key, n in connections(url, labels).items():
            most[key] = max(n, most.get(key, 0))
        if i < samples - 1:
            time.sleep(1.0)
    return most


def back_to(start: dict[str, int], end: dict[str, int]) -> bool:
    """No application holds more connections than at the start, and none is new."""
    return set(end) <= set(start) and all(end[k] <= start[k] for k in end)


def postmaster_pid(pgdata: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    return None


# --- the search mix, and the end checks --------------------------------------------------------


def search_mix(base: str, texts: list[str], images: list[bytes]) -> dict:
    """p50/p95 ms of the same text and image searches, one at a time, one client; each query runs
    once untimed first (the API caches text vectors: this times the search, not the encoder).
    MIX_ROUNDS rounds, the one with the lowest p50 counts (others share this machine); "others":
    the cores the rest of the machine kept busy meanwhile."""
    with CpuMeter() as cpu:
        rounds = [_search_round(base, texts, images) for _ in range(MIX_ROUNDS)]
    best = {kind: min((r[kind] for r in rounds), key=lambda pair: pair[0]) for kind in ("text", "image")}
    return {**best, "others": cpu.other}


def _search_round(base: str, texts: list[str], images: list[bytes]) -> dict[str, tuple[float, float]]:
    with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S) as http:
        def text(q: int) -> list[int]:
            r = http.post("/api/search", json={"text": texts[q], "k": 10})
            r.raise_for_status()
            return [hit["id"] for hit in r.json()["results"]]

        def image(q: int) -> list[int]:
            r = http.post("/api/search/image", files={"file": ("q.jpg", images[q], "image/jpeg")},
                          data={"options": json.dumps({"k": 10})})
            r.raise_for_status()
            return [hit["id"] for hit in r.json()["results"]]

        return {"text": percentiles(timed(text, len(texts), warmup=len(texts))[1]),
                "image": percentiles(timed(image, len(images), warmup=len(images))[1])}


def table_sizes(url: str) -> dict[str, dict]:
    with monitor(url) as conn:
        rows = conn.execute(
            "SELECT s.relname, pg_total_relation_size(s.relid) / 1048576.0, s.n_dead_tup, s.n_live_tup"
            " FROM pg_stat_user_tables s WHERE s.schemaname = 'pgclip'"
            " AND s.relname IN ('images', 'embeddings', 'captions', 'embedding_jobs', 'thumbnails', 'image_blobs')"
            " ORDER BY 1"
        ).fetchall()
    return {name: {"mib": float(mib), "dead": dead, "live": live} for name, mib, dead, live in rows}


def end_checks(url: str, ledger: Ledger) -> dict:
    with monitor(url) as conn:
        model_id = conn.execute("SELECT id FROM pgclip.models WHERE state = 'active'").fetchone()[0]
        expected = sorted((ledger.uploaded - ledger.deleted - ledger.uncertain) | set(ledger.initial))
        found = {r[0] for r in conn.execute("SELECT id FROM pgclip.images WHERE id = ANY(%s::bigint[])", [expected])}
        resurrected = conn.execute("SELECT count(*) FROM pgclip.images WHERE id = ANY(%s::bigint[])",
                                   [sorted(ledger.deleted)]).fetchone()[0]
        vectors = conn.execute(
            "SELECT count(*) FILTER (WHERE n = 0), count(*) FILTER (WHERE n > 1) FROM ("
            " SELECT i.id, count(e.image_id) AS n FROM pgclip.images i"
            " LEFT JOIN pgclip.embeddings e ON e.image_id = i.id AND e.model_id = %s GROUP BY i.id) s",
            [model_id],
        ).fetchone()
        jobs = dict(conn.execute("SELECT state, count(*) FROM pgclip.embedding_jobs GROUP BY 1").fetchall())
        failures = [r[0] for r in conn.execute(
            "SELECT DISTINCT left(coalesce(last_error, '(none)'), 160) FROM pgclip.embedding_jobs"
            " WHERE state = 'failed' LIMIT 3")]
        duplicates = dict(zip(("images by sha256", "vectors per image and model", "jobs per image and model",
                               "captions per image and text"), conn.execute(
            "SELECT (SELECT count(*) FROM (SELECT sha256 FROM pgclip.images GROUP BY 1 HAVING count(*) > 1) a),"
            " (SELECT count(*) FROM (SELECT 1 FROM pgclip.embeddings GROUP BY image_id, model_id"
            "   HAVING count(*) > 1) b),"
            " (SELECT count(*) FROM (SELECT 1 FROM pgclip.embedding_jobs GROUP BY image_id, model_id"
            "   HAVING count(*) > 1) c),"
            " (SELECT count(*) FROM (SELECT 1 FROM pgclip.captions GROUP BY image_id, text HAVING count(*) > 1) d)"
        ).fetchone(), strict=True))
    return {"expected": len(expected), "missing": len(expected) - len(found), "resurrected": resurrected,
            "not_embedded": vectors[0], "embedded_twice": vectors[1], "jobs": jobs, "failures": failures,
            "duplicates": duplicates, "uploaded": len(ledger.uploaded), "deleted": len(ledger.deleted),
            "uncertain_deletes": len(ledger.uncertain)}


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Outage:
    at_s: float | None = None  # seconds into the load
    restart_s: float | None = None  # pg_ctl restart -m immediate, until the server accepts connections
    first_ok_s: float | None = None  # first success of a request sent after the crash, from the crash
    window: tuple[float, float] | None = None  # perf_counter span counted as the outage
    error: str | None = None


@dataclass
class Minute:
    index: int
    counts: dict[str, int] = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)
    rss: dict[str, float | None] = field(default_factory=dict)


def soak(args: argparse.Namespace, tmp: Path) -> dict:
    results: dict = {"started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "minutes": args.minutes,
                     "clients": args.clients, "workers": args.workers, "images": args.images}
    # synchronous_commit on (as RestartablePostgres sets it): an acknowledged upload or delete must
    # survive the crash. fsync stays off (pg_ctl kills the server, not the machine).
    pg = RestartablePostgres(tmp / "pg")
    procs: Processes | None = None
    try:
        url = pg.start()
        ingest_bench.POSTMASTER_PID = postmaster_pid(pg.pgdata)
        port = free_port()
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}
        env = {**base_env, "PGCLIP_DATABASE_URL": url, "PGCLIP_DATA_DIR": str(tmp / "data"),
               "PGCLIP_MODEL": "test-tiny", "PGCLIP_PRETRAINED": "random", "PGCLIP_API_KEYS": API_KEY,
               "PGCLIP_TORCH_THREADS": "1"}
        t_setup = time.perf_counter()
        run_cli("migrate", env=env)
        with monitor(url) as conn:
            results["machine"] = machine_facts(conn)

        rng = random.Random(args.seed)
        folder = tmp / "collection"
        write_jpegs(folder, args.images, IMAGE_SIZE, args.seed)
        manifest = tmp / "captions.jsonl"
        manifest.write_text("".join(json.dumps({"path": f"collection/img{i:05d}.jpg", "captions": [_caption(rng)],
                                                "metadata": {"soak": "start"}}) + "\n" for i in range(args.images)))
        run_cli("ingest", str(folder), "--captions", str(manifest), env=env)

        procs = Processes(env, tmp)
        for w in range(1, args.workers + 1):
            procs.start(f"worker-{w}", "worker")
        api = procs.start("api", "serve", "--host", "127.0.0.1", "--port", str(port))
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, api, tmp / "api.log")
        counts, _ = wait_for_queue(url, READY_TIMEOUT_S, procs)
        if counts.get("open_jobs"):
            raise SystemExit(f"the starting collection was not embedded in {READY_TIMEOUT_S:.0f} s: {counts}")
        with monitor(url) as conn:
            initial = [r[0] for r in conn.execute("SELECT id FROM pgclip.images ORDER BY id")]
        results["setup_s"] = time.perf_counter() - t_setup
        log(f"set-up done in {results['setup_s']:.0f} s: {counts}")

        ledger = Ledger(initial)
        query_images = [jpeg_bytes(QUERY_SEED0 + i, IMAGE_SIZE) for i in range(max(PROBE_IMAGE, 20))]
        probe_rng = random.Random(args.seed + 1)
        probe_texts = [" ".join(probe_rng.sample(WORDS, 2)) for _ in range(PROBE_TEXT)]
        probe_images = query_images[:PROBE_IMAGE]

        threads, _, _ = run_clients(base, ledger, args.clients, {k: KINDS[k] for k in READ_ONLY}, WARMUP_S,
                                    args.seed, query_images)
        for t in threads:
            t.join()
        labels = procs.labels_by_pid()
        results["start"] = {"rss": procs.rss_mib(), "connections": start_connections(url, labels),
                            "mix": search_mix(base, probe_texts, probe_images), "counts": collection_counts(url)}
        log(f"start: {results['start']['counts']}, connections {results['start']['connections']}")

        # --- the load ---
        seconds = args.minutes * 60
        t_start = time.perf_counter()
        threads, record_lists, deadline = run_clients(base, ledger, args.clients, KINDS, seconds, args.seed + 2,
                                                      query_images)
        outage = Outage()
        stop = threading.Event()

        def crash() -> None:
            if args.no_crash or stop.wait(max(0.0, t_start + args.crash_at * seconds - time.perf_counter())):
                return
            t = time.perf_counter()
            outage.at_s = t - t_start
            try:
                pg.crash_restart()
                outage.restart_s = time.perf_counter() - t
                ingest_bench.POSTMASTER_PID = postmaster_pid(pg.pgdata)
            except Exception as exc:  # reported; the soak goes on
                outage.error = str(exc)
            log(f"database crashed and restarted at {outage.at_s:.0f} s ({outage.restart_s or 0:.1f} s)")

        samples: list[tuple[float, dict[str, int]]] = []

        def sample() -> None:
            while not stop.wait(SAMPLE_EVERY_S):
                with contextlib.suppress(psycopg.Error):
                    samples.append((time.perf_counter() - t_start, collection_counts(url)))

        helpers = [threading.Thread(target=crash, name="crash", daemon=True),
                   threading.Thread(target=sample, name="sample", daemon=True)]
        for h in helpers:
            h.start()
        minutes: list[Minute] = []
        for m in range(math.ceil(args.minutes)):
            end = min(t_start + 60 * (m + 1), deadline)
            with CpuMeter() as cpu:
                while time.perf_counter() < end and any(t.is_alive() for t in threads):
                    time.sleep(min(1.0, max(0.0, end - time.perf_counter())))
            minute = Minute(m + 1, cpu=cpu.as_dict(), rss=procs.rss_mib())
            minute.counts = samples[-1][1] if samples else {}
            minutes.append(minute)
            done = [r for rl in record_lists for r in list(rl) if r.t1 - t_start < 60 * (m + 1)]
            log(f"minute {m + 1}: {len(done)} requests so far, {minute.counts.get('images', '?')} images, "
                f"RSS {', '.join(f'{k} {v:.0f}' for k, v in minute.rss.items() if v)} MiB")
        for t in threads:
            t.join(timeout=REQUEST_TIMEOUT_S * UPLOAD_ATTEMPTS + 5)
        stop.set()
        for h in helpers:
            h.join(timeout=120)
        records = sorted((r for rl in record_lists for r in rl), key=lambda r: r.t1)
        results["load_s"] = time.perf_counter() - t_start

        # --- the outage window ---
        if outage.at_s is not None:
            t_crash = t_start + outage.at_s
            first_ok = next((r.t1 for r in records if r.t0 >= t_crash and _ok(r.status)), None)
            if first_ok is not None:
                outage.first_ok_s = first_ok - t_crash
                outage.window = (t_crash, first_ok + GRACE_S)
            else:  # never answered again: only the restart itself is excused
                outage.window = (t_crash, t_crash + (outage.restart_s or 0) + GRACE_S)
        results["outage"] = outage

        # --- the end ---
        drained, drain_s = wait_for_queue(url, DRAIN_TIMEOUT_S, procs)
        results["drain"] = {"seconds": drain_s, "counts": drained}
        # The same read burst as the warm-up, so that the pools are at their working size both times.
        threads, _, _ = run_clients(base, ledger, args.clients, {k: KINDS[k] for k in READ_ONLY}, WARMUP_S,
                                    args.seed + 3, query_images)
        for t in threads:
            t.join()
        start_conns = results["start"]["connections"]
        t_settle = time.perf_counter()
        while True:
            end_conns = connections(url, labels)
            if back_to(start_conns, end_conns) or time.perf_counter() - t_settle > SETTLE_TIMEOUT_S:
                break
            time.sleep(1.0)
        results["end"] = {"rss": procs.rss_mib(), "connections": end_conns, "counts": collection_counts(url),
                          "connection_states": connections(url, labels, states=True),
                          "alive": {k: p.poll() is None for k, p in procs.procs.items()}}
        results["sizes_before_vacuum"] = table_sizes(url)
        mixes = {"start": results["start"]["mix"], "end, as is": search_mix(base, probe_texts, probe_images)}
        with monitor(url) as conn:
            t = time.perf_counter()
            conn.execute("VACUUM (ANALYZE)")
            results["vacuum_s"] = time.perf_counter() - t
        mixes["end, after VACUUM (ANALYZE)"] = search_mix(base, probe_texts, probe_images)
        with monitor(url) as conn:
            t = time.perf_counter()
            conn.execute("REINDEX SCHEMA pgclip")
            results["reindex_s"] = time.perf_counter() - t
        mixes["end, fresh indexes (REINDEX)"] = search_mix(base, probe_texts, probe_images)
        results["mixes"] = mixes
        results["sizes_after"] = table_sizes(url)
        results["checks"] = end_checks(url, ledger)
        results["records"] = records
        results["minutes_detail"] = minutes
        results["t_start"] = t_start
    finally:
        if procs is not None:
            results["exit_codes"] = procs.stop()
            results["log_problems"] = {label: procs.log_problems(label) for label in procs.procs}
        pg.close()
    return results


# --- the report --------------------------------------------------------------------------------


def _ms(pair: tuple[float, float] | None) -> str:
    return "-" if pair is None else f"{pair[0]:.1f} / {pair[1]:.1f}"


def _status_key(status: int | str) -> tuple[int, str]:
    return (status, "") if isinstance(status, int) else (999, status)


def summarise(r: dict) -> dict:
    """Per-minute latencies and statuses, the outage split, RSS growth and the targets."""
    records: list[Record] = r["records"]
    t_start, outage = r["t_start"], r["outage"]
    n_minutes = len(r["minutes_detail"])

    def in_window(rec: Record) -> bool:
        return outage.window is not None and rec.t0 <= outage.window[1] and rec.t1 >= outage.window[0]

    per_minute = []
    for minute in r["minutes_detail"]:
        m = minute.index - 1
        recs = [x for x in records if min(int((x.t1 - t_start) // 60), n_minutes - 1) == m]
        latency = {}
        for kind in KINDS:
            ok = [x.t1 - x.t0 for x in recs if x.kind == kind and _ok(x.status)]
            latency[kind] = percentiles(ok) if ok else None
        statuses = collections.Counter(x.status for x in recs)
        failures_in = collections.Counter(x.status for x in recs if _server_error(x.status) and in_window(x))
        failures_out = collections.Counter(x.status for x in recs if _server_error(x.status) and not in_window(x))
        per_minute.append({"minute": minute.index, "requests": len(recs), "latency": latency,
                           "statuses": dict(sorted(statuses.items(), key=lambda kv: _status_key(kv[0]))),
                           "failures_in_outage": dict(failures_in), "failures_outside": dict(failures_out),
                           "counts": minute.counts, "cpu": minute.cpu, "rss": minute.rss})
    outside = sum(sum(m["failures_outside"].values()) for m in per_minute)
    inside = sum(sum(m["failures_in_outage"].values()) for m in per_minute)

    rss1 = r["minutes_detail"][0].rss if r["minutes_detail"] else {}
    growth = {}
    for label, end in r["end"]["rss"].items():
        first = rss1.get(label)
        growth[label] = None if not first or end is None else (end - first) / first
    checks = r["checks"]
    lost = checks["missing"] + checks["not_embedded"] + checks["jobs"].get("failed", 0) + checks["jobs"].get(
        "pending", 0) + checks["jobs"].get("leased", 0) + checks["resurrected"]
    dups = sum(checks["duplicates"].values()) + checks["embedded_twice"]
    start_c, end_c = r["start"]["connections"], r["end"]["connections"]
    conns_back = back_to(start_c, end_c)
    targets = [
        ("no 5xx or connection error outside the outage window", outside == 0,
         f"{outside} outside, {inside} inside"),
        ("no lost rows", lost == 0,
         f"{checks['missing']} uploads missing of {checks['expected']} expected, {checks['not_embedded']} images "
         f"without a vector, jobs {checks['jobs']}, {checks['resurrected']} deleted images back"),
        ("no duplicated rows", dups == 0, f"{checks['duplicates']}, {checks['embedded_twice']} images with 2+ vectors"),
        (f"RSS growth after minute 1 under {RSS_GROWTH_MAX:.0%}",
         all(g is not None and g < RSS_GROWTH_MAX for g in growth.values()),
         ", ".join(f"{k} {'exited' if g is None else f'{g:+.1%}'}" for k, g in growth.items())),
        ("connections back to the start count", conns_back,
         f"start {sum(start_c.values())}, end {sum(end_c.values())}"),
    ]
    return {"per_minute": per_minute, "failures_outside": outside, "failures_inside": inside,
            "rss_growth": growth, "targets": targets}


def print_report(r: dict, s: dict, out=sys.stdout) -> None:
    def p(line: str = "") -> None:
        print(line, file=out)

    machine = r.get("machine", {})
    p(f"pgclip soak, {r['started']}: {r['minutes']:g} min of load, {r['clients']} clients, {r['workers']} workers, "
      f"test-tiny; {machine.get('cores')} cores, {machine.get('memory_gib')} GiB, PostgreSQL "
      f"{machine.get('server_version')}, pgvector {machine.get('pgvector')}")
    p(f"set-up {r['setup_s']:.0f} s ({r['images']} images ingested and embedded); load {r['load_s']:.0f} s")
    p()
    p("Latency of successful requests, p50 / p95 ms, by minute (images: the collection at the minute's end):")
    p()
    kinds = list(KINDS)
    p("| min | images | embedded | requests | " + " | ".join(kinds) + " |")
    p("| ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in kinds) + " |")
    for m in s["per_minute"]:
        c = m["counts"]
        p(f"| {m['minute']} | {c.get('images', '?')} | {c.get('embedded', '?')} | {m['requests']} | "
          + " | ".join(_ms(m["latency"][k]) for k in kinds) + " |")
    p()
    p("Responses by status, by minute (5xx and connection errors split by the outage window); cores busy:")
    p()
    p("| min | statuses | failures in outage | failures outside | cores ours / others |")
    p("| ---: | --- | --- | --- | --- |")
    for m in s["per_minute"]:
        cpu = m["cpu"]
        cores = "?" if cpu.get("busy_cores") is None else f"{cpu['our_cores']:.2f} / {cpu['other_cores']:.2f}"
        p(f"| {m['minute']} | {_counts(m['statuses'])} | {_counts(m['failures_in_outage']) or '0'} | "
          f"{_counts(m['failures_outside']) or '0'} | {cores} |")
    o = r["outage"]
    p()
    if o.at_s is None:
        p("Outage: no crash happened (the load ended first).")
    else:
        first = "never" if o.first_ok_s is None else f"{o.first_ok_s:.1f} s after the crash"
        win = f"{o.window[0] - r['t_start']:.1f}-{o.window[1] - r['t_start']:.1f} s" if o.window else "?"
        p(f"Outage: pg_ctl restart -m immediate at {o.at_s:.1f} s into the load, server back after "
          f"{o.restart_s or float('nan'):.1f} s; first success of a request sent after it: {first}; window {win} "
          f"(+{GRACE_S:.0f} s grace){'; restart failed: ' + o.error if o.error else ''}")
    p()
    p("RSS, MiB (process and its children):")
    p()
    p("| process | start | after minute 1 | end | growth since minute 1 |")
    p("| --- | ---: | ---: | ---: | ---: |")
    rss1 = r["minutes_detail"][0].rss if r["minutes_detail"] else {}
    for label in r["start"]["rss"]:
        g = s["rss_growth"].get(label)
        p(f"| {label} | {_mib(r['start']['rss'].get(label))} | {_mib(rss1.get(label))} | "
          f"{_mib(r['end']['rss'].get(label))} | {'-' if g is None else f'{g:+.1%}'} |")
    p()
    p("Connections by application (pg_stat_activity; start: the most over 5 s after the warm-up; end: after the "
      f"queue drained and the same read burst, waiting up to {SETTLE_TIMEOUT_S:.0f} s):")
    p()
    p("| application | start | end |")
    p("| --- | ---: | ---: |")
    start_c, end_c = r["start"]["connections"], r["end"]["connections"]
    for name in sorted(set(start_c) | set(end_c)):
        p(f"| {name} | {start_c.get(name, 0)} | {end_c.get(name, 0)} |")
    p(f"| total | {sum(start_c.values())} | {sum(end_c.values())} |")
    p()
    p("At the end, by state: " + _counts(r["end"]["connection_states"]))
    p()
    sc, ec = r["start"]["counts"], r["end"]["counts"]
    p(f"Search mix ({PROBE_TEXT} text, {PROBE_IMAGE} image searches, one client; p50 / p95 ms); collection "
      f"{sc['images']} images at the start, {ec['images']} at the end (VACUUM {r['vacuum_s']:.1f} s, "
      f"REINDEX {r['reindex_s']:.1f} s):")
    p()
    p("| when | text | image | text p50 vs start | others' cores |")
    p("| --- | ---: | ---: | ---: | ---: |")
    t0 = r["mixes"]["start"]["text"][0]
    for label, mix in r["mixes"].items():
        others = "?" if mix["others"] is None else f"{mix['others']:.2f}"
        p(f"| {label} | {_ms(mix['text'])} | {_ms(mix['image'])} | {mix['text'][0] / t0:.2f} | {others} |")
    before, after = r["sizes_before_vacuum"], r["sizes_after"]
    p()
    p("Tables at the end (MiB with indexes; dead tuples before VACUUM): " + ", ".join(
        f"{name} {before[name]['mib']:.1f} -> {after[name]['mib']:.1f} ({before[name]['dead']} dead)"
        for name in before))
    c = r["checks"]
    p()
    p(f"Checks: {c['uploaded']} uploads answered 202, {c['deleted']} deleted (204), {c['uncertain_deletes']} "
      f"deletes failed; queue drained in {r['drain']['seconds']:.0f} s; jobs {c['jobs']}"
      + (f"; failures: {c['failures']}" if c["failures"] else ""))
    alive = r["end"]["alive"]
    p("Processes at the end: " + ", ".join(f"{k} {'running' if v else 'EXITED'}" for k, v in alive.items())
      + "; exit codes after SIGTERM: " + ", ".join(f"{k} {v}" for k, v in r.get("exit_codes", {}).items()))
    for label, (n, first) in r.get("log_problems", {}).items():
        if n:
            p(f"  {label} log: {n} error lines, e.g. " + " | ".join(first))
    p()
    for name, ok, detail in s["targets"]:
        p(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")


def _counts(counter: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counter.items())


def _mib(x: float | None) -> str:
    return "exited" if x is None else f"{x:.0f}"


def _jsonable(r: dict, s: dict) -> dict:
    o = r["outage"]
    return {k: v for k, v in r.items() if k not in ("records", "minutes_detail", "outage", "t_start")} | {
        "outage": {"at_s": o.at_s, "restart_s": o.restart_s, "first_ok_s": o.first_ok_s, "error": o.error},
        "per_minute": [{**m, "statuses": {str(k): v for k, v in m["statuses"].items()},
                        "failures_in_outage": {str(k): v for k, v in m["failures_in_outage"].items()},
                        "failures_outside": {str(k): v for k, v in m["failures_outside"].items()}}
                       for m in s["per_minute"]],
        "targets": [{"target": n, "pass": ok, "detail": d} for n, ok, d in s["targets"]],
    }


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="minutes of load (default 10)")
    ap.add_argument("--clients", type=int, default=6, help="client threads (default 6)")
    ap.add_argument("--workers", type=int, default=2, help="`pgclip worker` processes (default 2)")
    ap.add_argument("--images", type=int, default=1000, help="the starting collection (default 1000)")
    ap.add_argument("--crash-at", type=float, default=0.5, help="when the database crashes, share of the load")
    ap.add_argument("--no-crash", action="store_true", help="no database crash (a baseline to compare with)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, data)")
    ap.add_argument("--json", action="store_true", help="JSON on stdout, the report on stderr")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.clients < 1 or args.workers < 1 or args.images < 1 or not 0 < args.crash_at < 1:
        ap.error("--minutes, --clients, --workers and --images must be positive, --crash-at between 0 and 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="pgclip-soak-"))
    try:
        r = soak(args, tmp)
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    s = summarise(r)
    print_report(r, s, out=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(_jsonable(r, s), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
