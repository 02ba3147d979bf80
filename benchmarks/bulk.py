"""The deferred index (#19) against today's per-row HNSW path, side by side in one run.

    .venv/bin/python benchmarks/bulk.py                      # 100,000 images, 4 workers (about 7 minutes on 2 cores)
    .venv/bin/python benchmarks/bulk.py --images 20000 --incremental 50     # a quick look
    .venv/bin/python benchmarks/bulk.py --only reembed --batch-size 128    # larger claims, as on a GPU host

Workers are ``pgclip.workers.loop.Worker`` processes with a no-op encoder over 8x8 JPEGs, as in
``ingest.py`` phase (c): the model costs nothing, so what is measured is the write path. Its
vectors (--vectors): ``clip-like`` (the default) are ``generate_vectors`` of search.py with that
script's defaults, clustered in a low-dimensional subspace as CLIP embeddings are, drawn from one
shared file (each worker its own block of rows); ``uniform`` are random unit 512-d vectors, the
hardest data there is for an HNSW graph (no structure: builds and searches several times slower
than on CLIP vectors, and recall far lower). Each scenario runs twice on fresh models, once as
pgclip did before (the model's HNSW index exists from the start and every vector is inserted into
it) and once deferred (no index while the vectors come, one ``CREATE INDEX CONCURRENTLY`` by a
worker when the queue has drained). Vectors/s are from the start to the last worker's exit, the
index build included.

  reembed  every image is queued for a new model (`pgclip reembed`), the workers drain it.
  ingest   a first ingest into an empty model: a producer process adds the images and their
           jobs in batches of 1,000 (holding the ingest lock, as `pgclip ingest` does) while the
           workers embed them.
  incremental  one image at a time into the model's built index with one running worker, which
           builds nothing (before) or runs the deferred-index builder (after); latency from the
           job's enqueue to its vector's write (server timestamps).
  search   the same queries on both indexes of the re-embed (built row by row, built once):
           recall@10 against exact search, and p50 latency of pgclip.search.

The database is a fresh embedded PostgreSQL (sized by pgclip: shared_buffers and
maintenance_work_mem 1/8 of the machine's memory) in a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest as base  # noqa: E402  (benchmarks/ingest.py: CPU meter, no-op encoder, helpers)

REPO = base.REPO
DIM = 512


def register(url: str, settings, tag: str, *, deferred: bool):
    from pgclip.db.engine import connection
    from pgclip.db.indexes import defer_index
    from pgclip.db.models import ensure_model

    with connection(url) as conn:
        model = ensure_model(conn, base.MODEL, f"bench-{tag}", DIM, hnsw_m=settings.hnsw_m,
                             hnsw_ef_construction=settings.hnsw_ef_construction)
    if deferred:
        defer_index(url, model, only_empty=True)  # what `pgclip reembed` and a first `pgclip ingest` do
    return model


class PoolEncoder(base.NoopEncoder):
    """The no-op encoder, its vectors read in turn from block ``index`` of a shared .npy file."""

    def __init__(self, path: str, block: int, index: int) -> None:
        super().__init__(DIM, index)
        self.pool = np.load(path, mmap_mode="r")
        self.start, self.block, self.taken = index * block, block, 0

    def encode_prepared(self, prepared) -> np.ndarray:
        rows = self.start + (self.taken + np.arange(len(prepared))) % self.block  # wraps only past its block
        self.taken += len(prepared)
        return np.asarray(self.pool[rows], dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Vectors:
    """What the no-op encoders produce: uniform random unit vectors, or blocks of a CLIP-like pool."""

    kind: str  # clip-like | uniform
    path: str | None = None  # the pool (.npy): `blocks` blocks of `block` rows, then the queries
    block: int = 0
    blocks: int = 0

    def encoder(self, index: int) -> base.NoopEncoder:
        return PoolEncoder(self.path, self.block, index) if self.path else base.NoopEncoder(DIM, 100 + index)

    def queries(self, n: int) -> np.ndarray:
        if not self.path:
            return base.unit_vectors(np.random.default_rng(11), n, DIM)
        return np.asarray(np.load(self.path, mmap_mode="r")[self.blocks * self.block:][:n])


def make_vectors(kind: str, folder: Path, images: int, workers: int, queries: int) -> Vectors:
    """Blocks twice a worker's fair share (workers do not split the jobs evenly), one more for the
    incremental runs, then held-out queries."""
    if kind == "uniform":
        return Vectors(kind)
    from search import generate_vectors, generator_options  # benchmarks/search.py

    block, blocks = max(1000, -(-2 * images // workers)), workers + 1
    pool, _ = generate_vectors(block * blocks + queries, **generator_options())
    path = folder / "vectors.npy"
    np.save(path, pool)
    return Vectors(kind, str(path), block, blocks)


def _worker_child(url, model, batch_size, build, vectors, index, ready, start, results) -> None:
    from pgclip.workers.loop import Worker

    worker = Worker(url, encoder=vectors.encoder(index), model=model, batch_size=batch_size,
                    lease_seconds=120, max_attempts=5, build_index=build)
    ready.put(os.getpid())
    start.wait()
    stats = worker.run(until_empty=True)
    built = [(r.seconds, r.memory, r.vectors) for r in (worker.index_builder.built if worker.index_builder else [])]
    results.put((stats.done, time.time(), built))


def _producer(url, model, ids, batch, deferred, started) -> None:
    """`pgclip ingest` as the database sees it: batches of image rows + jobs, committed one by one."""
    from pgclip.db import queue
    from pgclip.db.engine import connect
    from pgclip.db.indexes import prepare_ingest

    with connect(url, role="ingest") as conn:
        if deferred:
            prepare_ingest(conn, url, model, bulk=False)
        for i in range(0, len(ids), batch):
            queue.enqueue(conn, ids[i : i + batch], model.id)
            conn.commit()
            if i == 0:
                started.set()


def drain(url: str, settings, model, n: int, workers: int, vectors: Vectors, *, deferred: bool,
          ingest_ids=None) -> dict:
    """Run the workers until the queue is empty (and, deferred, the index built); vectors/s."""
    import multiprocessing as mp

    from pgclip.db.engine import connection
    from pgclip.db.indexes import describe_indexes

    producer = None
    if ingest_ids is not None:
        ctx = mp.get_context("spawn")
        started = ctx.Event()
        producer = ctx.Process(target=_producer, args=(url, model, ingest_ids, 1000, deferred, started))
    base.wait_quiet(url)
    t_start = time.time()
    if producer is not None:
        producer.start()
        started.wait(120)  # the first batch is there: until-empty workers find work
    outs, t0, cpu = base.run_children(
        workers, _worker_child, lambda i: (url, model, settings.batch_size, deferred, vectors, i))
    t0 = min(t0, t_start) if producer is not None else t0
    if producer is not None:
        producer.join()
    end = max(o[1] for o in outs)
    built = [b for o in outs for b in o[2]]
    with connection(url) as conn:
        done = conn.execute("SELECT count(*) FROM pgclip.embeddings WHERE model_id = %s", [model.id]).fetchone()[0]
        state = next(i for i in describe_indexes(conn) if i.coverage.model.id == model.id)
    if done != n or state.state != "built":
        raise SystemExit(f"{model.pretrained}: {done} of {n} vectors, index {state.state}")
    return {"vectors": n, "seconds": end - t0, "vectors_per_s": n / (end - t0), "workers": workers,
            "builds": built, "index_bytes": state.size_bytes, "cpu": cpu.as_dict()}


def incremental(url: str, settings, model, samples: int, vectors: Vectors, *, build: bool) -> dict:
    """One running worker; one image at a time into the model's built index."""
    import threading

    from pgclip.db import queue
    from pgclip.db.engine import connection
    from pgclip.workers.loop import Worker

    worker = Worker(url, encoder=vectors.encoder(vectors.blocks - 1), model=model, batch_size=settings.batch_size,
                    lease_seconds=120, max_attempts=5, build_index=build)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    latencies = []
    try:
        with connection(url) as conn:
            ids = base.insert_bench_images(conn, samples, f"inc-{model.id}-{time.time_ns()}", base.tiny_jpeg())
            conn.commit()
            time.sleep(2)  # the worker is up and listening
            for image_id in ids:
                queue.enqueue(conn, [image_id], model.id)
                conn.commit()
                while True:
                    row = conn.execute(
                        "SELECT extract(epoch FROM e.created_at - j.enqueued_at) FROM pgclip.embedding_jobs j"
                        " JOIN pgclip.embeddings e ON e.image_id = j.image_id AND e.model_id = j.model_id"
                        " WHERE j.image_id = %s AND j.model_id = %s AND j.state = 'done'", [image_id, model.id],
                    ).fetchone()
                    conn.commit()
                    if row:
                        latencies.append(float(row[0]) * 1000)
                        break
                    time.sleep(0.002)
    finally:
        worker.stop()
        thread.join(60)
    lat = np.asarray(latencies)
    return {"samples": samples, "built_index": build, "p50_ms": float(np.percentile(lat, 50)),
            "p90_ms": float(np.percentile(lat, 90)), "mean_ms": float(lat.mean())}


def search_quality(url: str, models: dict[str, object], queries: np.ndarray) -> dict:
    """recall@10 of pgclip.search against exact ranking, and its p50 latency, on each model."""
    from pgclip.db.engine import connection
    from pgclip.db.search import SearchParams, search

    out = {}
    with connection(url) as conn:
        for label, model in models.items():
            ids, vecs = [], []
            for image_id, v in conn.execute("SELECT image_id, embedding FROM pgclip.embeddings WHERE model_id = %s",
                                            [model.id]):
                ids.append(image_id)
                vecs.append(v.to_numpy())
            ids, vecs = np.asarray(ids), np.stack(vecs)
            recalls, times = [], []
            for q in queries:
                truth = set(ids[np.argsort(-(vecs @ q))[:10]].tolist())
                t = time.perf_counter()
                page = search(conn, SearchParams(vector=q, k=10), model=model)
                times.append((time.perf_counter() - t) * 1000)
                recalls.append(len(truth & {h.image_id for h in page.hits}) / 10)
            out[label] = {"recall_at_10": float(np.mean(recalls)), "p50_ms": float(np.median(times))}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--incremental", type=int, default=200, help="single images per incremental measurement")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--vectors", choices=["clip-like", "uniform"], default="clip-like",
                    help="what the no-op encoder returns (see above; default clip-like)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="jobs a worker claims and writes at once (default: PGCLIP_BATCH_SIZE's default, 32); "
                         "a GPU host runs larger batches")
    ap.add_argument("--only", default="reembed,ingest,incremental,search")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))

    from pgclip.core.settings import Settings
    from pgclip.db.engine import connection

    tmp = Path(tempfile.mkdtemp(prefix="pgclip-bulk-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}
    env.update({"PGCLIP_DATA_DIR": str(tmp / "data"), "PGCLIP_MODEL": "test-tiny"})
    os.environ.update(env)
    for k in [k for k in os.environ if k.startswith("PGCLIP_") and k not in env]:
        del os.environ[k]
    settings = Settings.from_env()
    if args.batch_size:
        settings = dataclasses.replace(settings, batch_size=args.batch_size)
    results: dict = {"images": args.images, "workers": args.workers, "cpus": os.cpu_count(), "vectors": args.vectors,
                     "batch_size": settings.batch_size}
    t_total = time.perf_counter()
    try:
        vectors = make_vectors(args.vectors, tmp, args.images, args.workers, args.queries)
        base.run_cli("migrate", env=env)
        url = base.run_cli("db", "url", env=env).stdout.strip()
        with connection(url) as conn:
            results["server"] = base.server_facts(conn)
            base.POSTMASTER_PID = int((tmp / "data" / "postgres" / "postmaster.pid").read_text().split()[0])
            ids = base.insert_bench_images(conn, args.images, "bulk", base.tiny_jpeg())
            conn.commit()
        base.log(f"{args.images} images stored; server {results['server']}")
        reembed_models = {}
        if "reembed" in only:
            results["reembed"] = {}
            for deferred in (False, True):
                label = "deferred" if deferred else "per-row"
                model = register(url, settings, f"reembed-{label}", deferred=deferred)
                from pgclip.db import queue

                with connection(url) as conn:
                    queue.enqueue_model(conn, model.id)
                base.log(f"(reembed) {label}: {args.images} jobs, {args.workers} workers")
                results["reembed"][label] = drain(url, settings, model, args.images, args.workers, vectors,
                                                  deferred=deferred)
                base.log(f"(reembed) {label}: {results['reembed'][label]['vectors_per_s']:.0f} vectors/s "
                         f"(builds {results['reembed'][label]['builds']})")
                reembed_models[label] = model
            r = results["reembed"]
            r["ratio"] = r["deferred"]["vectors_per_s"] / r["per-row"]["vectors_per_s"]
        if "ingest" in only:
            results["ingest"] = {}
            for deferred in (False, True):
                label = "deferred" if deferred else "per-row"
                model = register(url, settings, f"ingest-{label}", deferred=False)  # the empty index exists
                with connection(url) as conn:  # a first ingest: the collection's one model, active (images are
                    # queued for the active model and every model being built, so no other may be either)
                    conn.execute("UPDATE pgclip.models SET state = CASE WHEN id = %s THEN 'active' ELSE 'retired'"
                                 " END", [model.id])
                base.log(f"(ingest) {label}: {args.images} images arriving in batches of 1000")
                results["ingest"][label] = drain(url, settings, model, args.images, args.workers, vectors,
                                                 deferred=deferred, ingest_ids=ids)
                base.log(f"(ingest) {label}: {results['ingest'][label]['vectors_per_s']:.0f} vectors/s")
            r = results["ingest"]
            r["ratio"] = r["deferred"]["vectors_per_s"] / r["per-row"]["vectors_per_s"]
        if "search" in only and reembed_models:
            base.log("(search) recall and latency on both indexes")
            results["search"] = search_quality(url, reembed_models, vectors.queries(args.queries))
        if "incremental" in only and reembed_models:
            results["incremental"] = []
            for build in (False, True, False, True):  # interleaved: the machine drifts
                results["incremental"].append(incremental(url, settings, reembed_models["deferred"], args.incremental,
                                                          vectors, build=build))
                base.log(f"(incremental) builder {'on' if build else 'off'}: "
                         f"p50 {results['incremental'][-1]['p50_ms']:.1f} ms")
    finally:
        with contextlib.suppress(Exception):
            subprocess.run([*base.PGCLIP, "db", "stop"], env=env, capture_output=True, timeout=120, cwd=REPO)
        shutil.rmtree(tmp, ignore_errors=True)
    results["total_s"] = time.perf_counter() - t_total
    print(json.dumps(results, indent=2, default=str)) if args.json else report(results)
    return 0


def report(r: dict) -> None:
    s = r.get("server", {})
    print(f"{r['images']} images, {r['vectors']} vectors, {r['workers']} worker processes (batches of "
          f"{r['batch_size']}), {r['cpus']} CPUs; PostgreSQL "
          f"{s.get('server_version')}, pgvector {s.get('pgvector')}, shared_buffers {s.get('shared_buffers')}, "
          f"maintenance_work_mem {s.get('maintenance_work_mem')}")
    for scenario in ("reembed", "ingest"):
        if scenario not in r:
            continue
        print(f"\n{scenario}: path          vectors/s   seconds   index build (s, memory)   busy cores (ours / others)")
        for label in ("per-row", "deferred"):
            x = r[scenario][label]
            build = ", ".join(f"{b[0]:.1f} s, {b[1]}" for b in x["builds"]) or "-"
            cpu = x["cpu"]
            print(f"  {label:<20} {x['vectors_per_s']:>9.0f} {x['seconds']:>9.1f}   {build:<25} "
                  f"{base._f(cpu.get('our_cores'), 2)} / {base._f(cpu.get('other_cores'), 2)}")
        print(f"  deferred / per-row: {r[scenario]['ratio']:.1f}x")
    if "search" in r:
        print("\nsearch (same queries):     recall@10   p50 ms")
        for label, x in r["search"].items():
            print(f"  index built {'row by row' if label == 'per-row' else 'once':<12} {x['recall_at_10']:>9.3f} "
                  f"{x['p50_ms']:>8.2f}")
    if "incremental" in r:
        print("\nincremental (one image into the built index, one worker):   p50 ms   p90 ms")
        for x in r["incremental"]:
            print(f"  builder {'on  (after)' if x['built_index'] else 'off (before)'}"
                  f"{x['p50_ms']:>40.1f} {x['p90_ms']:>8.1f}")
    print(f"\ntotal {r['total_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
