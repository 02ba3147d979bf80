"""Text queries in SQL: ``pgclip.search_text`` uncached and cached, with one idle `pgclip worker`.

    .venv/bin/python benchmarks/sql_text.py                      # ViT-B-32, random (seeded) weights
    .venv/bin/python benchmarks/sql_text.py --model test-tiny    # the test model: a quick look
    .venv/bin/python benchmarks/sql_text.py --encoder onnx-int8  # the worker's encoder backend

A fresh embedded database gets ``--images`` JPEGs embedded by one `pgclip worker`, which
then stays running and idle. From one psql-like session (autocommit), in one run:

  search       ``pgclip.search`` with a stored vector: the search alone, the floor of the rest
  uncached     ``pgclip.search_text`` with a text never asked before: the request through the
               loopback dblink connection, the worker's NOTIFY wake-up, its text tower, the
               answer read back, then the search (the session's first call, which also opens
               the loopback connection, is reported apart)
  cached       the same texts again: answered from ``pgclip.text_vectors``, then the search
  embed_text   ``pgclip.embed_text`` of a cached text alone

Latencies are p50 (and p95) over ``--queries`` texts, client-side wall time. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import PGCLIP, REPO, log, make_checkpoint, run_cli, write_jpegs  # noqa: E402

WORDS = "dog cat beach mountain city night red blue old child bicycle coffee tree snow boat market".split()


def texts(n: int, seed: int) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [f"a photo of a {' '.join(rng.choice(WORDS, size=3))} number {seed + i}" for i in range(n)]


def timed(conn, statement: str, params: list) -> float:
    started = time.perf_counter()
    rows = conn.execute(statement, params).fetchall()
    elapsed = (time.perf_counter() - started) * 1000
    assert rows, statement
    return elapsed


def summary(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=20)
    return f"p50 {statistics.median(ms):6.2f} ms   p95 {q[18]:6.2f} ms   (n={len(ms)})"


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("w") as out:
        worker = subprocess.Popen([*PGCLIP, "worker"], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while " on " not in log_path.read_text():  # its start-up line: model loaded, listening
        if worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the worker did not start:\n{log_path.read_text()}")
        time.sleep(0.1)
    return worker


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32", help="ViT-B-32 (random weights) or test-tiny")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--encoder", default="auto", help="the worker's PGCLIP_ENCODER: torch, onnx, onnx-int8")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="pgclip-sqltext-"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")},
           "PGCLIP_DATA_DIR": str(tmp / "data"), "PGCLIP_MODEL": args.model,
           "PGCLIP_ENCODER": args.encoder}
    if args.model == "ViT-B-32":
        env["PGCLIP_PRETRAINED"] = str(tmp / "vit-b-32-random.pt")
        make_checkpoint(Path(env["PGCLIP_PRETRAINED"]), seed=7)
    run_cli("migrate", env=env)
    url = run_cli("db", "url", env=env).stdout.strip()
    log(f"{args.images} images, model {args.model}, database {tmp / 'data'}")
    write_jpegs(tmp / "images", args.images, (320, 240), 0)
    worker = start_worker(env, tmp / "worker.log")
    try:
        run_cli("ingest", str(tmp / "images"), env=env)
        import psycopg
        from pgvector.psycopg import register_vector

        with psycopg.connect(url, autocommit=True) as conn:
            register_vector(conn)
            while conn.execute("SELECT count(*) FROM pgclip.embeddings").fetchone()[0] < args.images:
                time.sleep(0.5)
            time.sleep(1.0)  # idle, waiting on LISTEN
            vector = conn.execute("SELECT embedding FROM pgclip.embeddings LIMIT 1").fetchone()[0]
            search = [timed(conn, "SELECT * FROM pgclip.search(%s, NULL, '{}', 10)", [vector])
                      for _ in range(args.queries)]
            first = timed(conn, "SELECT * FROM pgclip.search_text(%s, NULL, '{}', 10)", ["a first text"])
            queries = texts(args.queries, seed=1)
            uncached = [timed(conn, "SELECT * FROM pgclip.search_text(%s, NULL, '{}', 10)", [t]) for t in queries]
            cached = [timed(conn, "SELECT * FROM pgclip.search_text(%s, NULL, '{}', 10)", [t]) for t in queries]
            embed = [timed(conn, "SELECT pgclip.embed_text(%s)", [t]) for t in queries]
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        run_cli("db", "stop", env=env)
    print(f"\nsql_text: model {args.model} ({args.encoder}), {args.images} images, one idle worker, {time.strftime('%Y-%m-%d')}")
    print(f"  search (stored vector)      {summary(search)}")
    print(f"  search_text, first call     {first:6.2f} ms (opens the loopback connection)")
    print(f"  search_text, uncached       {summary(uncached)}")
    print(f"  search_text, cached         {summary(cached)}")
    print(f"  embed_text, cached          {summary(embed)}")
    print(f"  uncached - search (p50)     {statistics.median(uncached) - statistics.median(search):6.2f} ms")
    print(f"  cached - search (p50)       {statistics.median(cached) - statistics.median(search):6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
