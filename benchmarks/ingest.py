"""Ingest and embedding throughput, measured side by side in one run.

    .venv/bin/python benchmarks/ingest.py                 # defaults: about 5 minutes on 2 quiet CPU cores
    .venv/bin/python benchmarks/ingest.py --only a,b --profile      # where a worker's time goes
    .venv/bin/python benchmarks/ingest.py --images 128 --jobs 1000 --vectors 20000 --writes 256   # a quick look

Phases (``--only`` picks some):

  a  bare model: ViT-B-32's image tower on the backend PGCLIP_ENCODER names (torch under
     ``torch.inference_mode``, or ONNX Runtime) on tensors decoded and preprocessed
     beforehand, in batches of PGCLIP_BATCH_SIZE; images/s. (``benchmarks/encoder.py``
     compares the backends side by side.)
     Measured twice (before and after b) and averaged, to expose drift.
  b  end to end: the same JPEGs (640x480, photo-like) through the real CLI in
     subprocesses, ``pgclip ingest DIR`` then ``pgclip worker --until-empty`` with
     default settings, until every job is ``done``; images/s and the ratio b/a.
  c  queue only: ``pgclip.workers.loop.Worker`` in 1 and 4 processes with a no-op
     encoder (random unit vectors) over tiny 8x8 images; claim -> complete jobs/s,
     writing into the model's HNSW index as pgclip does, and with that index dropped.
  d  vector writes into an HNSW index that already holds --vectors rows: binary
     COPY, index built after the load, then the worker's own claim + complete
     statements and plain batched INSERTs, with 1 and 2 clients; rows/s.

CLIP weights cannot be downloaded on every machine, so ViT-B-32 gets random
(seeded) weights saved as a local checkpoint and loaded through pgclip's own
path (PGCLIP_PRETRAINED=<file>): throughput does not depend on the weights.

The database is a fresh embedded PostgreSQL in a temporary PGCLIP_DATA_DIR,
stopped at the end; or, when PGCLIP_DATABASE_URL is set, that server (the
benchmark adds rows and indexes there and deletes what it added at the end).

Figures are ratios measured side by side in one run: machines are noisy, and
nothing here asserts a time. The last table says how many cores other processes
used during each measurement; figures taken while they did are disturbed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PGCLIP = [sys.executable, "-m", "pgclip.cli"]
MODEL = "ViT-B-32"
BENCH_SOURCE = "pgclip-bench:"  # source prefix of the rows phases c and d insert (cleanup finds them)
TARGET_RATIO = 0.9


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- CPU use: ours (this process, its children, the embedded server) and everyone else's ---------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
POSTMASTER_PID: int | None = None  # set once the embedded server runs


def _machine_ticks() -> tuple[int, int] | None:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:8]
    except OSError:
        return None
    values = [int(v) for v in fields]  # user nice system idle iowait irq softirq
    return sum(values), values[3] + values[4]


def _our_cpu_seconds() -> float:
    """CPU seconds used so far by this process, its children (live or reaped) and the embedded
    PostgreSQL (postmaster and backends, reaped ones included)."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    procs: dict[int, tuple[int, float, float]] = {}  # pid -> (ppid, own ticks, reaped children's ticks)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        procs[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]),
                                        int(fields[13]) + int(fields[14]))
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)

    def tree(root: int) -> set[int]:
        out, todo = set(), [root]
        while todo:
            pid = todo.pop()
            out.add(pid)
            todo.extend(children.get(pid, ()))
        return out

    mine = tree(os.getpid()) - {os.getpid()}
    server = tree(POSTMASTER_PID) if POSTMASTER_PID in procs else set()
    ticks = sum(procs[p][1] + procs[p][2] for p in mine)  # live children (reaped ones are in os.times)
    if server - mine:
        ticks += sum(procs[p][1] for p in server - mine) + procs[POSTMASTER_PID][2]
    return total + ticks / _TICK


class CpuMeter:
    """Busy cores over a span: machine-wide (/proc/stat), ours, and the rest (other tenants'
    load: a large figure there means the span was measured on a shared, busy machine)."""

    def __enter__(self) -> CpuMeter:
        self.t0 = time.perf_counter()
        self.machine0 = _machine_ticks()
        self.ours0 = _our_cpu_seconds()
        self.children0 = os.times()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.t0
        machine1 = _machine_ticks()
        ours1 = _our_cpu_seconds()
        c1 = os.times()
        self.child_cpu = (c1.children_user - self.children0.children_user) + (
            c1.children_system - self.children0.children_system
        )
        self.ours = (ours1 - self.ours0) / self.wall
        self.machine = self.other = None
        if self.machine0 and machine1:
            total = machine1[0] - self.machine0[0]
            idle = machine1[1] - self.machine0[1]
            if total > 0:
                self.machine = (total - idle) / total * (os.cpu_count() or 1)
                self.other = max(0.0, self.machine - self.ours)

    def as_dict(self) -> dict:
        return {"busy_cores": self.machine, "our_cores": self.ours, "other_cores": self.other}


# --- the environment: checkpoint, database, CLI -------------------------------------------


def make_checkpoint(path: Path, seed: int) -> None:
    """A ViT-B-32 state_dict with random (seeded) weights: the stand-in for real CLIP weights."""
    import open_clip
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _, _ = open_clip.create_model_and_transforms(MODEL, pretrained=None)
    torch.save(model.state_dict(), path)


def run_cli(*args: str, env: dict[str, str], timeout: float | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([*PGCLIP, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"`pgclip {' '.join(args)}` exited with status {proc.returncode}")
    return proc


def write_jpegs(folder: Path, n: int, size: tuple[int, int], seed0: int) -> list[bytes]:
    """n distinct photo-like JPEGs (the test suite's generator) written to folder; returns their bytes."""
    sys.path.insert(0, str(REPO))
    from tests.images import jpeg_bytes

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        data = jpeg_bytes(seed0 + i, size)
        (folder / f"img{i:05d}.jpg").write_bytes(data)
        out.append(data)
    os.sync()  # a user's photos are on disk already: their write-back must not run during a measurement
    return out


def server_facts(conn) -> dict[str, str]:
    facts = {}
    for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers", "maintenance_work_mem",
                 "max_parallel_maintenance_workers", "max_worker_processes"):
        facts[name] = conn.execute("SELECT current_setting(%s)", [name]).fetchone()[0]
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    facts["pgvector"] = row[0] if row else "?"
    return facts


# --- phase a: the bare model ---------------------------------------------------------------


def check_weights(encoder, checkpoint: Path) -> None:
    """The model pgclip loaded holds exactly the checkpoint's weights (the real loading path)."""
    import torch

    if encoder.backend != "torch":
        return  # an ONNX export holds no torch state: tests/unit/test_encoder_backends.py holds it to torch
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    loaded = encoder._runner.model.state_dict()
    mismatched = [k for k, v in saved.items() if k not in loaded or not torch.equal(loaded[k].float(), v.float())]
    if mismatched:
        raise SystemExit(f"pgclip's ClipEncoder did not load the checkpoint: {len(mismatched)} tensors differ")


def stage_costs(encoder, blobs: list[bytes], sample: int) -> dict[str, float]:
    """Milliseconds per image of each step a worker takes besides the model, single-threaded."""
    from pgclip.workers.decode import decode, make_thumbnail, probe
    from pgclip.workers.loop import THUMBNAIL_SIDE

    blobs = blobs[:sample]

    def per_image(fn, xs):
        t = time.perf_counter()
        out = [fn(x) for x in xs]
        return (time.perf_counter() - t) / len(xs) * 1000, out

    probe_ms, _ = per_image(probe, blobs)
    decode_ms, images = per_image(decode, blobs)
    thumb_ms, _ = per_image(lambda im: make_thumbnail(im, THUMBNAIL_SIDE), images)
    pre_ms, _ = per_image(encoder.preprocess, images)
    return {"probe_ms": probe_ms, "decode_ms": decode_ms, "thumbnail_ms": thumb_ms, "preprocess_ms": pre_ms}


def bare_model(encoder, tensors, batch_size: int) -> tuple[float, dict]:
    """Images/s of the image tower alone (the encoder's backend runner: torch under inference mode,
    or an ONNX Runtime session), and CPU use."""
    run = encoder._runner.encode_images
    batches = [tensors[i : i + batch_size] for i in range(0, len(tensors), batch_size)]
    run(batches[0])  # warm-up: first-call allocations, kernel choice
    with CpuMeter() as cpu:
        for batch in batches:
            run(batch)
    return len(tensors) / cpu.wall, cpu.as_dict()


def bare_worker_model(checkpoint: Path, settings, tensors) -> tuple[float, int, dict]:
    """(a'): the same forward on the same tensors as a worker runs it: a ClipEncoder with the
    worker's PGCLIP_MODEL_THREADS, that many threads each taking the next batch (of its share
    of PGCLIP_BATCH_SIZE), with nothing else running. Returns images/s, the number of model
    threads, and CPU use."""
    import queue as threadqueue

    import torch
    from pgclip.workers.encoder import ClipEncoder

    threads = torch.get_num_threads()
    encoder = ClipEncoder(MODEL, str(checkpoint), device=settings.device, torch_threads=settings.torch_threads,
                          model_threads=settings.model_threads, backend=settings.encoder)
    try:
        encoder.load()
        size = max(1, settings.batch_size // encoder.model_threads)  # each thread's batch, as in Worker
        todo: threadqueue.Queue = threadqueue.Queue()
        for i in range(0, len(tensors), size):
            todo.put(tensors[i : i + size])
        warmed, go = threading.Barrier(encoder.model_threads + 1), threading.Event()

        def model_thread() -> None:
            encoder._runner.encode_images(tensors[:size])  # warm-up, as in (a)
            warmed.wait()
            go.wait()
            while True:
                try:
                    batch = todo.get_nowait()
                except threadqueue.Empty:
                    return
                encoder._runner.encode_images(batch)

        workers = [threading.Thread(target=model_thread) for _ in range(encoder.model_threads)]
        for w in workers:
            w.start()
        warmed.wait()
        with CpuMeter() as cpu:
            go.set()
            for w in workers:
                w.join()
        return len(tensors) / cpu.wall, encoder.model_threads, cpu.as_dict()
    finally:
        torch.set_num_threads(threads)  # the worker's encoder set this process's threads to its share


# --- phase b: end to end through the CLI -------------------------------------------------------


STEADY_AFTER_WRITES = 3  # batches written before the steady state counts: a worker fills its pipeline
# (each of its two model threads, on a CPU, finishes its first batch about the same time)


def write_span(url: str, model_id: int, folder: Path) -> tuple[float, float, float | None]:
    """When the first and the last vectors of the images in ``folder`` were written (epoch seconds),
    and images/s from the STEADY_AFTER_WRITES-th write to the last: the steady state, without the
    start-up. Each complete runs in a transaction that starts right after its batch was encoded
    (``created_at`` = its start)."""
    from pgclip.db.engine import connection

    with connection(url) as conn:
        writes = conn.execute(
            "SELECT extract(epoch FROM e.created_at)::float8, count(*) FROM pgclip.embeddings e"
            " JOIN pgclip.images i ON i.id = e.image_id WHERE e.model_id = %s AND starts_with(i.source, %s)"
            " GROUP BY e.created_at ORDER BY e.created_at",
            [model_id, f"{folder}/"],
        ).fetchall()
    first, last = writes[0][0], writes[-1][0]
    if len(writes) <= STEADY_AFTER_WRITES:
        return first, last, None
    start = writes[STEADY_AFTER_WRITES - 1][0]
    after = sum(rows for _, rows in writes[STEADY_AFTER_WRITES:])
    return first, last, after / (last - start) if last > start else None


def end_to_end(folder: Path, n: int, env: dict[str, str], url: str, model_id: int) -> dict:
    from pgclip.db.engine import connection

    # Fixed costs first: each command once with nothing to do (imports, model registration,
    # model load, the queue check and exit), so the timings below can be split into
    # start-up and per-image work.
    empty = folder.parent / "empty"
    empty.mkdir(exist_ok=True)
    t = time.perf_counter()
    run_cli("ingest", str(empty), env=env)
    ingest_idle_s = time.perf_counter() - t
    t = time.perf_counter()
    run_cli("worker", "--until-empty", env=env)
    worker_idle_s = time.perf_counter() - t
    with CpuMeter() as ingest_cpu:
        out = run_cli("ingest", str(folder), "--json", env=env)
    report = json.loads(out.stdout)
    if report["enqueued"] != n:
        raise SystemExit(f"ingest queued {report['enqueued']} of {n} images: {report}")
    t_start = time.time()
    with CpuMeter() as worker_cpu:
        run_cli("worker", "--until-empty", env=env)
    with connection(url) as conn:
        states = dict(conn.execute(
            "SELECT state, count(*) FROM pgclip.embedding_jobs j JOIN pgclip.images i ON i.id = j.image_id"
            " WHERE j.model_id = %s AND starts_with(i.source, %s) GROUP BY state",
            [model_id, f"{folder}/"],
        ).fetchall())
    if states.get("done", 0) != n:
        raise SystemExit(f"not every job ended done: {states}")
    first, last, steady = write_span(url, model_id, folder)
    return {
        "ingest_s": ingest_cpu.wall, "worker_s": worker_cpu.wall,
        "ingest_idle_s": ingest_idle_s, "worker_idle_s": worker_idle_s,
        "worker_process_cores": worker_cpu.child_cpu / worker_cpu.wall,
        "ingest_cpu": ingest_cpu.as_dict(), "worker_cpu": worker_cpu.as_dict(),
        "first_write_after_s": first - t_start,
        "steady_images_per_s": steady,
        "states": states,
    }


def running_worker(folder: Path, n: int, env: dict[str, str], url: str, model_id: int) -> dict:
    """How pgclip is deployed: a `pgclip worker` already running and idle, then `pgclip ingest`
    of n new images; timed from the ingest's start to the last job `done` (NOTIFY wakes it)."""
    from pgclip.db.engine import connection

    def done_count(conn) -> int:
        return conn.execute(
            "SELECT count(*) FROM pgclip.embedding_jobs j JOIN pgclip.images i ON i.id = j.image_id"
            " WHERE j.model_id = %s AND j.state = 'done' AND starts_with(i.source, %s)",
            [model_id, f"{folder}/"],
        ).fetchone()[0]

    log_path = folder.parent / "running-worker.log"
    with log_path.open("w") as log_file:
        worker = subprocess.Popen([*PGCLIP, "worker"], env=env, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while " on " not in log_path.read_text():  # its start-up line: model loaded, claiming
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        time.sleep(1.0)  # idle, waiting on LISTEN
        with CpuMeter() as cpu, connection(url) as conn:
            t_start = time.time()
            ingest = subprocess.Popen([*PGCLIP, "ingest", str(folder)], env=env, cwd=REPO,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while done_count(conn) < n:
                if worker.poll() is not None:
                    raise SystemExit(f"the worker exited:\n{log_path.read_text()}")
                time.sleep(0.2)  # the count costs the server a little: not too often
            ingest.wait()
        first, last, steady = write_span(url, model_id, folder)
        return {"wall_s": cpu.wall, "images_per_s": n / cpu.wall, "cpu": cpu.as_dict(),
                "first_write_after_s": first - t_start, "last_write_after_s": last - t_start,
                "steady_images_per_s": steady}
    finally:
        worker.terminate()
        worker.wait(timeout=60)


# --- phase b, optional: one instrumented worker ------------------------------------------------


def profiled_worker(out_path: str) -> int:
    """Run `pgclip worker --until-empty` in this process with timers around every stage (and
    cProfile on the main thread); write the totals to out_path as JSON."""
    import cProfile
    import io
    import pstats

    from pgclip import cli
    from pgclip.db import queue
    from pgclip.workers import loop
    from pgclip.workers.backends import OnnxRunner, TorchRunner
    from pgclip.workers.encoder import ClipEncoder

    t_process = time.perf_counter()
    totals: dict[str, list[float]] = {}
    lock = threading.Lock()

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with lock:
                    entry = totals.setdefault(name, [0.0, 0])
                    entry[0] += time.perf_counter() - t
                    entry[1] += 1
        return wrapper

    loop.decode = timed("decode thread: decode (PIL)", loop.decode)
    loop.make_thumbnail = timed("decode thread: thumbnail (resize + WebP)", loop.make_thumbnail)
    loop._fetch_blobs = timed("decode thread: fetch blobs", loop._fetch_blobs)
    queue.claim = timed("decode thread: claim", queue.claim)
    queue.open_jobs = timed("decode thread: open_jobs", queue.open_jobs)
    queue.complete = timed("main thread: complete (write vectors, mark done)", queue.complete)
    ClipEncoder.load = timed("main thread: model load", ClipEncoder.load)
    ClipEncoder.prepare = timed("decode thread: preprocess (open_clip transform)", ClipEncoder.prepare)
    ClipEncoder.encode_prepared = timed("main thread: encode_prepared (stack + forward)", ClipEncoder.encode_prepared)
    for runner in (TorchRunner, OnnxRunner):
        runner.encode_images = timed("main thread: forward (image tower + normalize)", runner.encode_images)
    loop.Worker._encode = timed("model threads: encode a batch", loop.Worker._encode)
    loop.Worker.run = timed("worker.run (wall)", loop.Worker.run)
    profile = cProfile.Profile()
    cpu0 = time.process_time()
    profile.enable()
    try:
        code = cli.main(["worker", "--until-empty"])
    finally:
        profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(18)
    Path(out_path).write_text(json.dumps({
        "totals": totals, "process_wall_s": time.perf_counter() - t_process,
        "process_cpu_s": time.process_time() - cpu0, "cprofile": text.getvalue(),
    }))
    return code


def profile_run(folder: Path, env: dict[str, str], tmp: Path) -> dict:
    run_cli("ingest", str(folder), env=env)
    out = tmp / "profile.json"
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--_profiled-worker", str(out)],
        env=env, capture_output=True, text=True, cwd=REPO,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit("the profiled worker failed")
    return json.loads(out.read_text())


# --- phases c and d: measured clients in their own processes ---------------------------------------


def run_children(n: int, target, args_of) -> tuple[list, float, CpuMeter]:
    """Start n spawned processes running target(*args_of(i), ready, start, results); start the
    clock once all are ready (imported, connected); return their results, the start time, CPU use."""
    ctx = mp.get_context("spawn")
    ready, start, results = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_of(i), ready, start, results)) for i in range(n)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    with CpuMeter() as cpu:
        t0 = time.time()
        start.set()
        outs = [results.get(timeout=900) for _ in procs]
        for p in procs:
            p.join()
    return outs, t0, cpu


# --- phase c: the queue with a no-op encoder ---------------------------------------------------


class NoopEncoder:
    """What the worker loop needs of an encoder, without a model: random unit vectors."""

    def __init__(self, dimension: int, seed: int) -> None:
        self.dimension = dimension
        self.rng = np.random.default_rng(seed)

    def load(self) -> None:
        pass

    def prepare(self, image) -> None:
        return None

    def encode_prepared(self, prepared) -> np.ndarray:
        return unit_vectors(self.rng, len(prepared), self.dimension)


def unit_vectors(rng, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def tiny_jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 80, 200)).save(buf, "JPEG")
    return buf.getvalue()


def insert_bench_images(conn, n: int, tag: str, blob: bytes | None) -> list[int]:
    """n image rows (distinct fake sha256), with `blob` as every image's bytes when given."""
    ids = [r[0] for r in conn.execute(
        "INSERT INTO pgclip.images (sha256, source, byte_size, width, height, format, mime)"
        " SELECT encode(sha256(convert_to(%(tag)s || ':' || g, 'UTF8')), 'hex'), %(prefix)s || %(tag)s || ':' || g,"
        "        %(size)s, 8, 8, 'JPEG', 'image/jpeg'"
        " FROM generate_series(1, %(n)s) AS g ORDER BY g RETURNING id",
        {"tag": tag, "prefix": BENCH_SOURCE, "size": len(blob or b"x"), "n": n},
    ).fetchall()]
    if blob is not None:
        conn.execute(
            "INSERT INTO pgclip.image_blobs (image_id, data) SELECT id, %s FROM unnest(%s::bigint[]) AS t(id)",
            [blob, ids],
        )
    return ids


def _queue_child(url, model, batch_size, lease_seconds, max_attempts, seed, ready, start, results) -> None:
    from pgclip.workers.loop import Worker

    worker = Worker(
        url, encoder=NoopEncoder(model.dimension, seed), model=model, batch_size=batch_size,
        lease_seconds=lease_seconds, max_attempts=max_attempts,
    )
    ready.put(os.getpid())
    start.wait()
    stats = worker.run(until_empty=True)
    results.put((stats.done, stats.failed, stats.lost, time.time()))


def wait_quiet(url: str, limit: float = 120.0) -> None:
    """Wait (up to `limit` seconds) until no autovacuum worker runs, so it does not share the cores."""
    from pgclip.db.engine import connect

    with connect(url, autocommit=True, vector=False) as conn:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            busy = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
                " AND state IS DISTINCT FROM 'idle'"
            ).fetchone()[0]
            if not busy:
                return
            time.sleep(0.5)


def queue_throughput(url: str, settings, n_jobs: int, workers: int, tag: str, *, hnsw: bool) -> dict:
    from pgclip.db import queue
    from pgclip.db.engine import connection
    from pgclip.db.models import ensure_model

    with connection(url) as conn:
        model = ensure_model(conn, MODEL, f"bench-noop-{tag}", 512, hnsw_m=settings.hnsw_m,
                             hnsw_ef_construction=settings.hnsw_ef_construction)
        if not hnsw:  # the queue's own cost: vectors still written, but into no vector index
            conn.execute(f'DROP INDEX pgclip."{model.index_name}"')
        ids = insert_bench_images(conn, n_jobs, tag, tiny_jpeg())
        queue.enqueue(conn, ids, model.id)
        conn.commit()
    wait_quiet(url)
    outs, t0, cpu = run_children(workers, _queue_child, lambda i: (url, model, settings.batch_size,
                                                                   settings.lease_seconds, settings.max_attempts, i))
    done = sum(o[0] for o in outs)
    with connection(url) as conn:
        last, n_done = conn.execute(
            "SELECT extract(epoch FROM max(updated_at)), count(*) FROM pgclip.embedding_jobs"
            " WHERE model_id = %s AND state = 'done'", [model.id],
        ).fetchone()
    if n_done != n_jobs:
        raise SystemExit(f"queue phase: {n_done} of {n_jobs} jobs done ({outs})")
    to_last = float(last) - t0
    return {
        "workers": workers, "jobs": n_jobs, "hnsw": hnsw, "done_reported": done,
        "jobs_per_s": n_jobs / to_last,  # start -> last job marked done
        "jobs_per_s_wall": n_jobs / (max(o[3] for o in outs) - t0),  # start -> last worker exited
        "cpu": cpu.as_dict(),
    }


# --- phase d: writes into a big HNSW index -------------------------------------------------------


def bulk_load(url: str, settings, n: int, tag: str, seed: int) -> tuple[object, dict]:
    """A model with n random unit vectors: rows by binary COPY, then the HNSW index pgclip builds."""
    from psycopg.rows import class_row

    from pgclip.db.engine import connect, connection
    from pgclip.db.models import ModelRow, index_ddl

    rng = np.random.default_rng(seed)
    with connection(url) as conn:
        with conn.cursor(row_factory=class_row(ModelRow)) as cur:
            model = cur.execute(
                "INSERT INTO pgclip.models (name, pretrained, dimension) VALUES (%s, %s, 512)"
                " RETURNING id, name, pretrained, dimension, state, created_at",
                [MODEL, f"bench-hnsw-{tag}"],
            ).fetchone()
        ids = insert_bench_images(conn, n, tag, None)
        conn.commit()
        t = time.perf_counter()
        with conn.cursor() as cur, cur.copy(
            "COPY pgclip.embeddings (image_id, model_id, embedding) FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "int4", "vector"])
            for start in range(0, n, 10_000):
                vectors = unit_vectors(rng, min(10_000, n - start), 512)
                for image_id, vec in zip(ids[start : start + 10_000], vectors, strict=True):
                    copy.write_row((image_id, model.id, vec))
        conn.commit()
        copy_s = time.perf_counter() - t
        t = time.perf_counter()
        conn.execute(index_ddl(model))  # as registered: PGCLIP_HNSW_M, PGCLIP_HNSW_EF_CONSTRUCTION
        conn.commit()
        index_s = time.perf_counter() - t
        size = conn.execute("SELECT pg_size_pretty(pg_relation_size(%s::regclass))",
                            [f"pgclip.{model.index_name}"]).fetchone()[0]
    # What autovacuum would do soon after a bulk load (vacuuming an HNSW index is not cheap);
    # done here so that it does not run during the measurements.
    t = time.perf_counter()
    with connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) pgclip.embeddings")
    vacuum_s = time.perf_counter() - t
    return model, {"rows": n, "copy_s": copy_s, "copy_rows_per_s": n / copy_s, "index_build_s": index_s,
                   "index_size": size, "vacuum_s": vacuum_s}


def _write_child(url, model, mode, image_ids, batch_size, seed, ready, start, results) -> None:
    from pgclip.db import queue
    from pgclip.db.engine import connect

    rng = np.random.default_rng(seed)
    conn = connect(url, role="bench-writer")
    worker = f"bench-writer-{os.getpid()}"
    written = 0
    ready.put(os.getpid())
    start.wait()
    if mode == "complete":
        while True:
            with conn.transaction():
                jobs = queue.claim(conn, model_id=model.id, worker=worker, limit=batch_size,
                                   lease_seconds=120, max_attempts=5)
            if not jobs:
                break
            vectors = unit_vectors(rng, len(jobs), model.dimension)
            with conn.transaction():
                written += len(queue.complete(conn, [queue.Finished(j.id, v) for j, v in zip(jobs, vectors)],
                                              worker=worker))
    else:
        for i in range(0, len(image_ids), batch_size):
            chunk = image_ids[i : i + batch_size]
            with conn.transaction():
                conn.execute(
                    # Vectors as binary parameters (%b): the least client work a write can take.
                    "INSERT INTO pgclip.embeddings (image_id, model_id, embedding)"
                    " SELECT t.image_id, %s, t.embedding FROM unnest(%s::bigint[], %b::vector[]) AS t(image_id, embedding)",
                    [model.id, chunk, list(unit_vectors(rng, len(chunk), model.dimension))],
                )
            written += len(chunk)
    conn.close()
    results.put((written, time.time()))


def vector_writes(url: str, model, mode: str, clients: int, rows: int, batch_size: int, tag: str) -> dict:
    from pgclip.db import queue
    from pgclip.db.engine import connection

    with connection(url) as conn:
        ids = insert_bench_images(conn, rows, tag, None)
        if mode == "complete":
            queue.enqueue(conn, ids, model.id)
        conn.commit()
        before = conn.execute("SELECT count(*) FROM pgclip.embeddings WHERE model_id = %s", [model.id]).fetchone()[0]
    wait_quiet(url)
    outs, t0, cpu = run_children(clients, _write_child, lambda i: (url, model, mode, ids[i::clients], batch_size, i + 100))
    written = sum(o[0] for o in outs)
    if written != rows:
        raise SystemExit(f"vector writes ({mode}, {clients} clients): {written} of {rows} rows written")
    return {"mode": mode, "clients": clients, "rows": rows, "index_rows_before": before,
            "rows_per_s": rows / (max(o[1] for o in outs) - t0), "cpu": cpu.as_dict()}


# --- cleanup of a user's database ---------------------------------------------------------------


def cleanup_external(url: str, run_id: str, folders: list[Path], model_prefixes: list[str]) -> None:
    """Delete what this run added to a user's database: its images (and with them their blobs,
    jobs, vectors and thumbnails), its models and their vector indexes."""
    from pgclip.db.engine import connection
    from pgclip.db.models import list_models

    with connection(url) as conn:
        for folder in folders:
            conn.execute("DELETE FROM pgclip.images WHERE starts_with(source, %s)", [f"{folder}/"])
        conn.execute("DELETE FROM pgclip.images WHERE starts_with(source, %s)", [f"{BENCH_SOURCE}{run_id}-"])
        for model in list_models(conn):
            if any(model.pretrained.startswith(p) for p in model_prefixes):
                conn.execute(f'DROP INDEX IF EXISTS pgclip."{model.index_name}"')
                conn.execute("DELETE FROM pgclip.models WHERE id = %s", [model.id])
        conn.commit()


# --- report ---------------------------------------------------------------------------------------


def _f(x, digits=1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def print_report(r: dict) -> None:
    m = r["machine"]
    print(f"\npgclip ingest benchmark, {r['date']}: {m['cores']} cores, {m['memory_gib']} GiB, "
          f"torch {m['torch']} ({m['torch_threads']} threads), open_clip {m['open_clip']}, "
          f"PostgreSQL {m['server_version']} ({m['database']}), pgvector {m['pgvector']}, "
          f"fsync={m['fsync']} synchronous_commit={m['synchronous_commit']}")
    print(f"settings: model {MODEL} (random weights, local checkpoint), batch {r['batch_size']}, "
          f"PGCLIP_TORCH_THREADS={r['torch_threads_setting']}, device {r['device']}"
          + (f"; (b) subprocesses also with {' '.join(r['worker_env'])}" if r["worker_env"] else ""))
    if "a" in r:
        a, s = r["a"], r["a"]["stages"]
        print(f"\n(a) bare model, {a['images']} images of {r['image_size']}, batch {r['batch_size']}")
        print(f"    encode_image: {_f(a['images_per_s'])} img/s  (runs: {', '.join(_f(x) for x in a['runs'])}; "
              f"{_f(1000 / a['images_per_s'])} ms/img)")
        print(f"    (a') as a worker runs it, {a['worker_model_threads']} model thread(s) (PGCLIP_MODEL_THREADS), each on its own batch: "
              f"{_f(a['worker_images_per_s'])} img/s ({_f(a['worker_images_per_s'] / a['images_per_s'], 2)} of (a))")
        print(f"    other per-image costs, one thread: probe {_f(s['probe_ms'], 2)} ms (ingest), decode "
              f"{_f(s['decode_ms'], 2)} ms, thumbnail {_f(s['thumbnail_ms'], 2)} ms, preprocess "
              f"{_f(s['preprocess_ms'], 2)} ms (worker)")
    if "b" in r:
        b = r["b"]
        print(f"\n(b) end to end through the CLI, {b['images']} JPEGs ({r['image_size']}, "
              f"{_f(b['jpeg_kib'])} KiB avg)")
        rows = [
            *((f"ingest into a running worker, run {i + 1} (as deployed)", run["wall_s"], run["images_per_s"],
               run["ratio"]) for i, run in enumerate(b["running"])),
            ("ingest (pgclip ingest)", b["ingest_s"], b["images"] / b["ingest_s"], None),
            ("worker (pgclip worker --until-empty)", b["worker_s"], b["worker_images_per_s"], b["ratio_worker"]),
            ("ingest + worker", b["ingest_s"] + b["worker_s"], b["e2e_images_per_s"], b["ratio_e2e"]),
            ("worker, steady state (third to last write)", None, b["steady_images_per_s"], b["ratio_steady"]),
        ]
        print(f"    {'phase':<50} {'seconds':>8} {'img/s':>8} {'vs (a)':>7}")
        for name, secs, rate, ratio in rows:
            print(f"    {name:<50} {_f(secs):>8} {_f(rate):>8} {_f(ratio, 2):>7}")
        print("    (each run into a running worker against the runs of (a) just before and after it)")
        print(f"    start-up, each command once with nothing to do: pgclip ingest {_f(b['ingest_idle_s'])} s, "
              f"pgclip worker --until-empty {_f(b['worker_idle_s'])} s")
        for i, run in enumerate(b["running"]):
            print(f"    into a running worker, run {i + 1}: first vectors written {_f(run['first_write_after_s'])} s "
                  f"after the ingest started, the last {_f(run['last_write_after_s'])} s; from the third write to "
                  f"the last {_f(run['steady_images_per_s'])} img/s ({_f(run['ratio_steady'], 2)} of (a)); "
                  f"{_f(run['ratio_worker_model'], 2)} of (a')")
        print(f"    worker process: first vectors written {_f(b['first_write_after_s'])} s after it started; "
              f"it kept {_f(b['worker_process_cores'], 2)} of {m['cores']} cores busy")
        verdict = "MET" if b["running_ratio"] >= TARGET_RATIO else "NOT MET"
        print(f"    target b/a >= {TARGET_RATIO}, ingest into a running worker: {verdict} "
              f"({_f(b['running_ratio'], 2)}, the mean of {len(b['running'])} run(s)); "
              f"cold (ingest + worker start-up) {_f(b['ratio_e2e'], 2)}, steady state {_f(b['ratio_steady'], 2)}")
    if "profile" in r:
        p = r["profile"]
        print(f"\n(b') one instrumented worker (`--profile`, {p['images']} more images; timers + cProfile slow it)")
        wall = p["totals"].get("worker.run (wall)", [p["process_wall_s"], 1])[0]
        for name, (secs, calls) in sorted(p["totals"].items(), key=lambda kv: kv[0]):
            print(f"    {name:<54} {secs:8.2f} s {secs / wall * 100:5.0f} %  ({calls} calls)")
        print(f"    process: {p['process_wall_s']:.1f} s wall, {p['process_cpu_s']:.1f} s CPU")
        print("    cProfile, main thread, by own time:")
        for line in p["cprofile"].splitlines():
            if line.strip():
                print("      " + line)
    if "c" in r:
        print("\n(c) queue only: Worker processes, no-op encoder, 8x8 images (claim -> decode -> complete)")
        print(f"    {'vectors written into':<22} {'workers':>7} {'jobs':>7} {'jobs/s':>9} {'jobs/s incl. exit':>18}")
        for q in r["c"]:
            where = "HNSW index (as pgclip)" if q["hnsw"] else "no vector index"
            print(f"    {where:<22} {q['workers']:>7} {q['jobs']:>7} {_f(q['jobs_per_s'], 0):>9} "
                  f"{_f(q['jobs_per_s_wall'], 0):>18}")
    if "d" in r:
        d = r["d"]
        load = d["load"]
        print(f"\n(d) vector writes into an HNSW index holding {load['rows']:,} rows (512-d, m={r['hnsw_m']}, "
              f"ef_construction={r['hnsw_ef_construction']})")
        print(f"    bulk load: binary COPY {_f(load['copy_rows_per_s'], 0)} rows/s ({_f(load['copy_s'])} s), "
              f"then CREATE INDEX {_f(load['index_build_s'])} s ({load['index_size']}), "
              f"VACUUM (ANALYZE) {_f(load['vacuum_s'])} s")
        print(f"    {'statement':<36} {'clients':>7} {'rows':>6} {'rows/s':>8}")
        for w in d["writes"]:
            name = "claim + complete (worker's SQL)" if w["mode"] == "complete" else "INSERT ... unnest, binary vectors"
            print(f"    {name:<36} {w['clients']:>7} {w['rows']:>6} {_f(w['rows_per_s'], 0):>8}")
    print_cpu(r)
    print(f"\ntotal run time {_f(r['total_s'], 0)} s")


def print_cpu(r: dict) -> None:
    """Cores busy during each measurement: ours (this script, its children, the embedded server)
    and everyone else's. Figures taken while others loaded the machine are not comparable."""
    spans = []
    if "a" in r:
        spans += [(f"(a) bare model, run {i + 1}", c) for i, c in enumerate(r["a"]["cpu"])]
        spans.append(("(a') as a worker runs it", r["a"]["worker_cpu"]))
    if "b" in r:
        spans += [("(b) pgclip ingest", r["b"]["ingest_cpu"]), ("(b) pgclip worker", r["b"]["worker_cpu"]),
                  *((f"(b) into a running worker, run {i + 1}", run["cpu"]) for i, run in enumerate(r["b"]["running"]))]
    for q in r.get("c", []):
        spans.append((f"(c) {q['workers']} worker(s), {'HNSW' if q['hnsw'] else 'no index'}", q["cpu"]))
    for w in r.get("d", {}).get("writes", []):
        spans.append((f"(d) {w['mode']}, {w['clients']} client(s)", w["cpu"]))
    if not spans:
        return
    cores = r["machine"]["cores"]
    print(f"\nCPU during each measurement (cores of {cores}; 'others' = processes outside this benchmark)")
    print(f"    {'measurement':<36} {'busy':>6} {'ours':>6} {'others':>7}")
    for name, c in spans:
        print(f"    {name:<36} {_f(c['busy_cores'], 2):>6} {_f(c['our_cores'], 2):>6} {_f(c['other_cores'], 2):>7}")
    noisy = [name for name, c in spans if (c["other_cores"] or 0) > 0.25]
    if noisy:
        print(f"    WARNING: other processes used more than a quarter of a core during: {'; '.join(noisy)}."
              " Those figures (and ratios built on them) are disturbed; run again on a quiet machine.")


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    from pgclip.cli.common import positive

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1024, help="JPEGs for (a) and (b) (default 1024)")
    p.add_argument("--size", default="640x480", help="JPEG size WxH (default 640x480)")
    p.add_argument("--jobs", type=int, default=5_000, help="jobs per run of (c) (default 5000)")
    p.add_argument("--vectors", type=int, default=100_000, help="rows bulk-loaded before (d) (default 100000)")
    p.add_argument("--writes", type=int, default=1024, help="rows written per measurement of (d) (default 1024)")
    p.add_argument("--only", default="a,b,c,d", help="phases to run, e.g. a,b (default all)")
    p.add_argument("--repeats", type=positive, default=2,
                   help="runs of (b) into a running worker, each between two runs of (a) (default 2)")
    p.add_argument("--profile", type=int, nargs="?", const=128, default=0, metavar="N",
                   help="also run one instrumented worker over N more images (default N 128)")
    p.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting for the (b) subprocesses only, e.g. PGCLIP_TORCH_THREADS=1 (repeatable)")
    p.add_argument("--json", action="store_true", help="print the results as JSON (the table goes to stderr)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (and the embedded server running)")
    p.add_argument("--_profiled-worker", dest="profiled_worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    global POSTMASTER_PID
    args = parse_args(argv)
    if args.profiled_worker:
        return profiled_worker(args.profiled_worker)
    phases = {x.strip() for x in args.only.split(",") if x.strip()}
    width, height = (int(v) for v in args.size.lower().split("x"))
    t_total = time.perf_counter()
    run_id = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="pgclip-bench-"))
    external = bool(os.environ.get("PGCLIP_DATABASE_URL"))
    env = {k: v for k, v in os.environ.items()}
    if not external:
        env["PGCLIP_DATA_DIR"] = str(tmp / "data")
    checkpoint = tmp / "vit-b-32-random.pt"
    env["PGCLIP_MODEL"] = MODEL
    env["PGCLIP_PRETRAINED"] = str(checkpoint)
    os.environ.update(env)  # this process and its children read the same settings

    from pgclip.core.settings import Settings

    settings = Settings.from_env()
    results: dict = {"date": time.strftime("%Y-%m-%d"), "batch_size": settings.batch_size,
                     "torch_threads_setting": settings.torch_threads, "device": settings.device,
                     "image_size": f"{width}x{height}", "hnsw_m": settings.hnsw_m,
                     "hnsw_ef_construction": settings.hnsw_ef_construction, "worker_env": args.worker_env}
    folders: list[Path] = []
    try:
        log(f"temporary folder {tmp}; database: {'PGCLIP_DATABASE_URL' if external else 'embedded, ' + env['PGCLIP_DATA_DIR']}")
        seed = int(run_id, 16) % 1_000_000
        make_checkpoint(checkpoint, seed)
        run_cli("migrate", env=env)
        if not external:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pidfile = Path(env["PGCLIP_DATA_DIR"]) / "postgres" / "postmaster.pid"
                POSTMASTER_PID = int(pidfile.read_text().split()[0])
        from pgclip.db.engine import connection, database_url
        from pgclip.db.models import get_model
        from pgclip.workers.encoder import ClipEncoder, pretrained_identity

        url = database_url(settings)
        with connection(url) as conn:
            facts = server_facts(conn)
            model_b = get_model(conn, MODEL, pretrained_identity(MODEL, str(checkpoint), settings.encoder))
        import open_clip
        import torch

        results["machine"] = {
            "cores": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
            "python": platform.python_version(), "torch": torch.__version__.split("+")[0],
            "torch_threads": torch.get_num_threads(), "open_clip": open_clip.__version__,
            "database": "external" if external else "embedded", **facts,
        }
        worker_env = dict(item.split("=", 1) for item in args.worker_env)
        if phases & {"a", "b"}:
            folder = tmp / "images"
            folders.append(folder)
            log(f"writing {args.images} JPEGs of {width}x{height}")
            blobs = write_jpegs(folder, args.images, (width, height), seed * 10)
            runs = []
            if "a" in phases:
                log("(a) bare model: loading ViT-B-32 through pgclip's ClipEncoder, decoding, preprocessing")
                from pgclip.workers.decode import decode

                encoder = ClipEncoder(MODEL, str(checkpoint), device=settings.device,
                                      torch_threads=settings.torch_threads, backend=settings.encoder)
                encoder.load()
                check_weights(encoder, checkpoint)
                tensors = torch.stack([encoder.preprocess(decode(b)) for b in blobs]).to(encoder._device)
                stages = stage_costs(encoder, blobs, min(64, len(blobs)))
                runs.append(bare_model(encoder, tensors, settings.batch_size))
                log(f"(a) {runs[-1][0]:.1f} img/s")
                log("(a') the same forward as a worker runs it (PGCLIP_MODEL_THREADS)")
                worker_settings = Settings.from_env({**env, **worker_env})  # what the (b) workers will read
                worker_rate, parts, worker_cpu = bare_worker_model(checkpoint, worker_settings, tensors)
                log(f"(a') {worker_rate:.1f} img/s in {parts} model thread(s)")
            running_runs = []
            if "b" in phases:
                # The target figure first, each run between two runs of (a): the machine drifts.
                b_env = {**env, **worker_env}
                for repeat in range(args.repeats):
                    log(f"(b) pgclip ingest with a pgclip worker already running ({repeat + 1} of {args.repeats})")
                    wfolder = tmp / f"images-running-worker-{repeat}"
                    folders.append(wfolder)
                    write_jpegs(wfolder, args.images, (width, height), seed * 10 + (5 + repeat) * args.images)
                    running = running_worker(wfolder, args.images, b_env, url, model_b.id)
                    log(f"(b) running worker {running['images_per_s']:.1f} img/s")
                    if "a" in phases:
                        runs.append(bare_model(encoder, tensors, settings.batch_size))
                        log(f"(a) again: {runs[-1][0]:.1f} img/s")
                        # Against the runs of (a) just before and just after it.
                        running["a_images_per_s"] = (runs[-2][0] + runs[-1][0]) / 2
                    running_runs.append(running)
            if "a" in phases:
                if len(runs) == 1:
                    runs.append(bare_model(encoder, tensors, settings.batch_size))
                    log(f"(a) again: {runs[-1][0]:.1f} img/s")
                rates = [rate for rate, _ in runs]
                results["a"] = {"images": args.images, "runs": rates, "images_per_s": sum(rates) / len(rates),
                                "cpu": [cpu for _, cpu in runs], "stages": stages,
                                "worker_images_per_s": worker_rate, "worker_model_threads": parts, "worker_cpu": worker_cpu}
            if "b" in phases:
                log("(b) pgclip ingest + pgclip worker --until-empty")
                b = end_to_end(folder, args.images, b_env, url, model_b.id)
                b["images"] = args.images
                b["jpeg_kib"] = sum(map(len, blobs)) / len(blobs) / 1024
                b["running"] = running_runs
                results["b"] = b
                log(f"(b) worker {args.images / b['worker_s']:.1f} img/s")
            if "b" in results and "a" in results:
                b, a = results["b"], results["a"]["images_per_s"]
                b["worker_images_per_s"] = args.images / b["worker_s"]
                b["e2e_images_per_s"] = args.images / (b["ingest_s"] + b["worker_s"])
                b["ratio_worker"] = b["worker_images_per_s"] / a
                b["ratio_e2e"] = b["e2e_images_per_s"] / a
                b["ratio_steady"] = b["steady_images_per_s"] / a if b["steady_images_per_s"] else None
                for run in b["running"]:
                    run["ratio"] = run["images_per_s"] / run["a_images_per_s"]
                    run["ratio_worker_model"] = run["images_per_s"] / results["a"]["worker_images_per_s"]
                    steady = run["steady_images_per_s"]
                    run["ratio_steady"] = steady / run["a_images_per_s"] if steady else None
                b["running_ratio"] = sum(run["ratio"] for run in b["running"]) / len(b["running"])
            if "a" in phases:
                del tensors, encoder
            if args.profile:
                pfolder = tmp / "images-profile"
                folders.append(pfolder)
                write_jpegs(pfolder, args.profile, (width, height), seed * 10 + args.images)
                log(f"(b') instrumented worker over {args.profile} images")
                results["profile"] = {"images": args.profile, **profile_run(pfolder, env, tmp)}
        if "c" in phases:
            results["c"] = []
            for hnsw in (True, False):
                for workers in (1, 4):
                    log(f"(c) queue, {workers} worker(s), {args.jobs} jobs, {'with' if hnsw else 'no'} HNSW index")
                    results["c"].append(queue_throughput(url, settings, args.jobs, workers,
                                                         f"{run_id}-c{workers}{'h' if hnsw else 'n'}", hnsw=hnsw))
                    log(f"(c) {results['c'][-1]['jobs_per_s']:.0f} jobs/s")
        if "d" in phases:
            log(f"(d) bulk-loading {args.vectors} vectors, then building the HNSW index")
            model_d, load = bulk_load(url, settings, args.vectors, f"{run_id}-d", seed)
            log(f"(d) COPY {load['copy_s']:.1f} s, index {load['index_build_s']:.1f} s")
            writes = []
            for mode in ("complete", "insert"):
                for clients in (1, 2):
                    writes.append(vector_writes(url, model_d, mode, clients, args.writes, settings.batch_size,
                                                f"{run_id}-d-{mode}{clients}"))
                    log(f"(d) {mode}, {clients} client(s): {writes[-1]['rows_per_s']:.0f} rows/s")
            results["d"] = {"load": load, "writes": writes}
        if external:
            cleanup_external(url, run_id, folders, [f"bench-noop-{run_id}", f"bench-hnsw-{run_id}",
                                            model_b.pretrained if model_b else "\0"])
    finally:
        if not external and not args.keep:
            with contextlib.suppress(Exception):
                subprocess.run([*PGCLIP, "db", "stop"], env=env, capture_output=True, timeout=120, cwd=REPO)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept {tmp}")
    results["total_s"] = time.perf_counter() - t_total
    if args.json:
        with contextlib.redirect_stdout(sys.stderr):
            print_report(results)
        print(json.dumps(results, indent=2, default=str))
    else:
        print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
