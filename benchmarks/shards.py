"""Sharding simulated on one machine: one HNSW index over N vectors against the same N split into
shards, each with its own HNSW index, searched by scatter-gather with a top-k merge, as Citus would.

    .venv/bin/python benchmarks/shards.py                        # 1,000,000 vectors, 4 shards (30-40 min on 2 cores)
    .venv/bin/python benchmarks/shards.py --n 50000 -q 100       # a quick look (about 2 minutes)
    .venv/bin/python benchmarks/shards.py --n 200000 --ef-search 40,200 --json out.json
    nohup nice -n 15 .venv/bin/python benchmarks/shards.py --json shards.json > shards.txt 2> shards.log &

The measurements behind docs/scaling.md (issue #22). What a distributed pgclip would do is one
HNSW graph per shard (Citus puts an index on every shard table), the same `ORDER BY embedding <=> q
LIMIT k` sent to every shard, and the coordinator keeping the best k of the shards' k each. This
script asks what that costs and gains against one index over everything: recall@10 against exact
search, latency, build time, index size.

Data: N unit vectors of 512 dimensions and Q held-out queries from ``generate_vectors`` of
benchmarks/search.py with that script's defaults (the vectors index.py and search.py use at the same
N: clustered, low intrinsic dimension, a shared offset, like CLIP embeddings; not uniform noise, so
recall means something). Ground truth: each query's exact top 10 by cosine over all N, numpy, in
chunks.

Database: a fresh embedded PostgreSQL in a temporary PGCLIP_DATA_DIR (``pgclip migrate`` starts it;
``pgclip db stop`` at the end), or the server of PGCLIP_DATABASE_URL (which must allow CREATE
DATABASE). Shards are **separate databases** on that server, not tables of one: each has its own
catalog, statistics and planner, and is reached over its own connections, as a Citus worker node's
shard is; what they still share is this machine's cores, shared_buffers and disk, which separate
nodes would not. Databases made here (dropped at the end unless --keep):

  pgclip_bench_single     vec (id bigint primary key, embedding vector(512)), all N rows
  pgclip_bench_shard_<i>  the same table with the rows whose id % S = i (S = --shards, default 4):
                          a split independent of the vectors, as Citus's hash of image_id is

Vectors stored PLAIN (in the row, as pgclip stores them), loaded by binary COPY, VACUUM ANALYZE; then
HNSW vector_cosine_ops with the same m / ef_construction everywhere (--m, --ef-construction; 16 / 64,
pgclip's defaults), built one at a time with --maintenance-work-mem and --build-workers, timed and
measured (pg_relation_size). With --halfvec (default on) shard 0 also gets an HNSW index over
embedding::halfvec(512), for the bytes per vector of the capacity table.

Queries, for each --ef-search (the same on every index), one at a time, k = 10:

  single       one connection, ORDER BY embedding <=> q LIMIT 10 on the single index
  sequential   one connection per shard, the same statement on each shard in turn, the best 10 of
               the S x 10 kept (ties by id): a coordinator that asks its shards one after another
  parallel     the same, the S statements sent at once from S threads (a coordinator's fan-out);
               on this machine the S backends share 2 cores
  slowest      the shards asked one after another again, each timed alone: per query, the slowest
               shard's own time plus the merge; what the parallel fan-out costs when every shard
               has cores of its own (separate nodes), network excluded

Each mode in turn: --warmup untimed queries, then --rounds rounds over all the queries, back to
back (each mode with its indexes warm, as a node has its own in memory); the round with the lowest
p50 counts, with the CPU other processes used during it (the machine is shared). Each query runs
in one backend process (max_parallel_workers_per_gather 0). Then --throughput-seconds of --clients
threads each running queries back to back against the single index and the parallel fan-out:
queries per second on this machine, the "QPS per replica" of the capacity table. Nothing here
asserts a time.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import heapq
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
from psycopg.conninfo import make_conninfo

# benchmarks/search.py and index.py: this script's folder is first on sys.path.
from index import (
    COPY_CHUNK,
    COPY_HEADER,
    COPY_TRAILER,
    _cores,
    binary_rows,
    exact_topk,
    int_list,
    markdown_table,
)
from search import (
    DIM,
    HNSW_EFC,
    HNSW_M,
    PGCLIP,
    REPO,
    CpuMeter,
    K,
    generate_vectors,
    generator_options,
    log,
    machine_facts,
    run_cli,
)

from pgclip.core.settings import Settings
from pgclip.db.engine import connect, database_url

SINGLE_DB = "pgclip_bench_single"
SHARD_DB = "pgclip_bench_shard_{}"
KNN = f"SELECT id, embedding <=> %(q)s AS d FROM vec ORDER BY embedding <=> %(q)s LIMIT {K}"
MODES = ("single", "sequential", "parallel", "slowest")


# --- data -------------------------------------------------------------------------------------------


def load(url: str, ids: np.ndarray, vectors: np.ndarray) -> dict:
    """A fresh vec table in the database at url holding (ids, vectors), by binary COPY, VACUUM ANALYZE."""
    with connect(url, role="bench-shards", autocommit=True) as conn:
        conn.execute(f"CREATE TABLE vec (id bigint PRIMARY KEY, embedding vector({DIM}) NOT NULL)")
        conn.execute("ALTER TABLE vec ALTER COLUMN embedding SET STORAGE PLAIN")  # as pgclip's embeddings
        t = time.perf_counter()
        with conn.cursor() as cur, cur.copy("COPY vec (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.write(COPY_HEADER)
            for start in range(0, len(ids), COPY_CHUNK):
                copy.write(binary_rows(ids[start : start + COPY_CHUNK], vectors[start : start + COPY_CHUNK]))
            copy.write(COPY_TRAILER)
        copy_s = time.perf_counter() - t
        conn.execute("VACUUM (ANALYZE) vec")
        heap = conn.execute("SELECT pg_relation_size('vec')").fetchone()[0]
    return {"rows": len(ids), "copy_s": copy_s, "table_mb": heap / 2**20}


def build(url: str, name: str, expression: str, args: argparse.Namespace) -> dict:
    """One HNSW index on vec, timed; its size."""
    ddl = (f"CREATE INDEX {name} ON vec USING hnsw ({expression}) "
           f"WITH (m = {args.m}, ef_construction = {args.ef_construction})")
    with connect(url, role="bench-shards", autocommit=True) as conn:
        for guc, value in (("maintenance_work_mem", args.maintenance_work_mem),
                           ("max_parallel_maintenance_workers", str(args.build_workers))):
            conn.execute("SELECT set_config(%s, %s, false)", [guc, value])
        with CpuMeter([conn.info.backend_pid]) as cpu:
            t = time.perf_counter()
            conn.execute(ddl)
            build_s = time.perf_counter() - t
        size = conn.execute("SELECT pg_relation_size(%s)", [name]).fetchone()[0]
        rows = conn.execute("SELECT count(*) FROM vec").fetchone()[0]
    return {"index": ddl, "build_s": build_s, "size_mb": size / 2**20, "bytes_per_vector": size / rows,
            "machine_cores": cpu.machine}


# --- queries ----------------------------------------------------------------------------------------


def merge(results: list[list[tuple[int, float]]]) -> list[int]:
    """The coordinator's merge: the best K of the shards' top K each, by distance, ties by id."""
    return [i for i, _ in heapq.nsmallest(K, (row for rows in results for row in rows), key=lambda r: (r[1], r[0]))]


class Coordinator:
    """One connection to the single database and one per shard (plus a thread per shard for the fan-out)."""

    def __init__(self, single_url: str, shard_urls: list[str]) -> None:
        self.single = connect(single_url, role="bench-shards", autocommit=True)
        self.shards = [connect(u, role="bench-shards", autocommit=True) for u in shard_urls]
        self.pool = concurrent.futures.ThreadPoolExecutor(len(shard_urls))

    def pids(self) -> list[int]:
        return [c.info.backend_pid for c in (self.single, *self.shards)]

        for conn in (self.single, *self.shards):  # each query in one process, as index.py measures
            conn.execute("SET max_parallel_workers_per_gather = 0")

    def set_ef_search(self, ef: int) -> None:
        for conn in (self.single, *self.shards):
            conn.execute("SELECT set_config('hnsw.ef_search', %s, false)", [str(ef)])

    def close(self) -> None:
        self.pool.shutdown()
        for conn in (self.single, *self.shards):
            conn.close()


def knn(conn: psycopg.Connection, q: np.ndarray) -> list[tuple[int, float]]:
    return conn.execute(KNN, {"q": q}).fetchall()


def knn_timed(conn: psycopg.Connection, q: np.ndarray) -> tuple[list[tuple[int, float]], float]:
    t = time.perf_counter()
    rows = knn(conn, q)
    return rows, time.perf_counter() - t


def run_mode(co: Coordinator, mode: str, queries: np.ndarray) -> tuple[list[list[int]], list[float]]:
    """Every query once in this mode: the ids found and the seconds each query took."""
    found, times = [], []
    for q in queries:
        if mode == "single":
            t = time.perf_counter()
            found.append([i for i, _ in knn(co.single, q)])
            times.append(time.perf_counter() - t)
        elif mode == "sequential":
            t = time.perf_counter()
            found.append(merge([knn(conn, q) for conn in co.shards]))
            times.append(time.perf_counter() - t)
        elif mode == "parallel":
            t = time.perf_counter()
            found.append(merge(list(co.pool.map(lambda conn: knn(conn, q), co.shards))))
            times.append(time.perf_counter() - t)
        else:  # slowest: each shard alone, then the merge; the query costs its slowest shard
            parts = [knn_timed(conn, q) for conn in co.shards]
            t = time.perf_counter()
            found.append(merge([rows for rows, _ in parts]))
            times.append(max(s for _, s in parts) + time.perf_counter() - t)
    return found, times


def plan_warnings(co: Coordinator, q: np.ndarray) -> list[str]:
    """The plan of each database at the current ef_search: small tables with a large ef_search may be
    planned as a sequential scan, which would make a shard exact and slow rather than approximate."""
    out = []
    for name, conn in (("single", co.single), *((f"shard {i}", c) for i, c in enumerate(co.shards))):
        plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN {KNN}", {"q": q}))
        if "Index Scan using vec_idx" not in plan:
            out.append(f"{name}: the plan does not use the HNSW index: {plan.splitlines()[0]} ...")
    return out


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & {int(x) for x in t[:K]}) / K for f, t in zip(found, truth, strict=True)]))


def measure_modes(co: Coordinator, queries: np.ndarray, truth: np.ndarray, args) -> list[dict]:
    """Each mode in turn: --warmup untimed queries, then --rounds rounds over all the queries; the round
    with the lowest p50 counts, with the CPU other processes used during it. A mode's rounds run back
    to back, not interleaved with the other modes': at 1M the single index and the shards' indexes
    (2.6 GB each) do not both fit shared_buffers, and interleaving measured their eviction of each
    other (p50 x2-3), which separate nodes, each with its own index in memory, would not have."""
    out = []
    for mode in MODES:
        run_mode(co, mode, queries[: args.warmup])
        best = None
        for _ in range(args.rounds):
            with CpuMeter(co.pids()) as cpu:
                found, times = run_mode(co, mode, queries)
            ms = np.asarray(times) * 1000
            res = {"mode": mode, "recall": recall(found, truth), "p50_ms": float(np.percentile(ms, 50)),
                   "p95_ms": float(np.percentile(ms, 95)), "others_cores": cpu.others}
            if best is None or res["p50_ms"] < best["p50_ms"]:
                best = res
        out.append(best)
    return out


def throughput(single_url: str, shard_urls: list[str], mode: str, ef: int, queries: np.ndarray,
               args) -> dict:
    """--clients threads, each with its own connections, running queries back to back for
    --throughput-seconds: queries per second for the whole machine."""
    stop = time.perf_counter() + args.throughput_seconds
    counts = [0] * args.clients
    cos = [Coordinator(single_url, shard_urls) for _ in range(args.clients)]
    for co in cos:
        co.set_ef_search(ef)

    def client(c: int) -> None:
        co, i = cos[c], c
        while time.perf_counter() < stop:
            run_mode(co, mode, queries[i % len(queries) : i % len(queries) + 1])
            counts[c] += 1
            i += args.clients

    try:
        with CpuMeter([pid for co in cos for pid in co.pids()]) as cpu:
            t = time.perf_counter()
            threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            wall = time.perf_counter() - t
    finally:
        for co in cos:
            co.close()
    return {"mode": mode, "ef_search": ef, "clients": args.clients, "queries": sum(counts),
            "qps": sum(counts) / wall, "others_cores": cpu.others}


# --- report -----------------------------------------------------------------------------------------


def print_report(r: dict) -> None:
    m, s = r["machine"], r["shards"]
    print(f"\nsharding simulated, {r['date']}: {r['rows']:,} vectors ({DIM}-d), {s} shards (databases), "
          f"{r['queries']} queries, k={K}, best of {r['rounds']} round(s) by p50")
    print(f"machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['database']} PostgreSQL {m['server_version']}, "
          f"pgvector {m['pgvector']}, shared_buffers {m['shared_buffers']}; builds: maintenance_work_mem "
          f"{r['maintenance_work_mem']}, {r['build_workers']} parallel maintenance worker(s); HNSW m={r['m']}, "
          f"ef_construction={r['ef_construction']}")
    print("data: generate_vectors of benchmarks/search.py, " + ", ".join(f"{k} {v}" for k, v in r["generator"].items()))

    one, parts = r["single"], r["shard_parts"]
    rows = [["single", f"{one['load']['rows']:,}", f"{one['load']['table_mb']:.0f}", f"{one['build']['build_s']:.1f}",
             "", f"{one['build']['size_mb']:.1f}", f"{one['build']['bytes_per_vector']:.0f}",
             _cores(one["build"]["machine_cores"])]]
    for i, p in enumerate(parts):
        rows.append([f"shard {i}", f"{p['load']['rows']:,}", f"{p['load']['table_mb']:.0f}",
                     f"{p['build']['build_s']:.1f}", "", f"{p['build']['size_mb']:.1f}",
                     f"{p['build']['bytes_per_vector']:.0f}", _cores(p["build"]["machine_cores"])])
    total_size = sum(p["build"]["size_mb"] for p in parts)
    build_sum = sum(p["build"]["build_s"] for p in parts)
    build_max = max(p["build"]["build_s"] for p in parts)
    rows.append([f"{s} shards", f"{sum(p['load']['rows'] for p in parts):,}",
                 f"{sum(p['load']['table_mb'] for p in parts):.0f}", f"{build_sum:.1f} (sum)",
                 f"{build_max:.1f} (max)", f"{total_size:.1f}",
                 f"{total_size * 2**20 / r['rows']:.0f}", ""])
    rows.append(["shards / single", "", "", f"{build_sum / one['build']['build_s']:.2f}",
                 f"{build_max / one['build']['build_s']:.2f}", f"{total_size / one['build']['size_mb']:.2f}", "", ""])
    if r.get("halfvec"):
        h = r["halfvec"]
        rows.append(["shard 0 halfvec", f"{parts[0]['load']['rows']:,}", "", f"{h['build_s']:.1f}", "",
                     f"{h['size_mb']:.1f}", f"{h['bytes_per_vector']:.0f}", _cores(h["machine_cores"])])
    print("\n### Build and size\n")
    print(markdown_table(["index", "rows", "table MB", "build s", "build s if parallel", "index MB",
                          "index bytes/vector", "busy cores (machine)"], rows))

    print("\n### Search (one query at a time)\n")
    rows = []
    for per_ef in r["search"]:
        base = per_ef["modes"][0]["p50_ms"]
        for i, x in enumerate(per_ef["modes"]):
            rows.append([str(per_ef["ef_search"]) if i == 0 else "", x["mode"], f"{x['recall']:.3f}",
                         f"{x['p50_ms']:.2f}", f"{x['p95_ms']:.2f}", f"{x['p50_ms'] / base:.2f}",
                         _cores(x["others_cores"])])
    print(markdown_table(["ef_search", "mode", "recall@10", "p50 ms", "p95 ms", "p50 / single", "others (cores)"],
                         rows))
    for per_ef in r["search"]:
        for warning in per_ef["warnings"]:
            print(f"\nWARNING: ef_search {per_ef['ef_search']}: {warning}")
    if r.get("throughput"):
        print("\n### Throughput (this whole machine)\n")
        print(markdown_table(["ef_search", "mode", "clients", "queries", "QPS", "others (cores)"],
                             [[str(t["ef_search"]), t["mode"], str(t["clients"]), str(t["queries"]),
                               f"{t['qps']:.0f}", _cores(t["others_cores"])] for t in r["throughput"]]))
    print(f"\nmodes: single = one index over all rows; sequential = the {s} shards one after another, merged; "
          f"parallel = the {s} at once from {s} threads (sharing this machine's {m['cores']} cores); slowest = "
          f"per query the slowest shard's own time + the merge (separate nodes, network excluded). others: cores "
          f"used by other processes (of {m['cores']}) meanwhile. Total {r['total_s']:.0f} s.")


# --- main -------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", "-n", type=int, default=1_000_000, help="vectors in all (default 1000000)")
    p.add_argument("--shards", type=int, default=4, help="databases the vectors are split into (default 4)")
    p.add_argument("-q", "--queries", type=int, default=200, help="held-out queries (default 200)")
    p.add_argument("--ef-search", type=int_list, default=[40, 100, 200],
                   help="hnsw.ef_search, the same on every index (default 40,100,200)")
    p.add_argument("--m", type=int, default=HNSW_M, help=f"HNSW m (default {HNSW_M}, pgclip's)")
    p.add_argument("--ef-construction", type=int, default=HNSW_EFC, help=f"HNSW ef_construction (default {HNSW_EFC})")
    p.add_argument("--halfvec", action=argparse.BooleanOptionalAction, default=True,
                   help="also build a halfvec HNSW index on shard 0, for its size (default on)")
    p.add_argument("--rounds", type=int, default=3,
                   help="timed rounds per mode; the lowest p50 counts (default 3)")
    p.add_argument("--warmup", type=int, default=20, help="untimed queries before each mode (default 20)")
    p.add_argument("--clients", type=int, default=os.cpu_count() or 2,
                   help="threads of the throughput measurement (default: this machine's cores)")
    p.add_argument("--throughput-seconds", type=float, default=20.0,
                   help="seconds of each throughput measurement; 0 leaves it out (default 20)")
    p.add_argument("--maintenance-work-mem", default="4GB",
                   help="for the builds (default 4GB: a 1M-row graph of 512-d vectors takes about 3 GB)")
    p.add_argument("--build-workers", type=int, default=1, help="max_parallel_maintenance_workers (default 1)")
    p.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary folder, the server running and the databases with their data")
    args = p.parse_args(argv)
    if args.shards < 2:
        p.error("--shards: at least 2")
    if args.n < args.shards * K:
        p.error(f"--n: at least {args.shards * K} (each shard needs {K} rows)")
    if args.rounds < 1 or args.queries < 1 or args.clients < 1:
        p.error("--rounds, --queries and --clients: at least 1")
    if not args.ef_search or not all(1 <= ef <= 1000 for ef in args.ef_search):
        p.error("--ef-search: values between 1 and 1000 (pgvector's range)")
    return args


def drop_databases(admin: psycopg.Connection, names: list[str]) -> None:
    for name in names:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(url: str, args: argparse.Namespace, generator: dict) -> dict:
    names = [SINGLE_DB] + [SHARD_DB.format(i) for i in range(args.shards)]
    urls = {name: make_conninfo(url, dbname=name) for name in names}
    out: dict = {"rows": args.n, "shards": args.shards, "queries": args.queries, "rounds": args.rounds,
                 "m": args.m, "ef_construction": args.ef_construction,
                 "maintenance_work_mem": args.maintenance_work_mem, "build_workers": args.build_workers,
                 "generator": generator}
    with connect(url, role="bench-shards", autocommit=True) as admin:
        out["machine"] = machine_facts(admin)
        for name in names:
            if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
                raise SystemExit(f"database {name} already exists (a run with --keep?): drop it, or use another server")
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
            with connect(urls[name], role="bench-shards", autocommit=True, vector=False) as conn:
                conn.execute("CREATE EXTENSION vector")
        try:
            log(f"generating {args.n:,} + {args.queries} vectors; exact top {K} by numpy")
            vectors, _ = generate_vectors(args.n + args.queries, **generator)
            base, queries = vectors[: args.n], vectors[args.n :].copy()
            truth = exact_topk(base, queries)
            ids = np.arange(1, args.n + 1, dtype=np.int64)

            log(f"single: COPY {args.n:,} rows, HNSW build")
            out["single"] = {"load": load(urls[SINGLE_DB], ids, base)}
            out["single"]["build"] = build(urls[SINGLE_DB], "vec_idx", "embedding vector_cosine_ops", args)
            log(f"single: built in {out['single']['build']['build_s']:.1f} s, "
                f"{out['single']['build']['size_mb']:.1f} MB")
            out["shard_parts"] = []
            for i in range(args.shards):
                mine = ids % args.shards == i
                shard_url = urls[SHARD_DB.format(i)]
                part = {"load": load(shard_url, ids[mine], base[mine])}
                part["build"] = build(shard_url, "vec_idx", "embedding vector_cosine_ops", args)
                out["shard_parts"].append(part)
                log(f"shard {i}: {part['load']['rows']:,} rows, built in {part['build']['build_s']:.1f} s, "
                    f"{part['build']['size_mb']:.1f} MB")
            del vectors, base
            if args.halfvec:
                out["halfvec"] = build(urls[SHARD_DB.format(0)], "vec_half_idx",
                                       f"(embedding::halfvec({DIM})) halfvec_cosine_ops", args)
                log(f"shard 0 halfvec: built in {out['halfvec']['build_s']:.1f} s, {out['halfvec']['size_mb']:.1f} MB")
                with connect(urls[SHARD_DB.format(0)], role="bench-shards", autocommit=True) as conn:
                    conn.execute("DROP INDEX vec_half_idx")  # the searches use the vector index only

            single_url, shard_urls = urls[SINGLE_DB], [urls[SHARD_DB.format(i)] for i in range(args.shards)]
            co = Coordinator(single_url, shard_urls)
            try:
                out["search"] = []
                for ef in args.ef_search:
                    co.set_ef_search(ef)
                    warnings = plan_warnings(co, queries[0])
                    for warning in warnings:
                        log(f"WARNING: ef_search {ef}: {warning}")
                    modes = measure_modes(co, queries, truth, args)
                    for res in modes:
                        log(f"ef_search {ef} {res['mode']}: recall {res['recall']:.3f}, p50 {res['p50_ms']:.2f} ms, "
                            f"p95 {res['p95_ms']:.2f} ms, others {_cores(res['others_cores'])} cores")
                    out["search"].append({"ef_search": ef, "modes": modes, "warnings": warnings})
            finally:
                co.close()
            out["throughput"] = []
            if args.throughput_seconds > 0:
                for mode in ("single", "parallel"):  # one index set at a time, warm (see measure_modes)
                    for ef in args.ef_search:
                        res = throughput(single_url, shard_urls, mode, ef, queries, args)
                        out["throughput"].append(res)
                        log(f"throughput ef_search {ef} {mode}: {res['qps']:.0f} queries/s, "
                            f"others {_cores(res['others_cores'])} cores")
        finally:
            if not args.keep:
                drop_databases(admin, names)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_total = time.perf_counter()
    generator = generator_options()
    tmp = Path(tempfile.mkdtemp(prefix="pgclip-bench-shards-"))
    external = bool(os.environ.get("PGCLIP_DATABASE_URL"))
    env = dict(os.environ)
    if not external:
        env["PGCLIP_DATA_DIR"] = str(tmp / "data")
    try:
        log(f"temporary folder {tmp}; database: {'PGCLIP_DATABASE_URL' if external else 'embedded'}; pgclip migrate")
        run_cli("migrate", env=env)
        url = database_url(Settings.from_env(env))
        results = run(url, args, generator)
        results["machine"]["database"] = "external" if external else "embedded"
    finally:
        if args.keep:
            log(f"kept {tmp} and databases {SINGLE_DB}, {SHARD_DB.format('*')}"
                + ("" if external else f" (stop the server with PGCLIP_DATA_DIR={tmp / 'data'} pgclip db stop)"))
        else:
            if not external:
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    subprocess.run([*PGCLIP, "db", "stop"], check=False, env=env, capture_output=True, timeout=120,
                                   cwd=REPO)
            shutil.rmtree(tmp, ignore_errors=True)
    results["date"] = time.strftime("%Y-%m-%d %H:%M")
    results["total_s"] = time.perf_counter() - t_total
    print_report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
