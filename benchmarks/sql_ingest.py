"""Images added with SQL alone, measured side by side with the paths they stand beside.

    .venv/bin/python benchmarks/sql_ingest.py                          # defaults: about 3 minutes on 2 cores
    .venv/bin/python benchmarks/sql_ingest.py --rows 1000 --embed 64 --model test-tiny   # a quick look

Phases:

  queue  one binary ``COPY`` of --rows distinct JPEGs (--queue-size, photo-like) into
         ``pgclip.image_inbox``, in one transaction: the statement-level trigger stores, hashes
         and queues them all; timed to the commit, beside the same COPY into a bare table of
         the same columns (the bytes' own cost). Then the rows are deleted again.
  embed  one ``pgclip worker`` already running and idle (as deployed), then --embed new
         640x480 JPEGs added by ``pgclip ingest DIR``, then --embed others by one COPY into
         the inbox; each timed from its start to its last job ``done`` (NOTIFY wakes the
         worker, but the end-to-end time includes the CLI's start-up), and by the worker's
         own rate from its first vector written to its last. The SQL path's worker also
         probes each image (what ingest did before queueing it), so the rates should be close.

ViT-B-32 gets random (seeded) weights as a local checkpoint (``benchmarks/ingest.py``'s
``make_checkpoint``): CLIP weights cannot be downloaded everywhere, and the rate does not
depend on them. The database is a fresh embedded PostgreSQL in a temporary folder, stopped
at the end. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PGCLIP = [sys.executable, "-m", "pgclip.cli"]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from ingest import make_checkpoint  # noqa: E402  (benchmarks/ingest.py)

from tests.images import jpeg_bytes  # noqa: E402

COPY_INBOX = "COPY pgclip.image_inbox (data, source) FROM STDIN (FORMAT BINARY)"
POLL_SECONDS = 0.2  # how often the embed phase counts finished jobs


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def copy_rows(conn, statement: str, rows: list[tuple[bytes, str]]) -> None:
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types(["bytea", "text"])
        for row in rows:
            copy.write_row(row)


def queue_phase(url: str, n: int, size: tuple[int, int]) -> dict:
    """One COPY of n rows into the inbox against the same COPY into a bare table, each one transaction."""
    import psycopg

    log(f"queue: making {n} JPEGs of {size[0]}x{size[1]}")
    rows = [(jpeg_bytes(1_000_000 + i, size), f"bench-queue/{i}.jpg") for i in range(n)]
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE bench_bare (data bytea, source text)")
        conn.commit()
        started = time.perf_counter()
        copy_rows(conn, "COPY bench_bare (data, source) FROM STDIN (FORMAT BINARY)", rows)
        conn.commit()
        bare = time.perf_counter() - started
        started = time.perf_counter()
        copy_rows(conn, COPY_INBOX, rows)
        conn.commit()
        inbox = time.perf_counter() - started
        jobs = conn.execute("SELECT count(*) FROM pgclip.embedding_jobs WHERE state = 'pending'").fetchone()[0]
        left = conn.execute("SELECT count(*) FROM pgclip.image_inbox").fetchone()[0]
        conn.execute("DELETE FROM pgclip.images WHERE starts_with(source, 'bench-queue/')")
        conn.execute("DROP TABLE bench_bare")
        conn.commit()
    return {"rows": n, "bare_copy_s": bare, "inbox_copy_s": inbox, "jobs_queued": jobs, "inbox_left": left,
            "mib": sum(len(d) for d, _ in rows) / 2**20}


def wait_done(conn, prefix: str, n: int, worker: subprocess.Popen) -> None:
    while conn.execute(
        "SELECT count(*) FROM pgclip.embedding_jobs j JOIN pgclip.images i ON i.id = j.image_id"
        " WHERE j.state IN ('done', 'failed') AND starts_with(i.source, %s)", [prefix]
    ).fetchone()[0] < n:
        if worker.poll() is not None:
            raise SystemExit("the worker exited")
        time.sleep(POLL_SECONDS)


def write_rate(conn, prefix: str) -> float:
    """The worker's own rate on these images: vectors per second from its first write to its last
    (what the CLI's start-up or the COPY take before the first job is claimed is not in it)."""
    count, span = conn.execute(
        "SELECT count(*), extract(epoch FROM max(e.created_at) - min(e.created_at))::float8"
        " FROM pgclip.embeddings e JOIN pgclip.images i ON i.id = e.image_id WHERE starts_with(i.source, %s)",
        [prefix],
    ).fetchone()
    return (count - 1) / span if span else float("nan")


def embed_phase(url: str, env: dict[str, str], tmp: Path, n: int) -> dict:
    """A running worker's rate on n images from `pgclip ingest`, then n from one COPY into the inbox."""
    import psycopg

    folder = tmp / "ingested"
    folder.mkdir()
    for i in range(n):
        (folder / f"{i:05d}.jpg").write_bytes(jpeg_bytes(2_000_000 + i, (640, 480)))
    sql_rows = [(jpeg_bytes(3_000_000 + i, (640, 480)), f"bench-sql/{i}.jpg") for i in range(n)]
    os.sync()
    log_path = tmp / "worker.log"
    with log_path.open("w") as out:
        worker = subprocess.Popen([*PGCLIP, "worker"], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while " on " not in log_path.read_text():  # its start-up line: model loaded, claiming
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        time.sleep(1.0)  # idle, waiting on LISTEN
        with psycopg.connect(url, autocommit=True) as conn:
            log(f"embed: pgclip ingest of {n} images into the running worker")
            started = time.perf_counter()
            subprocess.run([*PGCLIP, "ingest", str(folder)], env=env, cwd=REPO, check=True, capture_output=True)
            wait_done(conn, f"{folder}/", n, worker)
            ingest_s = time.perf_counter() - started
            ingest_rate = write_rate(conn, f"{folder}/")
            log(f"embed: one COPY of {n} images into pgclip.image_inbox")
            started = time.perf_counter()
            with conn.transaction():
                copy_rows(conn, COPY_INBOX, sql_rows)
            wait_done(conn, "bench-sql/", n, worker)
            sql_s = time.perf_counter() - started
            sql_rate = write_rate(conn, "bench-sql/")
            filled = conn.execute(
                "SELECT count(*) FROM pgclip.images WHERE starts_with(source, 'bench-sql/') AND width = 640"
            ).fetchone()[0]
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    return {"images": n, "ingest_s": ingest_s, "sql_s": sql_s, "filled_in": filled,
            "ingest_write_rate": ingest_rate, "sql_write_rate": sql_rate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000, help="rows of the queue phase's COPY")
    parser.add_argument("--queue-size", default="96x64", help="the queue phase's JPEG size")
    parser.add_argument("--embed", type=int, default=256, help="images per path in the embed phase")
    parser.add_argument("--model", default="ViT-B-32", help="ViT-B-32 (random weights) or test-tiny")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="pgclip-sql-ingest-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}
    env.update(PGCLIP_DATA_DIR=str(tmp / "data"), PGCLIP_MODEL=args.model, PGCLIP_PRETRAINED="random")
    if args.model == "ViT-B-32":
        checkpoint = tmp / "vit-b-32-random.pt"
        make_checkpoint(checkpoint, seed=7)
        env["PGCLIP_PRETRAINED"] = str(checkpoint)
    try:
        subprocess.run([*PGCLIP, "migrate"], env=env, cwd=REPO, check=True, capture_output=True)
        url = subprocess.run([*PGCLIP, "db", "url"], env=env, cwd=REPO, check=True, capture_output=True,
                             text=True).stdout.strip()
        width, height = (int(v) for v in args.queue_size.split("x"))
        q = queue_phase(url, args.rows, (width, height))
        e = embed_phase(url, env, tmp, args.embed)
    finally:
        subprocess.run([*PGCLIP, "db", "stop"], env=env, cwd=REPO, capture_output=True, timeout=120)
    print(f"queue: {q['rows']} rows ({q['mib']:.0f} MiB) by one COPY into pgclip.image_inbox, one transaction: "
          f"{q['inbox_copy_s']:.2f} s ({q['rows'] / q['inbox_copy_s']:.0f} rows/s); the same COPY into a bare "
          f"table: {q['bare_copy_s']:.2f} s (x{q['inbox_copy_s'] / q['bare_copy_s']:.1f}); "
          f"{q['jobs_queued']} jobs queued, {q['inbox_left']} rows left in the inbox")
    print(f"embed ({args.model}, one running worker, {e['images']} images of 640x480 per path): "
          f"end to end: pgclip ingest {e['images'] / e['ingest_s']:.1f} img/s, SQL COPY "
          f"{e['images'] / e['sql_s']:.1f} img/s; the worker's write rate: after ingest "
          f"{e['ingest_write_rate']:.1f} img/s, after SQL {e['sql_write_rate']:.1f} img/s "
          f"(SQL/ingest {e['sql_write_rate'] / e['ingest_write_rate']:.2f}); "
          f"{e['filled_in']} SQL-added rows filled in by the worker")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
