"""Search quality and speed of ``pgclip.search``, side by side with FAISS and Chroma, in one run.

    .venv/bin/python benchmarks/search.py                      # defaults: 100k vectors, 4-9 minutes on 2 cores
    .venv/bin/python benchmarks/search.py -n 20000 -q 50       # a quick look (about a minute)
    .venv/bin/python benchmarks/search.py --skip chroma,http   # leave some systems out
    .venv/bin/python benchmarks/search.py --embedding-storage extended --skip http,faiss,chroma
                                     # experiment: the vector column TOASTed instead of inline

What it does:

1. Generates N unit vectors (512-d) with a low intrinsic dimension, so that
   approximate search behaves as it does on real CLIP embeddings: a mixture of
   --clusters centres (cluster sizes ~ 1/sqrt(rank)) in a random --subspace-d
   subspace, each point = centre + --spread * gaussian noise in the subspace,
   lifted to 512-d by a random orthonormal projection, plus isotropic noise
   (--iso of the subspace norm) and a shared offset (--common of it: CLIP
   vectors sit in a narrow cone), then L2-normalised. Q more points from the
   same generator are the queries (held out, never inserted). Each image gets a
   caption of four made-up words (two of its cluster's six topic words, two from
   a 400-word vocabulary) and metadata {"tag": "one" | "ten" | "rest"}: "one"
   on 1 % of the images, "ten" on 10 %, drawn independently of the vectors.
2. Loads them into a fresh embedded PostgreSQL (temporary PGCLIP_DATA_DIR):
   ``pgclip migrate`` with PGCLIP_MODEL=ViT-B-32, images and captions by COPY,
   vectors by binary COPY, then the model's HNSW index rebuilt with pgclip's own
   DDL (``pgclip.db.models.index_ddl``, m=16, ef_construction=64; timed), then
   VACUUM ANALYZE.
3. Times ``SELECT * FROM pgclip.search(...)`` over one psycopg connection for
   each query kind and compares the top 10 with exact search (numpy brute force
   over the same vectors and filters; for hybrid, reciprocal rank fusion of the
   exact vector ranking with the function's own caption ranking, which is exact).
   The plan the function runs is read once per kind with auto_explain.
4. Times POST /api/search against a ``pgclip serve`` subprocess (ViT-B-32 with
   random weights saved as a local checkpoint: a raw-vector search never runs
   the model, but serving needs one).
5. Runs the same queries through FAISS (IndexHNSWFlat, M=16, efConstruction=64,
   efSearch 40 and 100, inner product; filters as an IDSelectorBitmap at search
   time) and Chroma (in-process, cosine space, default HNSW parameters,
   ``where={"tag": ...}``).

Latency is per query, one at a time, one client (FAISS with one OpenMP thread); the SQL and
HTTP series run --rounds times (default 3) and the round with the lowest p50 counts, with the
CPU other processes used meanwhile printed beside it (this machine is shared).
Nothing here asserts a time: figures are printed side by side and the targets
are checked against them. The embedded server is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PGCLIP = [sys.executable, "-m", "pgclip.cli"]
MODEL = "ViT-B-32"
DIM = 512
K = 10
TAGS = {"one": 0.01, "ten": 0.10}  # metadata tag -> share of the images
TARGETS = {"recall": 0.95, "pure_p95_ms": 10.0, "hybrid_p95_ms": 25.0}
HNSW_M, HNSW_EFC = 16, 64


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class CpuMeter:
    """Cores busy over a span: machine-wide (/proc/stat) and of the given processes (this one, the
    PostgreSQL backends serving it, the API server), so that 'others' shows who else used the machine."""

    def __init__(self, pids: list[int] | None = None) -> None:
        self.pids = pids or []

    @staticmethod
    def _machine() -> tuple[int, int] | None:
        try:
            values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError):
            return None
        return sum(values), values[3] + (values[4] if len(values) > 4 else 0)

    def _ours(self) -> float:
        t = os.times()
        total = t.user + t.system
        tick = os.sysconf("SC_CLK_TCK")
        for pid in self.pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def __enter__(self) -> Self:
        self.t0, self.m0, self.o0 = time.perf_counter(), self._machine(), self._ours()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.t0
        m1 = self._machine()
        self.ours = (self._ours() - self.o0) / wall
        self.machine = self.others = None
        if self.m0 and m1 and m1[0] > self.m0[0]:
            total, idle = m1[0] - self.m0[0], m1[1] - self.m0[1]
            self.machine = (total - idle) / total * (os.cpu_count() or 1)
            self.others = max(0.0, self.machine - self.ours)


# --- data -------------------------------------------------------------------------------------


GENERATOR = ("clusters", "subspace", "spread", "iso", "common", "seed")  # generate_vectors' options


def generator_options(args: argparse.Namespace | None = None) -> dict:
    """generate_vectors' keyword arguments as these parsed options set them (None: this script's
    defaults, the vectors every benchmark shares)."""
    args = parse_args([]) if args is None else args
    return {name: getattr(args, name) for name in GENERATOR}


def generate_vectors(n: int, *, clusters: int, subspace: int, spread: float, iso: float, common: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors of low intrinsic dimension (see the module docstring) and their cluster labels."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((DIM, subspace)))
    basis = basis.astype(np.float32)
    centres = rng.standard_normal((clusters, subspace)).astype(np.float32)
    weights = 1 / np.sqrt(np.arange(1, clusters + 1))
    labels = rng.choice(clusters, n, p=weights / weights.sum())
    mean_dir = rng.standard_normal(DIM).astype(np.float32)
    mean_dir /= np.linalg.norm(mean_dir)
    scale = np.sqrt(subspace * (1 + spread**2))  # expected norm of a point in the subspace
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 20_000):
        sl = slice(start, min(n, start + 20_000))
        m = sl.stop - sl.start
        local = centres[labels[sl]] + spread * rng.standard_normal((m, subspace), dtype=np.float32)
        x = local @ basis.T
        x += (iso * scale / np.sqrt(DIM)) * rng.standard_normal((m, DIM), dtype=np.float32)
        x += common * scale * mean_dir
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[sl] = x
    return out, labels


def make_vocabulary(size: int, rng: np.random.Generator) -> list[str]:
    """Made-up, pronounceable words that are no English stop word and stem to themselves distinctly."""
    onsets = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "t", "v", "z", "br", "kr", "pl", "st", "tr"]
    vowels = ["a", "e", "i", "o", "u"]
    codas = ["k", "m", "n", "p", "r", "t", "x", "z"]
    words: set[str] = set()
    while len(words) < size:
        parts = [rng.choice(onsets) + rng.choice(vowels) for _ in range(int(rng.integers(1, 3)))]
        words.add("".join(parts) + rng.choice(codas))
    return sorted(words)


def make_texts(labels: np.ndarray, n_queries: int, clusters: int, seed: int):
    """Captions for the images, caption queries for the held-out points, and the images' tags."""
    rng = np.random.default_rng(seed + 1)
    vocab = make_vocabulary(400, rng)
    topics = np.array([rng.choice(len(vocab), 6, replace=False) for _ in range(clusters)])
    n = len(labels) - n_queries
    captions = []
    for i in range(n):
        own = rng.choice(topics[labels[i]], 2, replace=False)
        other = rng.choice(len(vocab), 2, replace=False)
        words = [vocab[w] for w in (*own, *other)]
        rng.shuffle(words)
        captions.append(" ".join(words))
    queries = []
    for j in range(n_queries):
        own = rng.choice(topics[labels[n + j]], 2, replace=False)
        # Half the queries one word (hundreds of hits), half two (websearch AND: tens of hits).
        queries.append(vocab[own[0]] if j % 2 == 0 else f"{vocab[own[0]]} {vocab[own[1]]}")
    tags = np.full(n, "rest", dtype=object)
    order = rng.permutation(n)
    start = 0
    for tag, share in TAGS.items():
        count = round(share * n)
        tags[order[start : start + count]] = tag
        start += count
    return captions, queries, tags


# --- pgclip: environment and load ---------------------------------------------------------------


def make_checkpoint(path: Path, seed: int) -> None:
    """ViT-B-32 with random (seeded) weights, saved as a local checkpoint: CLIP weights cannot be
    downloaded here, and a raw-vector search never runs the model anyway."""
    import open_clip
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _, _ = open_clip.create_model_and_transforms(MODEL, pretrained=None)
    torch.save(model.state_dict(), path)


def run_cli(*args: str, env: dict[str, str], timeout: float | None = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([*PGCLIP, *args], check=False, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"`pgclip {' '.join(args)}` exited with status {proc.returncode}")
    return proc


def machine_facts(conn) -> dict:
    """This machine (cores, memory, Python) and the server behind ``conn`` (:func:`server_facts`)."""
    return {"cores": os.cpu_count(), "python": platform.python_version(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
            **server_facts(conn)}


def server_facts(conn) -> dict[str, str]:
    facts = {}
    for name in ("server_version", "shared_buffers", "work_mem", "maintenance_work_mem",
                 "max_parallel_maintenance_workers", "max_parallel_workers_per_gather", "jit"):
        facts[name] = conn.execute("SELECT current_setting(%s)", [name]).fetchone()[0]
    facts["pgvector"] = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
    return facts


def binary_vectors(ids: np.ndarray, model_id: int, vectors: np.ndarray) -> bytes:
    """Rows (image_id int8, model_id int4, embedding vector) in COPY BINARY format, built with numpy."""
    dim = vectors.shape[1]
    row = np.dtype([("nfields", ">i2"), ("l_id", ">i4"), ("id", ">i8"), ("l_model", ">i4"), ("model", ">i4"),
                    ("l_vec", ">i4"), ("dim", ">i2"), ("unused", ">i2"), ("vec", ">f4", (dim,))])
    rows = np.empty(len(ids), dtype=row)
    rows["nfields"], rows["l_id"], rows["id"] = 3, 8, ids
    rows["l_model"], rows["model"] = 4, model_id
    rows["l_vec"], rows["dim"], rows["unused"] = 4 + 4 * dim, dim, 0
    rows["vec"] = vectors
    return rows.tobytes()


def load(url: str, model, base: np.ndarray, captions: list[str], tags: np.ndarray, seed: int) -> dict:
    """Images, captions and vectors by COPY; the model's HNSW index rebuilt after the load; VACUUM ANALYZE."""
    from pgclip.db.engine import connect
    from pgclip.db.models import index_ddl

    n = len(base)
    rng = np.random.default_rng(seed + 2)
    sizes = [(640, 480), (480, 640), (1024, 768), (800, 800), (1920, 1080)]
    size_idx = rng.integers(0, len(sizes), n)
    taken = rng.integers(1_420_070_400, 1_767_225_600, n)  # 2015-01-01 .. 2026-01-01
    out: dict = {"rows": n}
    with connect(url) as conn:
        t = time.perf_counter()
        with conn.cursor() as cur, cur.copy(
            "COPY pgclip.images (id, sha256, source, byte_size, width, height, format, mime, taken_at, metadata)"
            " FROM STDIN"
        ) as copy:
            for i in range(n):
                w, h = sizes[size_idx[i]]
                sha = hashlib.sha256(f"pgclip-bench-search:{i}".encode()).hexdigest()
                ts = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(int(taken[i])))
                copy.write(f"{i + 1}\t{sha}\tbench/{i:06d}.jpg\t{100_000 + i}\t{w}\t{h}\tJPEG\timage/jpeg\t{ts}\t"
                           f'{{"tag": "{tags[i]}"}}\n')
        conn.execute("SELECT setval(pg_get_serial_sequence('pgclip.images', 'id'), %s)", [n])
        out["images_copy_s"] = time.perf_counter() - t
        t = time.perf_counter()
        with conn.cursor() as cur, cur.copy("COPY pgclip.captions (image_id, text) FROM STDIN") as copy:
            for i, text in enumerate(captions):
                copy.write(f"{i + 1}\t{text}\n")
        out["captions_copy_s"] = time.perf_counter() - t
        conn.commit()
        # Inserting 100k rows into a live HNSW graph is far slower than building it once:
        # drop the (empty) index `pgclip migrate` made, load, build it again with the same DDL.
        conn.execute(f"DROP INDEX IF EXISTS pgclip.{model.index_name}")
        t = time.perf_counter()
        with conn.cursor() as cur, cur.copy(
            "COPY pgclip.embeddings (image_id, model_id, embedding) FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.write(b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big"))
            for start in range(0, n, 10_000):
                ids = np.arange(start + 1, min(n, start + 10_000) + 1, dtype=np.int64)
                copy.write(binary_vectors(ids, model.id, base[start : start + 10_000]))
            copy.write((-1).to_bytes(2, "big", signed=True))
        conn.commit()
        out["vectors_copy_s"] = time.perf_counter() - t
        t = time.perf_counter()
        conn.execute(index_ddl(model))  # registered with PGCLIP_HNSW_M / PGCLIP_HNSW_EF_CONSTRUCTION
        conn.commit()
        out["index_build_s"] = time.perf_counter() - t
        out["index_size"] = conn.execute(
            "SELECT pg_size_pretty(pg_relation_size(%s::regclass))", [f"pgclip.{model.index_name}"]
        ).fetchone()[0]
        out["heap_size"], out["toast_size"] = conn.execute(
            "SELECT pg_size_pretty(pg_relation_size(c.oid)), pg_size_pretty(pg_relation_size(c.reltoastrelid))"
            " FROM pg_class c WHERE c.oid = 'pgclip.embeddings'::regclass"
        ).fetchone()
        out["index_def"] = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'pgclip' AND indexname = %s", [model.index_name]
        ).fetchone()[0]
    t = time.perf_counter()
    with connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) pgclip.images, pgclip.captions, pgclip.embeddings")
    out["vacuum_analyze_s"] = time.perf_counter() - t
    return out


# --- query kinds, ground truth --------------------------------------------------------------


def query_kinds(tags: np.ndarray, queries_text: list[str]) -> list[dict]:
    """The kinds of search measured, each with its filters, options and allowed-rows mask."""
    one, ten = tags == "one", tags == "ten"
    return [
        {"name": "pure vector", "key": "pure", "filters": {}, "options": {}, "mask": None, "text": None},
        {"name": "filter 1%", "key": "f1", "filters": {"metadata": {"tag": "one"}},
         "options": {}, "mask": one, "text": None},
        {"name": "filter 1%, exact_threshold 0", "key": "f1_index", "filters": {"metadata": {"tag": "one"}},
         "options": {"exact_threshold": 0}, "mask": one, "text": None},
        {"name": "filter 10%", "key": "f10", "filters": {"metadata": {"tag": "ten"}}, "options": {},
         "mask": ten, "text": None},
        {"name": "hybrid (vector + caption words)", "key": "hybrid", "filters": {}, "options": {}, "mask": None,
         "text": queries_text},
    ]


def exact_topk(base: np.ndarray, queries: np.ndarray, mask: np.ndarray | None, k: int) -> np.ndarray:
    """Image ids (1-based) of the k nearest rows by cosine, among the rows the mask allows."""
    sims = queries @ base.T
    if mask is not None:
        sims[:, ~mask] = -np.inf
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1) + 1


def hybrid_truth(conn, base: np.ndarray, queries: np.ndarray, texts: list[str], window: int = 200,
                 rrf_k: float = 60.0) -> list[list[int]]:
    """The function's fusion (RRF over a window of candidates per ranking) computed with the exact
    vector ranking; the caption ranking comes from SQL (ts_rank_cd, exact: no index approximation)."""
    vec_top = exact_topk(base, queries, None, window)
    out = []
    for q, text in enumerate(texts):
        rows = conn.execute(
            "SELECT c.image_id, sum(ts_rank_cd(c.tsv, websearch_to_tsquery('english', %(q)s))) AS r"
            " FROM pgclip.captions c WHERE c.tsv @@ websearch_to_tsquery('english', %(q)s)"
            " GROUP BY c.image_id ORDER BY r DESC, c.image_id LIMIT %(w)s",
            {"q": text, "w": window},
        ).fetchall()
        score: dict[int, float] = {}
        for rank, image_id in enumerate(vec_top[q], start=1):
            score[int(image_id)] = 1.0 / (rrf_k + rank)
        for rank, (image_id, _) in enumerate(rows, start=1):
            score[int(image_id)] = score.get(int(image_id), 0.0) + 1.0 / (rrf_k + rank)
        out.append([i for i, _ in sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))[:K]])
    return out


def recall(found: list[list[int]], truth) -> float:
    return float(np.mean([len(set(f) & {int(x) for x in t[:K]}) / K for f, t in zip(found, truth, strict=True)]))


def percentiles(times_s: list[float]) -> tuple[float, float]:
    a = np.asarray(times_s) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 95))


def timed(one: Callable[[int], list[int]], n: int, warmup: int = 0) -> tuple[list[list[int]], list[float]]:
    """``one(q)`` for the first ``warmup`` queries untimed, then for each of the ``n`` queries timed,
    one at a time: the answers and the seconds each took."""
    for q in range(min(warmup, n)):
        one(q)
    found, times = [], []
    for q in range(n):
        t = time.perf_counter()
        found.append(one(q))
        times.append(time.perf_counter() - t)
    return found, times


# --- pgclip: SQL ------------------------------------------------------------------------------

SEARCH_SQL = "SELECT * FROM pgclip.search(%s, %s, %s, %s, 0, %s)"


def _cores(x: float | None) -> str:
    return "?" if x is None else f"{x:.2f}"


def sql_search(conn, kind: dict, queries: np.ndarray, warmup: int) -> dict:
    from psycopg.types.json import Jsonb

    def one(q: int) -> list[int]:
        text = kind["text"][q] if kind["text"] else None
        rows = conn.execute(SEARCH_SQL, [queries[q], text, Jsonb(kind["filters"]), K, Jsonb(kind["options"])]).fetchall()
        return [r[0] for r in rows]

    found, times = timed(one, len(queries), warmup)
    p50, p95 = percentiles(times)
    return {"found": found, "p50_ms": p50, "p95_ms": p95, "mean_ms": float(np.mean(times) * 1000),
            "short_results": sum(len(f) < K for f in found)}


def plan_of(url: str, kind: dict, query: np.ndarray) -> dict:
    """The plan of the statement pgclip.search runs for this kind (auto_explain, nested statements,
    sent to this client as NOTICEs), boiled down to the path it takes."""
    from psycopg.types.json import Jsonb

    from pgclip.db.engine import connect

    notices: list[str] = []
    with connect(url, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("LOAD 'auto_explain'")
        for name, value in (("auto_explain.log_min_duration", "0"), ("auto_explain.log_nested_statements", "on"),
                            ("auto_explain.log_level", "notice"), ("auto_explain.log_analyze", "on"),
                            ("auto_explain.log_timing", "off"), ("auto_explain.log_format", "text")):
            conn.execute("SELECT set_config(%s, %s, false)", [name, value])
        text = kind["text"][0] if kind["text"] else None
        conn.execute(SEARCH_SQL, [query, text, Jsonb(kind["filters"]), K, Jsonb(kind["options"])]).fetchall()
    plan = next((n for n in notices if "vector_hits" in n), "\n".join(notices))
    plan = re.sub(r"\[[-0-9.,e]{200,}\]", "[...]", plan)  # the query vector, 512 numbers
    plan = plan[plan.find("Query Parameters"):] if "Query Parameters" in plan else plan
    if re.search(r"Index Scan using embeddings_m\d+_vectors", plan):  # the model's index, whatever its kind
        path = "HNSW iterative scan"
    else:
        path = "filter first + sort"
    return {"path": path, "plan": plan}


def filtered_rows(conn, filters: dict) -> int:
    from psycopg.types.json import Jsonb

    where = conn.execute("SELECT pgclip.filter_sql(%s)", [Jsonb(filters)]).fetchone()[0]
    return conn.execute(f"SELECT count(*) FROM pgclip.images i WHERE {where}").fetchone()[0]


# --- pgclip: HTTP ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HttpFailure(Exception):
    """The HTTP measurement could not be taken (reported, the rest of the run goes on)."""


def start_server(env: dict[str, str], port: int, logfile: Path) -> subprocess.Popen:
    proc = subprocess.Popen([*PGCLIP, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=REPO,
                            stdout=logfile.open("w"), stderr=subprocess.STDOUT)
    import httpx

    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = [ln for ln in logfile.read_text().strip().splitlines() if ln.strip()][-2:]
            raise HttpFailure(f"`pgclip serve` exited with status {proc.returncode}: {' / '.join(tail)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        time.sleep(0.5)
    proc.terminate()
    raise HttpFailure(f"`pgclip serve` did not become ready in 300 s: {logfile.read_text()[-300:]}")


def http_search(client, port: int, kind: dict, queries: np.ndarray, warmup: int) -> dict:
    url = f"http://127.0.0.1:{port}/api/search"

    def one(q: int) -> list[int]:
        body: dict = {"vector": queries[q].tolist(), "k": K}
        if kind["filters"]:
            body["filters"] = kind["filters"]
        if kind["text"]:
            body["caption_query"] = kind["text"][q]
        r = client.post(url, json=body)
        if r.status_code != 200:
            raise HttpFailure(f"POST /api/search answered {r.status_code}: {r.text[:300]}")
        return [hit["id"] for hit in r.json()["results"]]

    found, times = timed(one, len(queries), warmup)
    p50, p95 = percentiles(times)
    return {"found": found, "p50_ms": p50, "p95_ms": p95}


# --- FAISS and Chroma ---------------------------------------------------------------------------


def faiss_bench(base: np.ndarray, queries: np.ndarray, kinds: list[dict], truths: dict, threads: int) -> dict:
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexHNSWFlat(base.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EFC
    t = time.perf_counter()
    index.add(base)
    out: dict = {"build_s": time.perf_counter() - t, "version": faiss.__version__, "kinds": {}}
    faiss.omp_set_num_threads(1)  # one query at a time on one thread, as one SQL connection does
    for kind in kinds:
        if kind["text"] or kind["key"] == "f1_index":
            continue
        selector = bitmap = None
        if kind["mask"] is not None:
            bitmap = np.packbits(kind["mask"], bitorder="little")
            selector = faiss.IDSelectorBitmap(len(base), faiss.swig_ptr(bitmap))
        res = {}
        for ef in (40, 100):
            params = faiss.SearchParametersHNSW(efSearch=ef, sel=selector) if selector is not None else \
                faiss.SearchParametersHNSW(efSearch=ef)
            def one(q: int, params=params) -> list[int]:
                _, ids = index.search(queries[q : q + 1], K, params=params)
                return [int(i) + 1 for i in ids[0] if i >= 0]

            found, times = timed(one, len(queries), warmup=10)
            p50, p95 = percentiles(times)
            res[ef] = {"recall": recall(found, truths[kind["key"]]), "p50_ms": p50, "p95_ms": p95,
                       "short_results": sum(len(f) < K for f in found)}
        del bitmap
        out["kinds"][kind["key"]] = res
    return out


def chroma_bench(base: np.ndarray, queries: np.ndarray, tags: np.ndarray, kinds: list[dict], truths: dict) -> dict:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    client = chromadb.EphemeralClient(settings=ChromaSettings(anonymized_telemetry=False))
    col = client.create_collection("pgclip-bench", embedding_function=None, configuration={"hnsw": {"space": "cosine"}})
    batch = client.get_max_batch_size()
    t = time.perf_counter()
    for start in range(0, len(base), batch):
        stop = min(len(base), start + batch)
        col.add(ids=[str(i + 1) for i in range(start, stop)], embeddings=base[start:stop],
                metadatas=[{"tag": str(tags[i])} for i in range(start, stop)])
    out: dict = {"build_s": time.perf_counter() - t, "version": chromadb.__version__,
                 "hnsw": dict(col.configuration.get("hnsw") or {}), "kinds": {}}
    for kind in kinds:
        if kind["text"] or kind["key"] == "f1_index":
            continue
        where = {"tag": kind["filters"]["metadata"]["tag"]} if kind["filters"] else None

        def one(q: int, where: dict | None = where) -> list[int]:
            r = col.query(query_embeddings=queries[q : q + 1], n_results=K, where=where, include=["distances"])
            return [int(i) for i in r["ids"][0]]

        found, times = timed(one, len(queries), warmup=10)
        p50, p95 = percentiles(times)
        out["kinds"][kind["key"]] = {"recall": recall(found, truths[kind["key"]]), "p50_ms": p50, "p95_ms": p95}
    return out


# --- report -------------------------------------------------------------------------------------


def _pair(d: dict | None, a: str = "p50_ms", b: str = "p95_ms") -> str:
    return "n/a" if not d else f"{d[a]:.1f} / {d[b]:.1f}"


def print_report(r: dict) -> None:
    m = r["machine"]
    print(f"\npgclip search benchmark, {r['date']}: {r['n']} vectors ({DIM}-d), {r['queries']} queries, k={K}, "
          f"best of {r['rounds']} round(s)")
    print(f"machine: {m['cores']} cores, {m['memory_gib']} GiB, PostgreSQL {m['server_version']}, "
          f"pgvector {m['pgvector']}, shared_buffers {m['shared_buffers']}, "
          f"maintenance_work_mem {m['maintenance_work_mem']}, load average before/after {r['loadavg']}")
    g = r["data"]
    print(f"data: cosine to 1st / 10th / 100th nearest neighbour {g['nn1']:.3f} / {g['nn10']:.3f} / "
          f"{g['nn100']:.3f}, to a random image {g['random']:.3f}")
    ld = r["load"]
    print(f"load: images {ld['images_copy_s']:.1f} s, captions {ld['captions_copy_s']:.1f} s, "
          f"vectors (binary COPY) {ld['vectors_copy_s']:.1f} s; HNSW build (m={HNSW_M}, ef_construction={HNSW_EFC}) "
          f"{ld['index_build_s']:.1f} s, {ld['index_size']}; VACUUM ANALYZE {ld['vacuum_analyze_s']:.1f} s")
    print(f"embeddings table: heap {ld['heap_size']}, TOAST {ld['toast_size']} "
          f"(column storage: {r.get('embedding_storage', 'default')})")
    if r.get("http_error"):
        print(f"HTTP: not measured: {r['http_error']}")
    elif "serve_start_s" in r:
        print(f"HTTP: pgclip serve ready after {r['serve_start_s']:.1f} s")
    if "faiss" in r:
        print(f"FAISS {r['faiss']['version']}: IndexHNSWFlat build {r['faiss']['build_s']:.1f} s (2 threads)")
    if "chroma" in r:
        print(f"Chroma {r['chroma']['version']}: add {r['chroma']['build_s']:.1f} s, hnsw {r['chroma']['hnsw']}")
    print()
    head = ["kind", "rows passing", "function asks", "plan runs", "pgclip recall@10", "SQL p50/p95 ms", "HTTP p50/p95 ms",
            "FAISS ef40 recall/p50", "FAISS ef100 recall/p50", "Chroma recall/p50"]
    rows = []
    for k in r["kinds"]:
        f = r.get("faiss", {}).get("kinds", {}).get(k["key"])
        c = r.get("chroma", {}).get("kinds", {}).get(k["key"])
        rows.append([
            k["name"], str(k["rows"]), k["decision"], k["path"], f"{k['recall']:.3f}" + (f" ({k['short_results']} short)" if k["short_results"] else ""),
            _pair(k), _pair(k.get("http")),
            f"{f[40]['recall']:.3f} / {f[40]['p50_ms']:.2f}" if f else "n/a",
            f"{f[100]['recall']:.3f} / {f[100]['p50_ms']:.2f}" if f else "n/a",
            f"{c['recall']:.3f} / {c['p50_ms']:.1f}" if c else "n/a",
        ])
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    print(" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)))
    print("function asks: what pgclip.search requests (exact: ORDER BY distance + 0, filtered rows sorted; index: "
          "ORDER BY distance, left to the HNSW index). plan runs: what the planner chose (auto_explain). "
          "(n short): queries answered with fewer than 10 rows. Latencies in ms; FAISS/Chroma p50 in ms.")
    print("CPU cores used by other processes during the counted round (of "
          f"{m['cores']}): SQL " + ", ".join(f"{k['key']} {_cores(k.get('others_cores'))}" for k in r["kinds"])
          + "; HTTP " + ", ".join(f"{k['key']} {_cores(k['http'].get('others_cores'))}"
                                  for k in r["kinds"] if k.get("http")))
    if "chroma" in r:
        print("\nfiltered recall@10, Chroma vs pgclip:")
        for k in r["kinds"]:
            c = r["chroma"]["kinds"].get(k["key"])
            if c and k["filters"]:
                print(f"  {k['name']:<34} Chroma {c['recall']:.3f}  pgclip {k['recall']:.3f}")
    print("\ntargets:")
    for line in r["targets"]:
        print(f"  {'met    ' if line[1] else 'NOT met'}  {line[0]}")
    print(f"\ntotal {r['total_s']:.0f} s")


def check_targets(kinds: list[dict]) -> list[tuple[str, bool]]:
    by = {k["key"]: k for k in kinds}
    out = []
    for key in ("pure", "f1", "f10", "hybrid"):
        if key in by:
            out.append((f"recall@10 >= {TARGETS['recall']} for {by[key]['name']}: {by[key]['recall']:.3f}",
                        by[key]["recall"] >= TARGETS["recall"]))
    if "pure" in by:
        out.append((f"SQL p95 <= {TARGETS['pure_p95_ms']:.0f} ms, pure vector: {by['pure']['p95_ms']:.1f} ms",
                    by["pure"]["p95_ms"] <= TARGETS["pure_p95_ms"]))
    if "hybrid" in by:
        out.append((f"SQL p95 <= {TARGETS['hybrid_p95_ms']:.0f} ms, hybrid: {by['hybrid']['p95_ms']:.1f} ms",
                    by["hybrid"]["p95_ms"] <= TARGETS["hybrid_p95_ms"]))
    return out


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--vectors", type=int, default=100_000, help="images/vectors loaded (default 100000)")
    p.add_argument("-q", "--queries", type=int, default=200, help="queries per kind (default 200)")
    p.add_argument("--rounds", type=int, default=3,
                   help="timed rounds of the SQL and HTTP series; the round with the lowest p50 counts (default 3)")
    p.add_argument("--warmup", type=int, default=20, help="untimed queries before each timed series (default 20)")
    p.add_argument("--clusters", type=int, default=100, help="cluster centres of the generator (default 100)")
    p.add_argument("--subspace", type=int, default=48, help="intrinsic dimension of the generator (default 48)")
    p.add_argument("--spread", type=float, default=0.7, help="within-cluster spread / centre scale (default 0.7)")
    p.add_argument("--iso", type=float, default=0.3, help="isotropic 512-d noise, share of the norm (default 0.3)")
    p.add_argument("--common", type=float, default=0.8, help="shared offset, share of the norm (default 0.8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--embedding-storage", choices=["default", "extended", "main"], default="default",
                   help="experiment: ALTER the embeddings column's STORAGE before the load (default: as pgclip "
                        "migrates it, PLAIN since migration 0003; extended puts a 512-d vector out of line)")
    p.add_argument("--skip", default="", help="comma list of: http, faiss, chroma")
    p.add_argument("--json", metavar="FILE", help="also write every figure (and the plans) to FILE as JSON")
    p.add_argument("--show-plans", action="store_true", help="print the plan of each kind's search statement")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder and leave the server running")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    t_total = time.perf_counter()
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="pgclip-bench-search-"))
    env = {k: v for k, v in os.environ.items() if k != "PGCLIP_DATABASE_URL"}  # always a fresh embedded server
    checkpoint = tmp / "vit-b-32-random.pt"
    env.update({"PGCLIP_DATA_DIR": str(tmp / "data"), "PGCLIP_MODEL": MODEL, "PGCLIP_PRETRAINED": str(checkpoint),
                "PGCLIP_DEVICE": "cpu", "PGCLIP_HNSW_M": str(HNSW_M), "PGCLIP_HNSW_EF_CONSTRUCTION": str(HNSW_EFC)})
    os.environ.pop("PGCLIP_DATABASE_URL", None)
    os.environ.update(env)
    server: subprocess.Popen | None = None
    results: dict = {"date": time.strftime("%Y-%m-%d"), "n": args.vectors, "queries": args.queries,
                     "rounds": args.rounds,
                     "generator": generator_options(args)}
    try:
        log(f"temporary folder {tmp}")
        log(f"generating {args.vectors} + {args.queries} vectors")
        vectors, labels = generate_vectors(args.vectors + args.queries, clusters=args.clusters,
                                           subspace=args.subspace, spread=args.spread, iso=args.iso,
                                           common=args.common, seed=args.seed)
        base, queries = vectors[: args.vectors], vectors[args.vectors :]
        captions, query_texts, tags = make_texts(labels, args.queries, args.clusters, args.seed)
        sims = queries @ base.T
        top = -np.sort(np.partition(-sims, 100, axis=1)[:, :100], axis=1)
        results["data"] = {"nn1": float(top[:, 0].mean()), "nn10": float(top[:, 9].mean()),
                           "nn100": float(top[:, 99].mean()), "random": float(sims.mean())}
        del sims

        log("ViT-B-32 checkpoint with random weights; pgclip migrate")
        make_checkpoint(checkpoint, args.seed)
        run_cli("migrate", env=env)

        from pgclip.core.settings import Settings
        from pgclip.db.engine import connect, database_url
        from pgclip.db.models import require_active_model

        url = database_url(Settings.from_env())
        with connect(url) as conn:
            model = require_active_model(conn)
            results["machine"] = machine_facts(conn)
        if model.dimension != DIM:
            raise SystemExit(f"the active model {model.label} has dimension {model.dimension}, expected {DIM}")
        if args.embedding_storage != "default":
            with connect(url) as conn:
                conn.execute(f"ALTER TABLE pgclip.embeddings ALTER COLUMN embedding SET STORAGE "
                             f"{args.embedding_storage.upper()}")
                conn.commit()
            log(f"experiment: embeddings.embedding SET STORAGE {args.embedding_storage.upper()}")
        results["embedding_storage"] = args.embedding_storage
        log(f"loading {args.vectors} images, captions and vectors into model {model.id} ({model.label})")
        results["load"] = load(url, model, base, captions, tags, args.seed)
        log(f"HNSW build {results['load']['index_build_s']:.1f} s")

        kinds = query_kinds(tags, query_texts)
        truths: dict = {}
        with connect(url, autocommit=True) as conn:
            for kind in kinds:
                kind["rows"] = filtered_rows(conn, kind["filters"])
                # pgclip.search ranks exactly when filters are given and leave fewer rows than
                # exact_threshold (default 10000); otherwise it leaves the ORDER BY to the HNSW index.
                threshold = kind["options"].get("exact_threshold", 10_000)
                kind["decision"] = "exact" if kind["filters"] and kind["rows"] < threshold else "index"
                truths[kind["key"]] = (hybrid_truth(conn, base, queries, kind["text"]) if kind["text"]
                                       else exact_topk(base, queries, kind["mask"], K))
            log(f"SQL: pgclip.search over one connection, {args.rounds} round(s)")
            backend = conn.info.backend_pid
            for rnd in range(args.rounds):
                for kind in kinds:
                    with CpuMeter([backend]) as cpu:
                        res = sql_search(conn, kind, queries, args.warmup)
                    res["others_cores"] = cpu.others
                    if rnd == 0:
                        kind["recall"] = recall(res["found"], truths[kind["key"]])
                        kind["short_results"] = res["short_results"]
                    del res["found"]
                    kind.setdefault("sql_rounds", []).append(res)
                    log(f"  round {rnd + 1} {kind['name']}: recall {kind['recall']:.3f}, p50 {res['p50_ms']:.1f} ms, "
                        f"p95 {res['p95_ms']:.1f} ms, other processes {_cores(cpu.others)} cores")
            for kind in kinds:
                best = min(kind["sql_rounds"], key=lambda r: r["p50_ms"])
                kind.update({"p50_ms": best["p50_ms"], "p95_ms": best["p95_ms"], "others_cores": best["others_cores"]})
        for kind in kinds:
            kind.update(plan_of(url, kind, queries[0]))

        if "http" not in skip:
            port = free_port()
            log(f"HTTP: pgclip serve on 127.0.0.1:{port} (loads ViT-B-32 from the checkpoint)")
            import httpx

            with httpx.Client(timeout=60) as client:
                try:
                    t = time.perf_counter()
                    server = start_server(env, port, tmp / "serve.log")
                    results["serve_start_s"] = time.perf_counter() - t
                    http_kinds = [k for k in kinds if not k["options"]]  # the API has no exact_threshold
                    with connect(url, autocommit=True) as conn:
                        if http_kinds:
                            http_search(client, port, http_kinds[0], queries[:1], 0)  # the pool connects
                        api_backends = [r[0] for r in conn.execute(
                            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pgclip-api%'").fetchall()]
                    for rnd in range(args.rounds):
                        for kind in http_kinds:
                            with CpuMeter([server.pid, *api_backends]) as cpu:
                                res = http_search(client, port, kind, queries, args.warmup)
                            rec = recall(res["found"], truths[kind["key"]])
                            kind.setdefault("http_rounds", []).append(
                                {"p50_ms": res["p50_ms"], "p95_ms": res["p95_ms"], "recall": rec,
                                 "others_cores": cpu.others})
                            log(f"  round {rnd + 1} {kind['name']}: p50 {res['p50_ms']:.1f} ms, "
                                f"p95 {res['p95_ms']:.1f} ms, recall {rec:.3f}, "
                                f"other processes {_cores(cpu.others)} cores")
                    for kind in http_kinds:
                        kind["http"] = min(kind["http_rounds"], key=lambda r: r["p50_ms"])
                except HttpFailure as exc:
                    errors = [ln for ln in (tmp / "serve.log").read_text().splitlines() if "Error" in ln]
                    results["http_error"] = str(exc) + (f"; server log: {errors[-1]}" if errors and server else "")
                    log(f"HTTP measurement failed: {results['http_error']}")
            if server is not None:
                server.terminate()
                server.wait(timeout=60)
                server = None

        if "faiss" not in skip:
            log("FAISS IndexHNSWFlat")
            try:
                results["faiss"] = faiss_bench(base, queries, kinds, truths, threads=os.cpu_count() or 1)
            except ImportError:
                log("faiss-cpu is not installed: skipped (pip install faiss-cpu)")
        if "chroma" not in skip:
            log("Chroma (in-process)")
            try:
                results["chroma"] = chroma_bench(base, queries, tags, kinds, truths)
            except ImportError:
                log("chromadb is not installed: skipped (pip install chromadb)")
    finally:
        if server is not None:
            server.terminate()
            with contextlib.suppress(Exception):
                server.wait(timeout=30)
        if not args.keep:
            with contextlib.suppress(Exception):
                subprocess.run([*PGCLIP, "db", "stop"], check=False, env=env, capture_output=True, timeout=120, cwd=REPO)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept {tmp} (stop the server with PGCLIP_DATA_DIR={tmp / 'data'} pgclip db stop)")
    results["loadavg"] = f"{load_before:.1f}/{os.getloadavg()[0]:.1f}"
    results["kinds"] = [{k: v for k, v in kind.items() if k not in ("mask", "text")} for kind in kinds]
    results["targets"] = check_targets(results["kinds"])
    results["total_s"] = time.perf_counter() - t_total
    print_report(results)
    if args.show_plans:
        for k in results["kinds"]:
            print(f"\n--- plan: {k['name']} ---\n{k['plan']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
