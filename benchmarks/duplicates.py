"""Speed and quality of ``pgclip duplicates`` (near-identical images) on N images with planted copies.

    .venv/bin/python benchmarks/duplicates.py                          # 100k images, 1000 planted groups
    .venv/bin/python benchmarks/duplicates.py -n 10000 --groups 100    # a quick look (about a minute)
    .venv/bin/python benchmarks/duplicates.py --threshold 0.95 --also 0.9,0.97 --json out.json
    .venv/bin/python benchmarks/duplicates.py --also ''                # the main threshold only
    .venv/bin/python benchmarks/duplicates.py --ef-search 40,200       # + in process at other hnsw.ef_search

Issue #9 asks for ``pgclip duplicates`` to be fast enough for 100k images on this machine. The
command (db/duplicates.py) asks the model's HNSW index for each image's 5 nearest neighbours (a
LATERAL kNN per image, one SQL statement), keeps the pairs at or above the similarity threshold
and joins them into groups in Python (union-find). This script measures:

* end to end: ``pgclip duplicates --threshold T --json`` as a subprocess (interpreter start-up,
  connection, the statement, grouping, JSON), wall seconds and images/s = N / seconds;
* in process, the same ``pgclip.db.duplicates.near_duplicates`` call split into the SQL
  (``_pairs``, timed by wrapping it) and the rest (grouping in Python), at T and at each --also
  threshold (in process only: the subprocess would run the same statement again), and at
  --threshold with the model's ef_search set to each --ef-search value (as ``pgclip index rebuild
  --ef-search`` sets it; the command runs at the model's ef_search, else at 100);
* quality: pairs found (unordered), compared with exact search (numpy, the same rule: each image's
  5 nearest others by cosine, kept at >= T; "pair recall vs exact" = share of those exact pairs the
  index found), and with every exact pair >= T whatever its rank; groups reported and groups the
  exact pairs make (connected components); recall of the planted groups (a planted group is found
  when all its members are in one reported group; "exact" when that group is exactly the planted
  one); false groups (reported groups holding no two members of one planted group: the generator's
  own near neighbours, which random data can have at 0.9 and, at 100k, perhaps at 0.95).

Data: N unit vectors (512-d) from ``generate_vectors`` of benchmarks/search.py with that script's
defaults (100 cluster centres in a random 48-d subspace, spread 0.7, isotropic noise 0.3, shared
offset 0.8, L2-normalised; seed 0), then --groups planted groups among them: each of size 2-4
(uniform), over distinct random rows; the first row keeps its vector (the original), each other
row is overwritten with a copy: original * c + sqrt(1 - c^2) * u, u a gaussian vector made
orthogonal to the original and normalised; that is the original plus gaussian noise, renormalised,
with the noise scaled so that the cosine to the original is exactly c, c uniform in
[--copy-min, --copy-max] (default 0.97-0.995). Two copies of one original are about c1 * c2 apart
(0.94-0.99): at 0.95 some copy-copy pairs fall below the threshold and the group holds together
through its original, as resized copies of one photo do.

Database: a fresh embedded PostgreSQL in a temporary PGCLIP_DATA_DIR, ``pgclip migrate`` with
PGCLIP_MODEL=ViT-B-32 and a random-weight local checkpoint (as search.py: the command never runs
the model, but the model must be registered); images and vectors by COPY with search.py's
``load`` (ids 1..N, no captions), the model's HNSW index built after the load with pgclip's own
DDL (``index_ddl``, m=16, ef_construction=64), VACUUM ANALYZE. EXPLAIN checks once that the
per-image kNN uses the model's HNSW index and warns if not. The command sets hnsw.ef_search to
the model's ef_search, else ``pgclip.db.duplicates.EF_SEARCH`` (100). A planted group the index
misses is listed with where its members went: at ef_search 40 a few tenths of a percent of these
vectors cannot be reached by the HNSW search even from their own vector (it settles in another
cluster), and every copy of such an image shares its fate. ``pgclip db stop`` at the end (--keep keeps folder and server). CPU used by
other processes is printed beside each timing (this machine is shared). Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
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

# benchmarks/search.py and index.py: this script's folder is first on sys.path.
from index import markdown_table
from psycopg import sql
from search import (
    DIM,
    HNSW_EFC,
    HNSW_M,
    MODEL,
    PGCLIP,
    REPO,
    CpuMeter,
    generate_vectors,
    generator_options,
    load,
    log,
    machine_facts,
    make_checkpoint,
    run_cli,
)

from pgclip.core.settings import Settings
from pgclip.db.engine import connect, database_url

EXACT_CHUNK = 1_000  # rows per matrix product of the exact search: 1000 x N floats at a time (400 MB at 100k)
ROLE = "bench-duplicates"  # application_name of this script's own connections
# What `pgclip index rebuild --ef-search N` does to the active model (None: back to the default).
SET_EF_SEARCH = ("UPDATE pgclip.models SET index_params = CASE WHEN %(ef)s::int IS NULL THEN index_params - 'ef_search'"
                 " ELSE index_params || jsonb_build_object('ef_search', %(ef)s::int) END WHERE state = 'active'")


# --- data -------------------------------------------------------------------------------------------


def plant_groups(base: np.ndarray, groups: int, lo: float, hi: float, seed: int) -> list[list[int]]:
    """Overwrite rows of base with near-copies (see the module docstring); the planted groups as 1-based ids."""
    rng = np.random.default_rng(seed + 3)
    sizes = rng.integers(2, 5, groups)
    if sizes.sum() > len(base):
        raise SystemExit(f"{groups} groups need {sizes.sum()} images, more than the {len(base)} loaded")
    rows = rng.choice(len(base), int(sizes.sum()), replace=False)
    planted, start = [], 0
    for size in sizes:
        members = rows[start : start + size]
        start += size
        original = base[members[0]].astype(np.float64)
        for row in members[1:]:
            c = rng.uniform(lo, hi)
            u = rng.standard_normal(DIM)
            u -= (u @ original) * original
            u /= np.linalg.norm(u)
            copy = c * original + np.sqrt(1 - c * c) * u
            base[row] = copy / np.linalg.norm(copy)
        planted.append(sorted(int(m) + 1 for m in members))
    return planted


def pair_keys(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Unordered pairs of 1-based ids as sorted unique int64 keys."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    return np.unique(np.minimum(a, b) * (n + 1) + np.maximum(a, b))


def exact_pairs(base: np.ndarray, floor: float, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every ordered pair (i, j), i != j, with cosine >= floor, by chunked matrix products: 1-based ids,
    similarities, and whether j is among i's k nearest others (the rule ``pgclip duplicates`` applies)."""
    rows, cols, sims = [], [], []
    for start in range(0, len(base), EXACT_CHUNK):
        s = base[start : start + EXACT_CHUNK] @ base.T
        s[np.arange(len(s)), np.arange(start, start + len(s))] = -np.inf  # not itself
        r, c = np.nonzero(s >= floor)
        rows.append(r + start)
        cols.append(c)
        sims.append(s[r, c])
    r, c, s = np.concatenate(rows), np.concatenate(cols), np.concatenate(sims)
    order = np.lexsort((-s, r))  # by row, best first
    r, c, s = r[order], c[order], s[order]
    first = np.searchsorted(r, r)  # where each row's run starts
    in_top = (np.arange(len(r)) - first) < k
    return r + 1, c + 1, s, in_top


def components(keys: np.ndarray, n: int) -> list[list[int]]:
    """Groups (connected components of two or more ids) that the unordered pairs make."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a, b = keys // (n + 1), keys % (n + 1)
    graph = coo_matrix((np.ones(len(keys), dtype=np.int8), (a, b)), shape=(n + 1, n + 1))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    out: dict[int, list[int]] = {}
    for i in np.flatnonzero(sizes[labels] > 1):
        out.setdefault(int(labels[i]), []).append(int(i))
    return list(out.values())


def score_groups(reported: list[list[int]], planted: list[list[int]]) -> dict:
    """Planted groups found (all members in one reported group) or found exactly; reported groups
    holding no two members of one planted group."""
    where = {i: g for g, ids in enumerate(reported) for i in ids}
    found = exact = 0
    has_planted_pair: set[int] = set()
    missed = []
    for members in planted:
        homes = [where.get(i) for i in members]
        if homes[0] is not None and all(h == homes[0] for h in homes):
            found += 1
            exact += len(reported[homes[0]]) == len(members)
        else:  # each member's reported group (None: in none)
            missed.append({"members": members, "in_groups": [None if h is None else reported[h] for h in homes]})
        counts: dict[int, int] = {}
        for h in homes:
            if h is not None:
                counts[h] = counts.get(h, 0) + 1
        has_planted_pair.update(h for h, c in counts.items() if c >= 2)
    return {"planted_found": found, "planted_exact": exact, "planted_recall": found / len(planted) if planted else None,
            "false_groups": len(reported) - len(has_planted_pair),
            "largest_group": max((len(g) for g in reported), default=0), "missed": missed}


# --- measurements -----------------------------------------------------------------------------------


class _Explain:
    """Stands in for the connection ``_pairs`` is given: runs EXPLAIN of the statement it sends."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def execute(self, query, params=None):
        if isinstance(query, str):  # the settings it makes first: run as they are
            return self.conn.execute(query, params)
        return self.conn.execute(sql.SQL("EXPLAIN ") + query, params)


def pairs_plan(conn, model, threshold: float) -> tuple[str, list[str]]:
    """The plan of the statement ``near_duplicates`` runs, and warnings if it does not use the HNSW index."""
    from pgclip.db import duplicates

    if not hasattr(duplicates, "_pairs"):
        return "", ["WARNING: pgclip.db.duplicates._pairs is gone: plan not checked"]
    plan = "\n".join(row[0] for row in duplicates._pairs(_Explain(conn), model, threshold))
    conn.rollback()
    warnings = []
    if f"Index Scan using {model.index_name}" not in plan:
        warnings.append(f"WARNING: the per-image kNN does not use the HNSW index {model.index_name}:\n{plan}")
    if "Gather" in plan:
        warnings.append("note: the plan is parallel (Gather): the CPU meters count the leader only")
    return plan, warnings


def in_process(url: str, threshold: float, n: int, ef_search: int | None = None) -> dict:
    """``near_duplicates`` in this process, its SQL (``_pairs``) timed apart from the grouping; with
    ef_search, with the model's ef_search set to it for the call (else as the model says)."""
    from pgclip.db import duplicates

    box: dict = {}
    original = getattr(duplicates, "_pairs", None)

    def timed_pairs(*args, **kwargs):
        t = time.perf_counter()
        pairs = original(*args, **kwargs)
        box["sql_s"] = time.perf_counter() - t
        box["pairs"] = pairs
        return pairs

    if original is not None:
        duplicates._pairs = timed_pairs
    try:
        with connect(url, role=ROLE) as conn:
            if ef_search is not None:
                conn.execute(SET_EF_SEARCH, {"ef": ef_search})
                conn.commit()
            params = conn.execute("SELECT index_params FROM pgclip.models WHERE state = 'active'").fetchone()[0]
            ef = params.get("ef_search", duplicates.EF_SEARCH)
            conn.commit()
            with CpuMeter([conn.info.backend_pid]) as cpu:
                t = time.perf_counter()
                _, groups = duplicates.near_duplicates(conn, threshold)
                total = time.perf_counter() - t
    finally:
        if original is not None:
            duplicates._pairs = original
        if ef_search is not None:
            with connect(url, role=ROLE) as conn:
                conn.execute(SET_EF_SEARCH, {"ef": None})
    run = "in process" + ("" if ef_search is None else ", model's ef_search set")
    out = {"threshold": threshold, "ef_search": ef, "run": run,
           "seconds": total, "images_per_s": n / total,
           "sql_s": box.get("sql_s"), "grouping_s": total - box["sql_s"] if "sql_s" in box else None,
           "others_cores": cpu.others, "groups": [g.ids for g in groups]}
    if "pairs" in box:
        pairs = box["pairs"]
        out["pair_keys"] = pair_keys([p[0] for p in pairs], [p[1] for p in pairs], n)
        out["pair_rows"] = len(pairs)
    return out


def _cpu_s(pid: int) -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def cli_run(url: str, env: dict[str, str], threshold: float, n: int, ef_search: str) -> dict:
    """``pgclip duplicates --threshold T --json`` in a subprocess, end to end. Meanwhile the backends
    serving it (found in pg_stat_activity) are watched, so that the CPU of other processes can be told."""
    done = threading.Event()
    box: dict = {}

    def run() -> None:
        try:
            box["proc"] = run_cli("duplicates", "--threshold", str(threshold), "--json", env=env, timeout=None)
        except SystemExit as exc:
            box["error"] = str(exc)
        finally:
            done.set()

    backend_cpu: dict[int, float] = {}
    children0 = os.times()
    thread = threading.Thread(target=run)
    with connect(url, role=ROLE, autocommit=True) as watch, CpuMeter() as cpu:
        t = time.perf_counter()
        thread.start()
        while not done.wait(0.25):
            for (pid,) in watch.execute(
                "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                " AND (application_name LIKE 'pgclip-cli[%' OR backend_type = 'parallel worker')"
            ).fetchall():
                if (s := _cpu_s(pid)) is not None:
                    backend_cpu[pid] = s  # the last reading before it exits
        seconds = time.perf_counter() - t
        thread.join()
    if "error" in box:
        raise SystemExit(box["error"])
    children1 = os.times()
    cli_cpu = (children1.children_user - children0.children_user
               + children1.children_system - children0.children_system)
    ours = (cli_cpu + sum(backend_cpu.values())) / seconds + (cpu.ours or 0.0)
    report = json.loads(box["proc"].stdout)
    return {"threshold": threshold, "ef_search": ef_search, "run": "pgclip duplicates --json (subprocess)",
            "seconds": seconds,
            "images_per_s": n / seconds, "sql_s": None, "grouping_s": None,
            "others_cores": None if cpu.machine is None else max(0.0, cpu.machine - ours),
            "groups": [g["ids"] for g in report["groups"]]}


def quality(res: dict, exact: tuple, planted: list[list[int]], n: int) -> dict:
    r, c, s, in_top = exact
    t = res["threshold"]
    top = pair_keys(r[in_top & (s >= t)], c[in_top & (s >= t)], n)
    every = pair_keys(r[s >= t], c[s >= t], n)
    out = {"exact_pairs_top": len(top), "exact_pairs_all": len(every)}
    try:
        out["exact_groups"] = len(components(top, n))
    except ImportError:
        out["exact_groups"] = None
    if "pair_keys" in res:
        found = res["pair_keys"]
        out["pairs"] = len(found)
        out["pair_recall"] = len(np.intersect1d(found, top)) / len(top) if len(top) else None
        out["pairs_beyond_exact_top"] = len(np.setdiff1d(found, top))
    out["n_groups"] = len(res["groups"])
    out.update(score_groups(res["groups"], planted))
    return out


# --- report -----------------------------------------------------------------------------------------


def _f(x, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def print_report(r: dict) -> None:
    m = r["machine"]
    print(f"\npgclip duplicates benchmark, {r['date']}: {r['n']:,} images ({DIM}-d), {r['planted_groups']} planted "
          f"groups ({r['planted_images']} images, copies at cosine {r['copy_cosine'][0]}-{r['copy_cosine'][1]} to "
          f"their original), {r['neighbours']} neighbours per image")
    print(f"machine: {m['cores']} cores, {m['memory_gib']} GiB, PostgreSQL {m['server_version']}, pgvector "
          f"{m['pgvector']}, shared_buffers {m['shared_buffers']}, work_mem {m['work_mem']}, "
          f"max_parallel_workers_per_gather {m['max_parallel_workers_per_gather']}, jit {m['jit']}, "
          f"server's hnsw.ef_search {m['hnsw.ef_search']}, hnsw.iterative_scan {m['hnsw.iterative_scan']}; "
          f"load average before/after {r['loadavg']}")
    print("data: generate_vectors of benchmarks/search.py, " + ", ".join(f"{k} {v}" for k, v in r["generator"].items()))
    ld = r["load"]
    print(f"load: images COPY {ld['images_copy_s']:.1f} s, vectors binary COPY {ld['vectors_copy_s']:.1f} s, HNSW "
          f"build (m={HNSW_M}, ef_construction={HNSW_EFC}) {ld['index_build_s']:.1f} s, {ld['index_size']}; "
          f"VACUUM ANALYZE {ld['vacuum_analyze_s']:.1f} s; exact pairs by numpy {r['exact_s']:.1f} s")
    print(f"plan: {r['plan_summary']}\n")
    head = ["threshold", "ef_search", "run", "seconds", "images/s", "SQL s", "grouping s", "others (cores)"]
    rows = [[f"{x['threshold']}", str(x["ef_search"]), x["run"], f"{x['seconds']:.2f}", f"{x['images_per_s']:,.0f}",
             _f(x["sql_s"], ".2f"),
             _f(x["grouping_s"], ".3f"), _f(x["others_cores"], ".2f")] for x in r["runs"]]
    print(markdown_table(head, rows))
    print()
    head = ["threshold", "ef_search", "pairs found", "exact pairs (top 5)", "pair recall vs exact",
            "exact pairs (all >= T)",
            "groups", "exact groups", "planted found", "planted exact", "false groups", "largest group"]
    rows = []
    for q in r["quality"]:
        rows.append([f"{q['threshold']}", str(q["ef_search"]), _f(q.get("pairs"), "d"), str(q["exact_pairs_top"]),
                     _f(q.get("pair_recall"), ".4f"), str(q["exact_pairs_all"]), str(q["n_groups"]),
                     _f(q["exact_groups"], "d"),
                     f"{q['planted_found']}/{r['planted_groups']} ({q['planted_recall']:.3f})",
                     str(q["planted_exact"]), str(q["false_groups"]), str(q["largest_group"])])
    print(markdown_table(head, rows))
    print("\npairs: unordered pairs at >= threshold among each image's 5 nearest (index: what the statement returned; "
          "exact: numpy, same rule). exact pairs (all >= T): whatever their rank. exact groups: connected components "
          "of the exact top-5 pairs. planted found: all members in one reported group; exact: that group is the "
          "planted one. false groups: reported groups holding no two members of one planted group (the data's own "
          "near neighbours). SQL s: the statement (_pairs) incl. fetching the rows; grouping s: the rest of "
          "near_duplicates. others: cores used by other processes (of "
          f"{m['cores']}) meanwhile.")
    for q in r["quality"]:
        for miss in q["missed"][:10]:
            where = ", ".join(f"#{i}: {g or 'no group'}"
                              for i, g in zip(miss["members"], miss["in_groups"], strict=True))
            print(f"\nmissed at {q['threshold']}, ef_search {q['ef_search']}: planted group {miss['members']}, "
                  f"members reported in {where}")
        if len(q["missed"]) > 10:
            print(f"... and {len(q['missed']) - 10} more planted groups missed at {q['threshold']}, ef_search "
                  f"{q['ef_search']} (--json lists them)")
    for w in r["warnings"]:
        print(f"\n{w}")
    if r.get("cli_mismatch"):
        print(f"\nnote: {r['cli_mismatch']}")
    print(f"\ntotal {r['total_s']:.0f} s")


# --- main -------------------------------------------------------------------------------------------


def float_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--images", type=int, default=100_000, help="images loaded (default 100000)")
    p.add_argument("--groups", type=int, default=1000,
                   help="planted near-duplicate groups, 2-4 images each (default 1000)")
    p.add_argument("--copy-min", type=float, default=0.97,
                   help="least cosine of a copy to its original (default 0.97)")
    p.add_argument("--copy-max", type=float, default=0.995,
                   help="largest cosine of a copy to its original (default 0.995)")
    p.add_argument("--threshold", type=float, default=0.95,
                   help="similarity threshold timed end to end and in process (default 0.95)")
    p.add_argument("--also", type=float_list, default=[0.9],
                   help="more thresholds, in process only (default 0.9; '' for none)")
    p.add_argument("--ef-search", type=lambda t: [int(x) for x in t.split(",") if x.strip()], default=[],
                   help="also run in process at --threshold with the model's ef_search set to each of these, e.g. "
                        "40,200 (default none: as the command runs, at the model's ef_search or 100)")
    p.add_argument("--json", metavar="FILE", help="also write every figure (and the plan) to FILE as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder and leave the server running")
    args = p.parse_args(argv)
    if not 0 < args.copy_min <= args.copy_max < 1:
        p.error("need 0 < --copy-min <= --copy-max < 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_total = time.perf_counter()
    load_before = os.getloadavg()[0]
    generator = generator_options()
    tmp = Path(tempfile.mkdtemp(prefix="pgclip-bench-duplicates-"))
    env = {k: v for k, v in os.environ.items() if k != "PGCLIP_DATABASE_URL"}  # always a fresh embedded server
    checkpoint = tmp / "vit-b-32-random.pt"
    env.update({"PGCLIP_DATA_DIR": str(tmp / "data"), "PGCLIP_MODEL": MODEL, "PGCLIP_PRETRAINED": str(checkpoint),
                "PGCLIP_DEVICE": "cpu", "PGCLIP_HNSW_M": str(HNSW_M), "PGCLIP_HNSW_EF_CONSTRUCTION": str(HNSW_EFC)})
    n = args.images
    from pgclip.db.duplicates import NEIGHBOURS

    results: dict = {"date": time.strftime("%Y-%m-%d"), "n": n, "planted_groups": args.groups,
                     "copy_cosine": [args.copy_min, args.copy_max], "neighbours": NEIGHBOURS, "generator": generator,
                     "runs": [], "quality": [], "warnings": []}
    try:
        log(f"temporary folder {tmp}")
        log(f"generating {n} vectors, planting {args.groups} groups")
        base, _ = generate_vectors(n, **generator)
        planted = plant_groups(base, args.groups, args.copy_min, args.copy_max, generator["seed"])
        results["planted_images"] = sum(len(g) for g in planted)
        thresholds = [args.threshold, *[t for t in args.also if t != args.threshold]]
        log(f"exact pairs >= {min(thresholds)} by numpy")
        t = time.perf_counter()
        exact = exact_pairs(base, min(thresholds), NEIGHBOURS)
        results["exact_s"] = time.perf_counter() - t

        log("ViT-B-32 checkpoint with random weights; pgclip migrate")
        make_checkpoint(checkpoint, generator["seed"])
        run_cli("migrate", env=env)
        from pgclip.db.models import require_active_model

        url = database_url(Settings.from_env(env))
        with connect(url, role=ROLE) as conn:
            model = require_active_model(conn)
            results["machine"] = {**machine_facts(conn), "model_index_params": model.index_params}
        if model.dimension != DIM:
            raise SystemExit(f"the active model {model.label} has dimension {model.dimension}, expected {DIM}")
        log(f"loading {n} images and vectors into model {model.id} ({model.label}); HNSW build after the load")
        results["load"] = load(url, model, base, [], np.full(n, "rest", dtype=object), generator["seed"])
        log(f"HNSW build {results['load']['index_build_s']:.1f} s")
        with connect(url, role=ROLE) as conn:
            # The server's settings (the command sets hnsw.ef_search itself: the "ef_search" columns).
            # pgvector defines its settings when its library loads: a vector literal loads it.
            conn.execute("SELECT '[1]'::vector")
            for name in ("hnsw.ef_search", "hnsw.iterative_scan"):
                results["machine"][name] = conn.execute("SELECT current_setting(%s, true)", [name]).fetchone()[0]
            results["plan"], warnings = pairs_plan(conn, model, args.threshold)
        results["warnings"] += warnings
        for w in warnings:
            log(w)
        uses = f"Index Scan using {model.index_name}" in results["plan"]
        results["plan_summary"] = (f"per-image kNN by the HNSW index {model.index_name}" if uses
                                   else "the HNSW index is NOT used (see the warning)") + \
                                  ("; parallel" if "Gather" in results["plan"] else "; one process")

        from pgclip.db.duplicates import EF_SEARCH

        log(f"pgclip duplicates --threshold {args.threshold} --json (subprocess)")
        cli = cli_run(url, env, args.threshold, n, str(model.index_params.get("ef_search", EF_SEARCH)))
        log(f"  {cli['seconds']:.1f} s, {len(cli['groups'])} groups, other processes "
            f"{_f(cli['others_cores'], '.2f')} cores")
        results["runs"].append(cli)
        for i, (threshold, ef_search) in enumerate([*((t, None) for t in thresholds),
                                                    *((args.threshold, ef) for ef in args.ef_search)]):
            log(f"near_duplicates(threshold={threshold}) in process"
                + ("" if ef_search is None else f", model's ef_search = {ef_search}"))
            res = in_process(url, threshold, n, ef_search)
            log(f"  {res['seconds']:.1f} s (SQL {_f(res['sql_s'], '.1f')} s), {len(res['groups'])} groups, "
                f"other processes {_f(res['others_cores'], '.2f')} cores")
            if res["sql_s"] is None and i == 0:
                results["warnings"].append("WARNING: pgclip.db.duplicates._pairs is gone: SQL not timed apart")
            if i == 0 and sorted(cli["groups"]) != sorted(res["groups"]):
                results["cli_mismatch"] = (f"at {threshold} the subprocess reported {len(cli['groups'])} groups, the "
                                           f"in-process call {len(res['groups'])} (quality below: in process)")
            results["runs"].append(res)
            results["quality"].append({"threshold": threshold, "ef_search": res["ef_search"],
                                       **quality(res, exact, planted, n)})
            q = results["quality"][-1]
            log(f"  pairs {q.get('pairs')}, pair recall vs exact {_f(q.get('pair_recall'), '.4f')}, planted found "
                f"{q['planted_found']}/{len(planted)}, false groups {q['false_groups']}")
    finally:
        if not args.keep:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run([*PGCLIP, "db", "stop"], check=False, env=env, capture_output=True, timeout=120,
                               cwd=REPO)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept {tmp} (stop the server with PGCLIP_DATA_DIR={tmp / 'data'} pgclip db stop)")
    results["loadavg"] = f"{load_before:.1f}/{os.getloadavg()[0]:.1f}"
    for run in results["runs"]:
        run.pop("pair_keys", None)
        run["n_groups"] = len(run.pop("groups"))
    results["total_s"] = time.perf_counter() - t_total
    print_report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
