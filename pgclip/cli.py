"""The ``pgclip`` command: one entry point that wires db, workers and api together.

Every user mistake ends as one line on stderr (``pgclip: error: ...``) and exit
status 1; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pgclip import __version__
from pgclip.errors import PgclipError
from pgclip.settings import Settings

Handler = Callable[[argparse.Namespace, Settings], int | None]


def _out(line: str = "") -> None:
    print(line, flush=True)


# --- pgclip db ---------------------------------------------------------------


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.db.engine import database_url, embedded_server

    action = args.action
    if settings.database_url and action in ("start", "stop"):
        raise PgclipError(
            f"`pgclip db {action}` manages the embedded server, but PGCLIP_DATABASE_URL is set; "
            "manage that server with its own tools"
        )
    if action == "url":
        _out(database_url(settings))
        return 0
    server = embedded_server(settings)
    if action == "start":
        url = database_url(settings)
        _out(f"embedded PostgreSQL running in {server.pgdata}")
        _out(url)
        return 0
    if action == "stop":
        _out("stopped" if server.stop() else "not running")
        return 0
    # status
    if settings.database_url:
        from pgclip.bootstrap import reachable_url

        url = reachable_url(settings)
        _out(f"external database reachable: {_masked(url)}")
        return 0
    status = server.status()
    if status.running:
        _out(f"running (pid {status.pid}) in {status.pgdata}")
        _out(status.url or "")
        return 0
    _out(f"not running (data directory {status.pgdata})")
    return 3  # like `pg_ctl status`: scripts can test it


def _masked(url: str) -> str:
    from pgclip.settings import mask_url

    return mask_url(url)


# --- pgclip migrate / config / demo ------------------------------------------------


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.bootstrap import migrate
    from pgclip.db.migrate import head_revision

    url, model = migrate(settings)
    _out(f"schema at {head_revision()} in {_masked(url)}")
    _out(f"model {model.label}: dimension {model.dimension}, {model.state}")
    return 0


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    rows = settings.describe()
    width = max(len(env) for env, _, _ in rows)
    for env, value, help in rows:
        _out(f"{env:<{width}}  {value}")
        if args.verbose:
            _out(f"{'':<{width}}  # {help}")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.bootstrap import migrate
    from pgclip.db.migrate import head_revision

    url, model = migrate(settings)
    _out(f"database ready at {_masked(url)} (schema {head_revision()})")
    _out(f"model {model.label} registered, dimension {model.dimension}")
    _out(f'try: psql "{url}" -c "\\dt pgclip.*"')
    return 0


# --- pgclip ingest / worker / status / retry-failed ------------------------------------


def _progress(total: int | None, unit: str, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, disable=None, dynamic_ncols=True)


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from pgclip.bootstrap import ready_url, register_configured_model
    from pgclip.db.engine import connection
    from pgclip.workers.ingest import ingest, require_paths
    from pgclip.workers.manifest import load_manifest

    paths = [Path(p) for p in args.paths]
    manifest = load_manifest(Path(args.captions)) if args.captions else None
    require_paths(paths, manifest)
    url = ready_url(settings)
    model = register_configured_model(url, settings)
    bar = _progress(None, "file", "ingest")
    with bar, connection(url, role="ingest") as conn:
        report = ingest(
            conn, paths, model_id=model.id, manifest=manifest, ts_config=settings.text_search_config,
            progress=bar.update, on_total=lambda n: setattr(bar, "total", n),
        )
    if args.json:
        import json

        _out(json.dumps({k: v for k, v in report.as_dict().items() if k != "image_ids"}, indent=2))
        return 0
    _out(
        f"added {report.added}, already present {report.present}, skipped {report.skipped} (not images), "
        f"rejected {len(report.rejected)}; {report.captions_added} captions added, {report.enqueued} queued"
    )
    for path, reason in report.rejected:
        _out(f"  rejected {path}: {reason}")
    if report.manifest_missing:
        _out(f"{len(report.manifest_missing)} manifest entries name no ingested image, e.g.:")
        for key in report.manifest_missing[:10]:
            _out(f"  {key}")
    if report.manifest_problem_count:
        _out(f"{report.manifest_problem_count} manifest rows skipped, e.g.:")
        for problem in report.manifest_problems[:10]:
            _out(f"  {problem}")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import logging
    import os

    from pgclip.bootstrap import ready_url, register_configured_model
    from pgclip.db.engine import connection
    from pgclip.db.queue import open_jobs
    from pgclip.workers.encoder import ClipEncoder
    from pgclip.workers.loop import Worker
    from pgclip.workers.supervisor import install_signal_handlers, run_children

    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr,
        format=f"%(asctime)s pgclip-worker[{os.getpid()}] %(levelname)s %(message)s",
    )
    logging.getLogger("pgclip").setLevel(logging.INFO)
    if args.concurrency > 1:
        child_args = ["--until-empty"] if args.until_empty else []
        threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // args.concurrency)
        return run_children(args.concurrency, child_args, threads_per_child=threads)
    url = ready_url(settings)
    model = register_configured_model(url, settings)
    encoder = ClipEncoder(settings.model, settings.pretrained, device=settings.device, torch_threads=settings.torch_threads)
    encoder.load()  # fail fast, before claiming anything
    with connection(url, role="worker") as conn:
        total = open_jobs(conn, model.id)[0]
    bar = _progress(total if args.until_empty else None, "img", "embed")
    worker = Worker(
        url, encoder=encoder, model=model, batch_size=settings.batch_size, lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts, on_done=bar.update,
    )
    install_signal_handlers(worker.stop)
    logging.getLogger("pgclip.worker").info("worker %s on %s, model %s", worker.id, encoder.device, model.label)
    with bar:
        stats = worker.run(until_empty=args.until_empty)
    _out(f"worker {worker.id}: {stats.done} done, {stats.failed} failed, {stats.retried} to retry, "
         f"{stats.released} released, {stats.lost} lost leases")
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses
    import json

    from pgclip.bootstrap import ready_url
    from pgclip.db import queue
    from pgclip.db.engine import connection

    with connection(ready_url(settings)) as conn:
        status = queue.status(conn, failures=args.failures)
    if args.json:
        data = dataclasses.asdict(status)
        for m, model in zip(data["models"], status.models, strict=True):
            m["eta_seconds"] = model.eta_seconds
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
            _out(f"  job {f.job_id} image {f.image_id} {f.source or ''} [{f.model}, {f.attempts} attempts]: {f.last_error}")
    return 0


def cmd_retry_failed(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.bootstrap import ready_url
    from pgclip.db import queue
    from pgclip.db.engine import connection

    with connection(ready_url(settings)) as conn:
        count = queue.retry_failed(conn)
        conn.commit()
    _out(f"re-queued {count} failed jobs")
    return 0


# --- wiring ------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgclip",
        description="Semantic image search inside PostgreSQL. Settings come from PGCLIP_* variables (`pgclip config`).",
    )
    parser.add_argument("--version", action="version", version=f"pgclip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    db = sub.add_parser("db", help="manage the embedded PostgreSQL server (start, stop, status, url)")
    db.add_argument("action", choices=["start", "stop", "status", "url"])
    db.set_defaults(handler=cmd_db)

    mig = sub.add_parser("migrate", help="upgrade the schema to head (alembic) and register the configured model")
    mig.set_defaults(handler=cmd_migrate)

    cfg = sub.add_parser("config", help="print the effective configuration (secrets masked)")
    cfg.add_argument("-v", "--verbose", action="store_true", help="explain each setting")
    cfg.set_defaults(handler=cmd_config)

    ing = sub.add_parser("ingest", help="add image files and folders (recursive), with optional captions")
    ing.add_argument("paths", nargs="*", metavar="PATH", help="image files or folders")
    ing.add_argument("--captions", metavar="FILE", help="Flickr30k results.csv or JSON Lines manifest")
    ing.add_argument("--json", action="store_true", help="print the summary as JSON")
    ing.set_defaults(handler=cmd_ingest)

    wrk = sub.add_parser("worker", help="embed queued images (run as many as you like, on any host)")
    wrk.add_argument("--concurrency", type=_positive, default=1, metavar="N", help="run N worker processes")
    wrk.add_argument("--until-empty", action="store_true", help="exit when no job is left to do")
    wrk.set_defaults(handler=cmd_worker)

    st = sub.add_parser("status", help="queue counts, throughput, ETA and failures")
    st.add_argument("--json", action="store_true")
    st.add_argument("--failures", type=_positive, default=20, metavar="N", help="show the N most recent failures")
    st.set_defaults(handler=cmd_status)

    rf = sub.add_parser("retry-failed", help="re-queue failed jobs")
    rf.set_defaults(handler=cmd_retry_failed)

    demo = sub.add_parser("demo", help="set up the database and run the demo")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        settings = Settings.from_env()
        return handler(args, settings) or 0
    except PgclipError as exc:
        print(f"pgclip: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
