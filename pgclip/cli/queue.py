"""CLI commands of the write path: ingest, worker, status, retry-failed."""

from __future__ import annotations

import argparse
import sys

from pgclip.cli.common import out as _out
from pgclip.cli.common import database_lost, nonnegative, positive, usage_error
from pgclip.cli.common import progress as _progress
from pgclip.core.settings import Settings


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    """Exit status: 0 all stored (or skipped as not images), 1 some rejected, 2 usage error or a
    PATH that does not exist, 3 the database unreachable or lost mid-run (committed batches stay)."""
    import logging
    import os
    from pathlib import Path

    from pgclip.application.bootstrap import ready_url, storing_model
    from pgclip.core.errors import InvalidInput
    from pgclip.db.engine import connection
    from pgclip.workers.ingest import BATCH_FILES, IngestStopped, ingest, require_paths
    from pgclip.workers.ingest_files import readable_name
    from pgclip.workers.manifest import load_manifest
    from pgclip.workers.video import VideoOptions

    paths = [Path(p).expanduser() for p in args.paths]
    missing = [p for p in paths if not os.path.lexists(p)]
    if missing:
        return usage_error("no such file or directory: " + ", ".join(readable_name(p) for p in missing))
    try:
        manifest = load_manifest(Path(args.captions)) if args.captions else None
        require_paths(paths, manifest)
    except InvalidInput as exc:
        return usage_error(str(exc))
    # psycopg logs what it could not clean up after a lost connection ("error ignored terminating
    # <psycopg.Pipeline [BAD]>"); that loss is reported below, in one line.
    logging.getLogger("psycopg").setLevel(logging.CRITICAL)
    try:
        url = ready_url(settings)
        model, note = storing_model(url, settings, quick=True)
        if note:
            print(f"pgclip: {note}", file=sys.stderr)
        with _progress(None, "file", "ingest") as bar, connection(url, role="ingest") as conn:
            plan = _bulk_mode(conn, url, model, args.bulk)
            report = ingest(
                conn, paths, model_id=model.id, manifest=manifest, ts_config=settings.text_search_config,
                progress=bar.update, on_total=lambda n: setattr(bar, "total", n),
                batch_files=args.batch_files or BATCH_FILES,
                video=VideoOptions.from_settings(settings, args.frame_interval), stop=_first_ctrl_c(),
            )
        if plan.dropped and plan.vectors and not report.enqueued:
            _rebuild_now(url, model)  # after the ingest's connection (and its lock) is gone
    except IngestStopped as stopped:  # Ctrl-C: the status a shell gives SIGINT, and what was kept
        print(f"pgclip: {stopped}", file=sys.stderr)
        return 130
    except Exception as exc:  # IngestInterrupted (lost mid-run) is a DatabaseUnavailable
        return database_lost(exc)
    status = 1 if report.rejected else 0
    _print_ingest_report(report, args.json, args.verbose)
    return status


def _rebuild_now(url: str, model) -> None:
    """``--bulk`` dropped the index, and the ingest queued nothing (every file was stored
    already): no worker will get to build it, so it is built here, now."""
    from pgclip.db.indexes import build_deferred

    print(f"pgclip: bulk mode: nothing new to embed; building the index of {model.label} again now",
          file=sys.stderr)
    if build_deferred(url, model) is None:  # other jobs are open: the worker that drains them builds it
        print("pgclip: bulk mode: other images are queued for it; the worker that embeds them builds the index",
              file=sys.stderr)


def _bulk_mode(conn, url: str, model, bulk: bool):
    """Hold the ingest's place against the model's deferred index (it is built after the ingest's
    last image), and with ``--bulk`` drop a built index first; say what happened, on stderr."""
    from pgclip.db.indexes import prepare_ingest

    plan = prepare_ingest(conn, url, model, bulk=bulk)
    if plan.dropped and plan.vectors:
        print(f"pgclip: bulk mode: dropped the index of {model.label} ({plan.vectors} vectors); its searches "
              "rank every vector exactly (slower) until the workers have embedded this ingest and built it "
              "again, once", file=sys.stderr)
    elif bulk and plan.deferred:
        print(f"pgclip: bulk mode: {model.label} has no index yet; it is built once the workers have embedded "
              "this ingest", file=sys.stderr)
    elif bulk:
        print(f"pgclip: bulk mode: {model.label} has no vector index (kind none): nothing to defer",
              file=sys.stderr)
    return plan


def _first_ctrl_c():
    """A first Ctrl-C lets the batch in hand commit (so the count said is exact), a second one
    stops at once; returns what ``ingest(stop=...)`` asks."""
    import signal
    import threading

    asked = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        if asked.is_set():
            raise KeyboardInterrupt
        asked.set()

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when the shell ignores it
        signal.signal(signal.SIGINT, on_sigint)
    return asked.is_set


def _print_ingest_report(report, as_json: bool, verbose: bool) -> None:
    from pgclip.workers.ingest_files import one_line

    if as_json:
        import json

        _out(json.dumps({k: v for k, v in report.as_dict().items() if k != "image_ids"}, indent=2))
        return
    count = len(report.warnings)
    warned = f"; {count} image library warning{'' if count == 1 else 's'}" if count else ""
    _out(
        f"added {report.added}, already present {report.present}, skipped {report.skipped} (not images), "
        f"rejected {len(report.rejected)}; {report.captions_added} captions added, {report.enqueued} queued{warned}"
    )
    if report.videos_added or report.videos_present:
        _out(f"videos: added {report.videos_added} ({report.frames_added} frames), "
             f"already present {report.videos_present}")
    for path, reason in report.rejected:
        _out(f"  rejected {one_line(path)}: {one_line(reason)}")
    if report.warnings and verbose:
        for path, warning in report.warnings:
            _out(f"  warning {one_line(path)}: {one_line(warning)}")
    elif report.warnings:
        _out("  (--verbose lists the warnings; the files were judged on their pixels)")
    if report.manifest_missing:
        _out(f"{len(report.manifest_missing)} manifest entries name no ingested image, e.g.:")
        for key in report.manifest_missing[:10]:
            _out(f"  {one_line(key)}")
    if report.manifest_problem_count:
        _out(f"{report.manifest_problem_count} manifest rows skipped, e.g.:")
        for problem in report.manifest_problems[:10]:
            _out(f"  {one_line(problem)}")


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import logging
    from concurrent.futures import ThreadPoolExecutor

    from pgclip.application.bootstrap import ready_url, worker_model
    from pgclip.core import logs
    from pgclip.core.errors import InvalidInput
    from pgclip.db.engine import connection, describe_target, reviver
    from pgclip.db.metrics import DatabaseCollector, scrape_connection
    from pgclip.db.queue import open_jobs
    from pgclip.workers.encoder import ClipEncoder
    from pgclip.workers.loop import Worker
    from pgclip.workers.metrics import WorkerMetrics
    from pgclip.workers.reconnect import wait_for_database
    from pgclip.workers.supervisor import install_signal_handlers, supervising_parent

    _worker_process_setup()
    parent = supervising_parent()
    if args.model or args.pretrained:
        import dataclasses

        settings = dataclasses.replace(settings, model=args.model or settings.model,
                                       pretrained=args.pretrained or settings.pretrained)
    metrics_port = settings.worker_metrics_port if args.metrics_port is None else args.metrics_port
    if metrics_port and metrics_port + args.concurrency - 1 > 65535:
        raise InvalidInput(f"--metrics-port {metrics_port} with --concurrency {args.concurrency} needs ports past 65535")
    # Served before anything else: a port already taken fails at once, in one line.
    registry = _serve_metrics(settings.worker_metrics_host, metrics_port, args.concurrency) if metrics_port else None
    # A worker started before its database (or while it restarts) waits for it.
    target = describe_target(settings.database_url) if settings.database_url else "the embedded server"
    if args.concurrency > 1:
        wait_for_database(target, lambda: ready_url(settings))  # errors that need a person, said once
        return _supervise(args, settings, metrics_port)
    url = wait_for_database(target, lambda: ready_url(settings))
    target = describe_target(url)
    if registry is not None:
        registry.register(DatabaseCollector(lambda: scrape_connection(url)))
    encoder = ClipEncoder.from_settings(settings, worker=True)
    with ThreadPoolExecutor(1) as pool:
        # Weights load (fail fast, before claiming anything) while a checkpoint is hashed to register it.
        loading = pool.submit(encoder.load)
        model = wait_for_database(target, lambda: worker_model(url, settings))
        loading.result()

    def count_open() -> int:
        with connection(url, role="worker") as conn:
            return open_jobs(conn, model.id)[0]

    total = wait_for_database(target, count_open)
    bar = _progress(total if args.until_empty else None, "img", "embed")
    metrics = (WorkerMetrics(registry, model=model.name, pretrained=model.pretrained) if registry is not None
               else None)
    worker = Worker(
        url, encoder=encoder, model=model, batch_size=settings.batch_size, lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts, model_threads=encoder.model_threads, on_done=bar.update,
        watchdog_seconds=args.watchdog, parent_pid=parent, metrics=metrics, revive=reviver(settings),
    )
    worker.metrics.describe_worker(worker.id, encoder.backend, encoder.device)
    logs.bind(worker=worker.id)
    install_signal_handlers(worker.stop, worker.give_back)
    logging.getLogger("pgclip.worker").info(
        "worker %s on %s (%d model thread%s), model %s", worker.id, encoder.device, encoder.model_threads,
        "" if encoder.model_threads == 1 else "s", model.label,
    )
    with bar:
        stats = worker.run(until_empty=args.until_empty)
    _out(f"worker {worker.id}: {stats.done} done, {stats.failed} failed, {stats.retried} to retry, "
         f"{stats.released} released, {stats.lost} lost leases")
    return 0


def _worker_process_setup() -> None:
    """A stop before any job is held just exits (the log lines that name the process are
    set up by ``pgclip.cli.main``)."""
    import signal

    def quit_quietly(signum, frame):  # stopped before holding any job: nothing to give back
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, quit_quietly)
    signal.signal(signal.SIGINT, quit_quietly)


def _supervise(args: argparse.Namespace, settings: Settings, metrics_port: int) -> int:
    """`--concurrency N`: N worker processes, each a `pgclip worker` with its share of the threads
    (and, with a metrics port P, child i serving its metrics on port P + i)."""
    import os

    from pgclip.workers.supervisor import run_children

    child_args = ["--until-empty"] if args.until_empty else []
    child_args += ["--model", settings.model, "--pretrained", settings.pretrained, "--watchdog", str(args.watchdog)]
    threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // args.concurrency)
    return run_children(args.concurrency, child_args, threads_per_child=threads,
                        slot_args=lambda i: ["--metrics-port", str(metrics_port + i if metrics_port else 0)])


def _serve_metrics(host: str, port: int, concurrency: int):
    """The worker's metrics registry, served on host:port (``workers/metrics.py``); None for a
    `--concurrency` parent, which only checks that its children's ports are free."""
    from pgclip.workers.metrics import process_registry, require_free, serve

    if concurrency > 1:
        require_free(host, range(port, port + concurrency))
        return None
    registry = process_registry()
    serve(registry, host, port)
    return registry


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses
    import json

    from pgclip.application.bootstrap import ready_url
    from pgclip.db import queue
    from pgclip.db.engine import connection
    from pgclip.workers.ingest_files import one_line

    url = ready_url(settings)
    with connection(url) as conn:
        status = queue.status(conn, failures=args.failures)
    replicas = _replica_states(url, settings)
    if args.json:
        data = dataclasses.asdict(status)
        for m, model in zip(data["models"], status.models, strict=True):
            m["eta_seconds"] = model.eta_seconds
        data["replicas"] = [dataclasses.asdict(r) for r in replicas]
        _out(json.dumps(data, indent=2, default=str))
        return 0
    for m in status.models:
        c = m.counts
        _out(f"model {m.model} ({m.pretrained}) [{m.model_state}]")
        _out(f"  pending {c['pending']}  leased {c['leased']}  done {c['done']}  failed {c['failed']}")
        eta = m.eta_seconds
        eta_text = "-" if eta is None else f"{eta:.0f}s"
        _out(f"  last minute: {m.done_last_minute} done ({m.done_last_minute / 60:.1f}/s), ETA {eta_text}")
        if m.oldest_pending:
            _out(f"  oldest pending job enqueued {m.oldest_pending:%Y-%m-%d %H:%M:%S %Z}")
    if status.failures:
        _out(f"failures (most recent {len(status.failures)}):")
        for f in status.failures:
            _out(f"  job {f.job_id} image {f.image_id} {one_line(f.source or '')} [{f.model}, {f.attempts} attempts]: "
                 f"{one_line(f.last_error or '')}")
    for r in replicas:
        lag = "lag unknown" if r.lag_bytes is None else f"lag {r.lag_bytes} bytes, {r.lag_seconds:.1f} s"
        why = f": {one_line(r.error)}" if r.error else ""
        _out(f"{r.id} {r.name} [{'in use' if r.in_use else 'out of use'}] {lag}{why}")
    return 0


def _replica_states(url: str, settings: Settings) -> list:
    """Each read replica (PGCLIP_READ_DATABASE_URLS) as one look at it and the primary finds it."""
    if not settings.read_database_urls:
        return []
    from pgclip.db.pool import Pool
    from pgclip.db.replicas import Replicas

    primary = Pool(url, role="cli", max_size=1)
    primary.open()
    replicas = Replicas(settings.read_database_urls, primary, max_lag=settings.max_replica_lag, role="cli",
                        pool_max=1)
    try:
        replicas.open(watch=False)
        return replicas.states()
    finally:
        replicas.close()
        primary.close()


def cmd_retry_failed(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.application.bootstrap import ready_url
    from pgclip.db import queue
    from pgclip.db.engine import connection

    with connection(ready_url(settings)) as conn:
        count = queue.retry_failed(conn)
        conn.commit()
    _out(f"re-queued {count} failed jobs")
    return 0




def cmd_rm(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.application.bootstrap import ready_url
    from pgclip.db.engine import connection
    from pgclip.db.images import delete_images

    ids = list(dict.fromkeys(args.ids))  # `rm 31 31` deletes (and says) 31 once
    with connection(ready_url(settings)) as conn, conn.transaction():
        deleted = delete_images(conn, ids)
    for image_id in ids:
        _out(f"deleted {image_id}" if image_id in deleted else f"no image with id {image_id}")
    return 0 if len(deleted) == len(ids) else 1


def cmd_edit(args: argparse.Namespace, settings: Settings) -> int:
    import datetime as dt
    import json

    from pgclip.application.bootstrap import ready_url
    from pgclip.core.errors import InvalidInput
    from pgclip.db.engine import connection
    from pgclip.db.images import UNSET, captions, described, edit_image
    from pgclip.workers.manifest import clean_caption

    metadata = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"--set expects key=value, got {item!r}")
        try:
            metadata[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            metadata[key.strip()] = value
    taken_at = UNSET
    if args.taken_at is not None:
        try:
            taken_at = None if args.taken_at == "" else dt.datetime.fromisoformat(args.taken_at)
        except ValueError:
            raise InvalidInput(f"--taken-at expects an ISO date/time, got {args.taken_at!r}") from None
    new_captions = [t for t in (clean_caption(c) for c in args.caption_add) if t]
    with connection(ready_url(settings)) as conn, conn.transaction():
        edit_image(conn, args.id, metadata=metadata or None, unset_keys=args.unset, taken_at=taken_at,
                   new_captions=new_captions, remove_caption_ids=args.caption_rm,
                   ts_config=settings.text_search_config)
        now, caps = described(conn, args.id), captions(conn, args.id)
    _out(f"image {args.id}: taken_at {now.taken_at or '-'}, metadata {json.dumps(now.metadata, ensure_ascii=False)}")
    for caption in caps:
        _out(f"  caption {caption.id}: {caption.text}")
    return 0


def _seconds(text: str) -> float:
    """argparse type of --frame-interval: 0.1 to 86400 seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0.1 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"must be 0.1 to 86400 seconds, got {text}")
    return value


def add_queue_parsers(sub: argparse._SubParsersAction) -> None:
    """The write path: ingest, the workers, the queue's state, and changes to stored images."""
    ing = sub.add_parser("ingest", help="add image and video files and folders (recursive), with optional captions")
    ing.add_argument("paths", nargs="*", metavar="PATH", help="image or video files, or folders")
    ing.add_argument("--captions", metavar="FILE", help="Flickr30k results.csv or JSON Lines manifest")
    ing.add_argument("--json", action="store_true", help="print the summary as JSON")
    ing.add_argument("-v", "--verbose", action="store_true", help="list the image library's warnings, file by file")
    ing.add_argument("--bulk", action="store_true",
                     help="a large import: drop the model's vector index first and build it once, when the workers "
                          "have embedded everything (searches of the model are exact and slower meanwhile)")
    ing.add_argument("--batch-files", type=positive, metavar="N",
                     help="files per transaction (default 64): a killed run keeps every batch it committed")
    ing.add_argument("--frame-interval", type=_seconds, metavar="SECONDS",
                     help="videos: sample one frame every SECONDS (default PGCLIP_VIDEO_FRAME_INTERVAL, 5)")
    ing.set_defaults(handler=cmd_ingest)

    wrk = sub.add_parser("worker", help="embed queued images (run as many as you like, on any host)")
    wrk.add_argument("--concurrency", type=positive, default=1, metavar="N", help="run N worker processes")
    wrk.add_argument("--until-empty", action="store_true", help="exit when no job is left to do")
    wrk.add_argument("--model", metavar="NAME", help="embed for this model instead of PGCLIP_MODEL (a re-embed)")
    wrk.add_argument("--pretrained", metavar="TAG_OR_PATH", help="its weights, instead of PGCLIP_PRETRAINED")
    wrk.add_argument("--metrics-port", type=nonnegative, metavar="PORT",
                     help="serve Prometheus metrics on this port (default PGCLIP_WORKER_METRICS_PORT; 0: none); "
                          "--concurrency N: child i on PORT + i")
    wrk.add_argument("--watchdog", type=float, default=120.0, metavar="SECONDS",
                     help="a worker that holds jobs and makes no progress this long is hung: it prints a thread "
                          "dump and exits with status 3 to be restarted (default 120; 0 = off)")
    wrk.set_defaults(handler=cmd_worker)

    st = sub.add_parser("status", help="queue counts, throughput, ETA and failures")
    st.add_argument("--json", action="store_true")
    st.add_argument("--failures", type=positive, default=20, metavar="N", help="show the N most recent failures")
    st.set_defaults(handler=cmd_status)

    rf = sub.add_parser("retry-failed", help="re-queue failed jobs")
    rf.set_defaults(handler=cmd_retry_failed)

    rm = sub.add_parser("rm", help="delete images (and their captions, vectors, queue rows)")
    rm.add_argument("ids", nargs="+", type=positive, metavar="ID")
    rm.set_defaults(handler=cmd_rm)

    ed = sub.add_parser("edit", help="change an image's metadata, date or captions (vectors untouched)")
    ed.add_argument("id", type=positive, metavar="ID")
    ed.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="set a metadata key (JSON values allowed)")
    ed.add_argument("--unset", action="append", default=[], metavar="KEY", help="remove a metadata key")
    ed.add_argument("--taken-at", metavar="ISO", help="set the date taken ('' clears it)")
    ed.add_argument("--caption-add", action="append", default=[], metavar="TEXT")
    ed.add_argument("--caption-rm", action="append", default=[], type=positive, metavar="N", help="caption id to remove")
    ed.set_defaults(handler=cmd_edit)
