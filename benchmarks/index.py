"""pgvector's index choices inside PostgreSQL, side by side in one run: no index, IVFFlat, HNSW,
HNSW over halfvec, HNSW over binary_quantize with re-ranking.

    .venv/bin/python benchmarks/index.py                          # 100k vectors, every variant
    .venv/bin/python benchmarks/index.py --sizes 100000,1000000   # several sizes in one run
    .venv/bin/python benchmarks/index.py -n 20000 -q 50           # a quick look
    .venv/bin/python benchmarks/index.py --only exact,hnsw,halfvec --json out.json
    .venv/bin/python benchmarks/index.py --only hnsw,halfvec --grid 16x64,24x128,32x200 --ef-search 100,200,400

Seed paper 002's table (FAISS Flat vs IVF vs HNSW), asked of pgvector: for each index, its build
time, its size, recall@10 against exact search and single-client latency, with the speed-up over
exact search (exact p50 / variant p50) measured in the same run.

Data: N unit vectors of 512 dimensions, then Q held-out queries, from ``generate_vectors`` of
benchmarks/search.py with that script's defaults (100 cluster centres in a random 48-d subspace,
within-cluster spread 0.7, isotropic 512-d noise 0.3, a shared offset 0.8, L2-normalised; seed 0):
low intrinsic dimension, like CLIP embeddings, and the same vectors search.py uses at the same N
and Q. Ground truth: each query's exact top 10 by cosine, numpy, in chunks.

Database: a fresh embedded PostgreSQL in a temporary PGCLIP_DATA_DIR (``pgclip migrate``; ``pgclip
db stop`` at the end), or the server of PGCLIP_DATABASE_URL when that is set. The benchmark works
in its own schema, pgclip_bench (dropped at the end): the vectors go by binary COPY into
``pgclip_bench.vec (id bigint primary key, embedding vector(512))`` stored PLAIN (in the row, as
pgclip stores them), then VACUUM ANALYZE. One index at a time is built with --maintenance-work-mem
and --build-workers (max_parallel_maintenance_workers), measured, and dropped:

  exact     no index: ORDER BY embedding <=> q LIMIT 10, a sequential scan (--exact-queries queries)
  ivfflat   IVFFlat vector_cosine_ops, lists = rows / 1000 up to 1M rows and sqrt(rows) above
            (pgvector's advice); ivfflat.probes from --probes, plus sqrt(lists)
  hnsw      HNSW vector_cosine_ops, m=16, ef_construction=64 (or each graph of --grid, built and
            measured one after the other); hnsw.ef_search from --ef-search
  halfvec   the same HNSW over the expression embedding::halfvec(512) (halfvec_cosine_ops), queried
            with ORDER BY embedding::halfvec(512) <=> q::halfvec(512)
  binary    HNSW over binary_quantize(embedding)::bit(512) (bit_hamming_ops): the first --windows
            rows by Hamming distance, re-ranked by exact cosine (pgvector's README);
            hnsw.ef_search = the window

Each query runs alone over one psycopg connection, the vector bound as a parameter, in one process
(max_parallel_workers_per_gather = --parallel-workers, default 0). --warmup untimed queries come
first, then --rounds rounds over the queries; the round with the lowest p50 counts, printed with
the CPU other processes used meanwhile (these machines are shared). EXPLAIN checks once per
variant that the plan uses the variant's index (or none, for exact) and prints a warning if not.
Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

# benchmarks/search.py: this script's folder is first on sys.path.
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
    percentiles,
    recall,
    run_cli,
    timed,
)

from pgclip.core.settings import Settings
from pgclip.db.engine import connect, database_url

VARIANTS = ("exact", "ivfflat", "hnsw", "halfvec", "binary")
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)
COPY_CHUNK = 10_000  # rows per binary COPY write
TRUTH_CHUNK = 50_000  # rows per matrix product of the ground truth: 200 x 50k floats at a time
INDEX_MARK = "Index Scan using vec_idx"  # every variant's index is pgclip_bench.vec_idx


@dataclasses.dataclass(frozen=True)
class Setting:
    """One query-time setting of a variant: its label, the session settings it needs, the statement."""

    params: str
    gucs: dict[str, int]
    query: str  # %(q)s is the query vector


@dataclasses.dataclass(frozen=True)
class Variant:
    """One index choice: how it is built, how its plan is recognised, the settings it is queried at."""

    key: str  # its --only name
    index: str | None  # CREATE INDEX; None: no index, exact search
    plan_mark: str  # what EXPLAIN shows when the plan is the intended one
    queries: int  # how many of the queries are timed
    settings: list[Setting]


def rerank_query(window: int) -> str:
    """pgvector README's binary quantisation with re-ranking: `window` candidates by Hamming distance
    from the bit index, then the top K of those by exact cosine."""
    return (f"SELECT id FROM (SELECT id, embedding FROM pgclip_bench.vec"
            f" ORDER BY binary_quantize(embedding)::bit({DIM}) <~> binary_quantize(%(q)s) LIMIT {window}) c"
            f" ORDER BY embedding <=> %(q)s LIMIT {K}")


def variants(rows: int, args: argparse.Namespace) -> list[Variant]:
    knn = f"SELECT id FROM pgclip_bench.vec ORDER BY embedding <=> %(q)s LIMIT {K}"
    knn_half = f"SELECT id FROM pgclip_bench.vec ORDER BY embedding::halfvec({DIM}) <=> %(q)s::halfvec({DIM}) LIMIT {K}"
    # pgvector's README: lists = rows / 1000 up to 1M rows, sqrt(rows) above; probes: start at sqrt(lists).
    lists = max(1, rows // 1000 if rows <= 1_000_000 else round(math.sqrt(rows)))
    probes = sorted({p for p in (*args.probes, round(math.sqrt(lists))) if p <= lists})
    create = "CREATE INDEX vec_idx ON pgclip_bench.vec USING"
    hnsw_with = f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EFC})"
    n = args.queries

    def graphs(key: str, opclass: str, query: str) -> list[Variant]:
        """One variant per --grid point (m, ef_construction), each queried at every --ef-search."""
        return [Variant(key, f"{create} hnsw ({opclass}) WITH (m = {m}, ef_construction = {efc})", INDEX_MARK, n,
                        [Setting(f"{graph}ef_search {ef}", {"hnsw.ef_search": ef}, query) for ef in args.ef_search])
                for m, efc in args.grid
                for graph in [f"m {m}, ef_construction {efc}, " if args.grid != [(HNSW_M, HNSW_EFC)] else ""]]

    return [
        Variant("exact", None, "Seq Scan on vec", min(args.exact_queries, n), [Setting("no index", {}, knn)]),
        Variant("ivfflat", f"{create} ivfflat (embedding vector_cosine_ops) WITH (lists = {lists})", INDEX_MARK, n,
                [Setting(f"lists {lists}, probes {p}", {"ivfflat.probes": p}, knn) for p in probes]),
        *graphs("hnsw", "embedding vector_cosine_ops", knn),
        *graphs("halfvec", f"(embedding::halfvec({DIM})) halfvec_cosine_ops", knn_half),
        Variant("binary", f"{create} hnsw ((binary_quantize(embedding)::bit({DIM})) bit_hamming_ops) {hnsw_with}",
                INDEX_MARK, n,
                [Setting(f"window {w}, ef_search {w}", {"hnsw.ef_search": w}, rerank_query(w)) for w in args.windows]),
    ]


# --- data -------------------------------------------------------------------------------------------


def exact_topk(base: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Ids (1-based) of each query's K nearest rows by cosine (unit vectors: inner product), best first."""
    ids, sims = [], []
    for start in range(0, len(base), TRUTH_CHUNK):
        s = queries @ base[start : start + TRUTH_CHUNK].T
        top = np.argpartition(-s, min(K, s.shape[1] - 1), axis=1)[:, :K]
        ids.append(top + start + 1)
        sims.append(np.take_along_axis(s, top, axis=1))
    order = np.argsort(-np.hstack(sims), axis=1, kind="stable")[:, :K]
    return np.take_along_axis(np.hstack(ids), order, axis=1)


def binary_rows(ids: np.ndarray, vectors: np.ndarray) -> bytes:
    """Rows (id int8, embedding vector) in COPY BINARY format; pgvector's binary vector is
    dim int2, an unused int2, then dim float4, big-endian."""
    dim = vectors.shape[1]
    row = np.dtype([("nfields", ">i2"), ("l_id", ">i4"), ("id", ">i8"), ("l_vec", ">i4"), ("dim", ">i2"),
                    ("unused", ">i2"), ("vec", ">f4", (dim,))])
    rows = np.empty(len(vectors), dtype=row)
    rows["nfields"], rows["l_id"], rows["id"] = 2, 8, ids
    rows["l_vec"], rows["dim"], rows["unused"] = 4 + 4 * dim, dim, 0
    rows["vec"] = vectors
    return rows.tobytes()


def load(conn: psycopg.Connection, base: np.ndarray) -> dict:
    """A fresh pgclip_bench.vec holding base (ids 1..N), by binary COPY, then VACUUM ANALYZE."""
    conn.execute("DROP TABLE IF EXISTS pgclip_bench.vec")
    conn.execute(f"CREATE TABLE pgclip_bench.vec (id bigint PRIMARY KEY, embedding vector({DIM}) NOT NULL)")
    # A 512-d vector (2,056 bytes) is just over the TOAST threshold; PLAIN keeps it in the row, as in
    # pgclip's embeddings table, so the exact scan and the re-ranking read no TOAST.
    conn.execute("ALTER TABLE pgclip_bench.vec ALTER COLUMN embedding SET STORAGE PLAIN")
    t = time.perf_counter()
    with conn.cursor() as cur, cur.copy("COPY pgclip_bench.vec (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.write(COPY_HEADER)
        for start in range(0, len(base), COPY_CHUNK):
            chunk = base[start : start + COPY_CHUNK]
            copy.write(binary_rows(np.arange(start + 1, start + 1 + len(chunk)), chunk))
        copy.write(COPY_TRAILER)
    copy_s = time.perf_counter() - t
    t = time.perf_counter()
    conn.execute("VACUUM (ANALYZE) pgclip_bench.vec")
    vacuum_s = time.perf_counter() - t
    heap = conn.execute("SELECT pg_relation_size('pgclip_bench.vec')").fetchone()[0]
    return {"copy_s": copy_s, "vacuum_analyze_s": vacuum_s, "table_mb": heap / 2**20}


# --- measurements -----------------------------------------------------------------------------------


def time_queries(conn: psycopg.Connection, setting: Setting, queries: np.ndarray, truth: np.ndarray,
                 args: argparse.Namespace) -> dict:
    """One query at a time; the round with the lowest p50 counts. Recall: the answers are the same each round.
    The CPU meter spans the warm-up and every round: one round of fast queries is too short for /proc's ticks."""

    def search(q: int) -> list[int]:
        return [row[0] for row in conn.execute(setting.query, {"q": queries[q]})]

    rounds = []
    with CpuMeter([conn.info.backend_pid]) as cpu:
        for i in range(args.rounds):
            found, times = timed(search, len(queries), warmup=args.warmup if i == 0 else 0)
            rounds.append(percentiles(times))
    p50, p95 = min(rounds)
    return {"params": setting.params, "queries": len(queries), "recall": recall(found, truth), "p50_ms": p50,
            "p95_ms": p95, "others_cores": cpu.others}


def measure(conn: psycopg.Connection, variant: Variant, queries: np.ndarray, truth: np.ndarray,
            notices: list[str], args: argparse.Namespace) -> dict:
    """Build the variant's index (timed), check its plan, time each setting, drop the index."""
    out: dict = {"variant": variant.key, "index": variant.index, "settings": [], "warnings": []}
    if variant.index:
        log(f"  {variant.key}: {variant.index}")
        first_notice = len(notices)
        with CpuMeter([conn.info.backend_pid]) as cpu:
            t = time.perf_counter()
            conn.execute(variant.index)
            out["build_s"] = time.perf_counter() - t
        out["build_cores_machine"] = cpu.machine  # the parallel build worker counts as another process
        out["size_mb"] = conn.execute("SELECT pg_relation_size('pgclip_bench.vec_idx')").fetchone()[0] / 2**20
        out["build_notices"] = notices[first_notice:]
        log(f"  {variant.key}: built in {out['build_s']:.1f} s, {out['size_mb']:.1f} MB")
    queries, truth = queries[: variant.queries], truth[: variant.queries]
    for i, setting in enumerate(variant.settings):
        for name, value in setting.gucs.items():
            conn.execute("SELECT set_config(%s, %s, false)", [name, str(value)])
        if i == 0:
            plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN {setting.query}", {"q": queries[0]}))
            plan = re.sub(r"'(\[[-0-9.,e]{200,}\]|[01]{200,})'", "'...'", plan)  # the query vector, its bits
            out["plan"] = plan
            if variant.plan_mark not in plan:
                warning = f"WARNING: {variant.key}: the plan has no '{variant.plan_mark}':\n{plan}"
                out["warnings"].append(warning)
                log(warning)
        res = time_queries(conn, setting, queries, truth, args)
        out["settings"].append(res)
        log(f"  {variant.key} {setting.params}: recall {res['recall']:.3f}, p50 {res['p50_ms']:.2f} ms, "
            f"p95 {res['p95_ms']:.2f} ms, other processes {_cores(res['others_cores'])} cores")
    if variant.index and args.inserts:
        out["inserts"] = time_inserts(conn, queries, args.inserts)
        ins = out["inserts"]
        log(f"  {variant.key}: {ins['rows']} row inserts into the index, p50 {ins['p50_ms']:.2f} ms, "
            f"p95 {ins['p95_ms']:.2f} ms")
    if variant.index:
        conn.execute("DROP INDEX pgclip_bench.vec_idx")
    return out


def time_inserts(conn: psycopg.Connection, vectors: np.ndarray, n: int) -> dict:
    """One row at a time into the indexed table, as a worker's vector reaches a built index (the
    held-out vectors in turn, under new ids), then removed again. synchronous_commit off, so that
    the figure is the row's insert and its graph update rather than the disk's flush."""
    start = conn.execute("SELECT max(id) FROM pgclip_bench.vec").fetchone()[0] + 1
    conn.execute("SET synchronous_commit = off")
    times = []
    for i in range(n):
        t = time.perf_counter()
        conn.execute("INSERT INTO pgclip_bench.vec (id, embedding) VALUES (%s, %s)",
                     [start + i, vectors[i % len(vectors)]])
        times.append(time.perf_counter() - t)
    conn.execute("RESET synchronous_commit")
    conn.execute("DELETE FROM pgclip_bench.vec WHERE id >= %s", [start])
    p50, p95 = percentiles(times)
    return {"rows": n, "p50_ms": p50, "p95_ms": p95}


def run_size(conn: psycopg.Connection, rows: int, generator: dict, notices: list[str],
             args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    log(f"{rows} vectors: generating {rows} + {args.queries}, exact top {K} by numpy")
    vectors, _ = generate_vectors(rows + args.queries, **generator)
    base, queries = vectors[:rows], vectors[rows:].copy()
    truth = exact_topk(base, queries)
    log(f"{rows} vectors: binary COPY into pgclip_bench.vec, VACUUM ANALYZE")
    out: dict = {"rows": rows, "load": load(conn, base), "variants": []}
    del vectors, base
    for variant in variants(rows, args):
        if variant.key in args.only:
            out["variants"].append(measure(conn, variant, queries, truth, notices, args))
    out["elapsed_s"] = time.perf_counter() - t0
    log(f"{rows} vectors: done in {out['elapsed_s']:.0f} s")
    return out


# --- report -----------------------------------------------------------------------------------------


def _cores(x: float | None) -> str:
    return "?" if x is None else f"{x:.2f}"


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
             " | ".join("-" * w for w in widths)]
    lines += [" | ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(f"| {line} |" for line in lines)


def print_report(r: dict) -> None:
    m = r["machine"]
    print(f"\npgvector index benchmark, {r['date']}: {r['queries']} queries, k={K}, {r['warmup']} warm-up queries, "
          f"best of {r['rounds']} round(s) by p50")
    print(f"machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['database']} PostgreSQL {m['server_version']}, "
          f"pgvector {m['pgvector']}, shared_buffers {m['shared_buffers']}, work_mem {m['work_mem']}, jit {m['jit']}")
    print(f"set for this session: maintenance_work_mem {m['maintenance_work_mem']}, max_parallel_maintenance_workers "
          f"{m['max_parallel_maintenance_workers']} (builds), max_parallel_workers_per_gather "
          f"{m['max_parallel_workers_per_gather']} (queries)")
    print("data: generate_vectors of benchmarks/search.py, " + ", ".join(f"{k} {v}" for k, v in r["generator"].items()))
    head = ["variant", "params", "build s", "size MB", "recall@10", "p50 ms", "p95 ms", "speed-up vs exact",
            "others (cores)"]
    for size in r["sizes"]:
        ld = size["load"]
        print(f"\n### {size['rows']:,} vectors ({DIM}-d)\n")
        print(f"load: binary COPY {ld['copy_s']:.1f} s, VACUUM ANALYZE {ld['vacuum_analyze_s']:.1f} s, "
              f"table {ld['table_mb']:.0f} MB (embedding stored PLAIN); this size took {size['elapsed_s']:.0f} s\n")
        exact = next((v["settings"][0]["p50_ms"] for v in size["variants"] if v["variant"] == "exact"), None)
        rows = []
        for v in size["variants"]:
            for i, s in enumerate(v["settings"]):
                built = i == 0 and "build_s" in v
                params = s["params"] + (f" ({s['queries']} queries)" if s["queries"] != r["queries"] else "")
                rows.append([v["variant"] if i == 0 else "", params,
                             f"{v['build_s']:.1f}" if built else "", f"{v['size_mb']:.1f}" if built else "",
                             f"{s['recall']:.3f}", f"{s['p50_ms']:.2f}", f"{s['p95_ms']:.2f}",
                             f"{exact / s['p50_ms']:.1f}" if exact else "n/a", _cores(s["others_cores"])])
        print(markdown_table(head, rows))
        for v in size["variants"]:
            if "inserts" in v:
                ins = v["inserts"]
                print(f"\n{v['variant']} {v['settings'][0]['params'].split(', ef_search')[0]}: {ins['rows']} row "
                      f"inserts, p50 {ins['p50_ms']:.2f} ms, p95 {ins['p95_ms']:.2f} ms")
        for v in size["variants"]:
            for notice in v.get("build_notices", []):
                print(f"\n{v['variant']} build notice: {notice}")
            for warning in v["warnings"]:
                print(f"\n{warning}")
    print(f"\nspeed-up vs exact: exact p50 / variant p50, same run. others: cores used by other processes (of "
          f"{m['cores']}) during the setting's warm-up and rounds (/proc counts in 10 ms ticks: rough below a "
          f"second). Total {r['total_s']:.0f} s.")


# --- main -------------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def grid_list(text: str) -> list[tuple[int, int]]:
    """"16x64,24x128": HNSW graphs as (m, ef_construction)."""
    try:
        grid = [(int(m), int(efc)) for m, efc in (x.strip().split("x") for x in text.split(",") if x.strip())]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma list of MxEF_CONSTRUCTION, e.g. 16x64,24x128") from None
    if bad := [f"{m}x{efc}" for m, efc in grid if efc < 2 * m]:
        raise argparse.ArgumentTypeError(f"{', '.join(bad)}: ef_construction must be at least twice m (pgvector)")
    return grid


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--vectors", type=int, default=100_000, help="rows in the table (default 100000)")
    p.add_argument("--sizes", type=int_list, help="several sizes in one run, e.g. 100000,1000000 (overrides -n)")
    p.add_argument("-q", "--queries", type=int, default=200, help="held-out queries (default 200)")
    p.add_argument("--exact-queries", type=int, default=50,
                   help="queries timed for the exact variant, slow at 1M rows (default 50)")
    p.add_argument("--only", default=",".join(VARIANTS), help=f"comma list of: {', '.join(VARIANTS)} (default all)")
    p.add_argument("--probes", type=int_list, default=[1, 10], help="ivfflat.probes (default 1,10; sqrt(lists) added)")
    p.add_argument("--ef-search", type=int_list, default=[40, 100, 200],
                   help="hnsw.ef_search for hnsw and halfvec (default 40,100,200)")
    p.add_argument("--grid", type=grid_list, default=[(HNSW_M, HNSW_EFC)],
                   help=f"HNSW graphs built for hnsw and halfvec, as MxEF_CONSTRUCTION, e.g. 16x64,24x128,32x200 "
                        f"(default {HNSW_M}x{HNSW_EFC}, pgclip's default)")
    p.add_argument("--windows", type=int_list, default=[40, 100, 200],
                   help="binary: candidates re-ranked by exact cosine (default 40,100,200)")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per setting; the lowest p50 counts (default 2)")
    p.add_argument("--warmup", type=int, default=20, help="untimed queries before each setting (default 20)")
    p.add_argument("--maintenance-work-mem", default="4GB",
                   help="for the builds (default 4GB: a 1M-row HNSW graph of 512-d vectors takes about 3 GB, and "
                        "pgvector builds much slower once the graph no longer fits)")
    p.add_argument("--build-workers", type=int, default=1, help="max_parallel_maintenance_workers (default 1)")
    p.add_argument("--parallel-workers", type=int, default=0,
                   help="max_parallel_workers_per_gather for the queries (default 0: each query in one process, so "
                        "variants compare core for core and the CPU meter can tell other processes apart)")
    p.add_argument("--inserts", type=int, default=0,
                   help="after each index's queries, time this many single-row inserts into it (default 0: none)")
    p.add_argument("--json", metavar="FILE", help="also write every figure (and the plans) to FILE as JSON")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary folder, the server running and the last table with its data")
    args = p.parse_args(argv)
    args.only = {x.strip() for x in args.only.split(",") if x.strip()}
    if args.rounds < 1:
        p.error("--rounds: at least 1")
    if unknown := args.only - set(VARIANTS):
        p.error(f"--only: unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_total = time.perf_counter()
    generator = generator_options()
    tmp = Path(tempfile.mkdtemp(prefix="pgclip-bench-index-"))
    external = bool(os.environ.get("PGCLIP_DATABASE_URL"))
    env = dict(os.environ)
    if not external:
        env["PGCLIP_DATA_DIR"] = str(tmp / "data")
    results: dict = {"date": time.strftime("%Y-%m-%d"), "queries": args.queries, "rounds": args.rounds,
                     "warmup": args.warmup, "generator": generator, "sizes": []}
    try:
        log(f"temporary folder {tmp}; database: {'PGCLIP_DATABASE_URL' if external else 'embedded'}; pgclip migrate")
        run_cli("migrate", env=env)
        url = database_url(Settings.from_env(env))
        with connect(url, role="bench-index", autocommit=True) as conn:
            notices: list[str] = []
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            try:
                conn.execute("CREATE SCHEMA pgclip_bench")
            except psycopg.errors.DuplicateSchema:
                raise SystemExit("schema pgclip_bench already exists in this database (a run with --keep?): "
                                 "DROP SCHEMA pgclip_bench CASCADE, or use another database") from None
            try:
                for name, value in (("maintenance_work_mem", args.maintenance_work_mem),
                                    ("max_parallel_maintenance_workers", str(args.build_workers)),
                                    ("max_parallel_workers_per_gather", str(args.parallel_workers))):
                    conn.execute("SELECT set_config(%s, %s, false)", [name, value])
                results["machine"] = {**machine_facts(conn), "database": "external" if external else "embedded"}
                for rows in args.sizes or [args.vectors]:
                    results["sizes"].append(run_size(conn, rows, generator, notices, args))
            finally:
                if not args.keep:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("DROP SCHEMA pgclip_bench CASCADE")
    finally:
        if args.keep:
            log(f"kept {tmp} and schema pgclip_bench"
                + ("" if external else f" (stop the server with PGCLIP_DATA_DIR={tmp / 'data'} pgclip db stop)"))
        else:
            if not external:
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    subprocess.run([*PGCLIP, "db", "stop"], check=False, env=env, capture_output=True, timeout=120,
                                   cwd=REPO)
            shutil.rmtree(tmp, ignore_errors=True)
    results["total_s"] = time.perf_counter() - t_total
    print_report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
