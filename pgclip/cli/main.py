"""The ``pgclip`` command: one entry point that wires db, workers and api together.

Every user mistake ends as one line on stderr (``pgclip: error: ...``) and exit
status 1; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from pgclip import __version__
from pgclip.core.errors import PgclipError
from pgclip.core.settings import Settings

Handler = Callable[[argparse.Namespace, Settings], int | None]


from pgclip.cli.common import out as _out
from pgclip.cli.common import positive as _positive
from pgclip.cli.queue import cmd_edit, cmd_ingest, cmd_retry_failed, cmd_rm, cmd_status, cmd_worker
from pgclip.cli.search import cmd_demo, cmd_duplicates, cmd_search, cmd_serve


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
        from pgclip.application.bootstrap import reachable_url

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
    from pgclip.core.settings import mask_url

    return mask_url(url)


# --- pgclip migrate / config ------------------------------------------------------


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.application.bootstrap import migrate
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


# --- wiring ------------------------------------------------------------------------


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
    ing.add_argument("-v", "--verbose", action="store_true", help="list the image library's warnings, file by file")
    ing.add_argument("--batch-files", type=_positive, metavar="N",
                     help="files per transaction (default 64): a killed run keeps every batch it committed")
    ing.set_defaults(handler=cmd_ingest)

    wrk = sub.add_parser("worker", help="embed queued images (run as many as you like, on any host)")
    wrk.add_argument("--concurrency", type=_positive, default=1, metavar="N", help="run N worker processes")
    wrk.add_argument("--until-empty", action="store_true", help="exit when no job is left to do")
    wrk.add_argument("--model", metavar="NAME", help="embed for this model instead of PGCLIP_MODEL (a re-embed)")
    wrk.add_argument("--pretrained", metavar="TAG_OR_PATH", help="its weights, instead of PGCLIP_PRETRAINED")
    wrk.add_argument("--watchdog", type=float, default=120.0, metavar="SECONDS",
                     help="a worker that holds jobs and makes no progress this long is hung: it prints a thread "
                          "dump and exits with status 3 to be restarted (default 120; 0 = off)")
    wrk.set_defaults(handler=cmd_worker)

    st = sub.add_parser("status", help="queue counts, throughput, ETA and failures")
    st.add_argument("--json", action="store_true")
    st.add_argument("--failures", type=_positive, default=20, metavar="N", help="show the N most recent failures")
    st.set_defaults(handler=cmd_status)

    rf = sub.add_parser("retry-failed", help="re-queue failed jobs")
    rf.set_defaults(handler=cmd_retry_failed)

    rm = sub.add_parser("rm", help="delete images (and their captions, vectors, queue rows)")
    rm.add_argument("ids", nargs="+", type=_positive, metavar="ID")
    rm.set_defaults(handler=cmd_rm)

    ed = sub.add_parser("edit", help="change an image's metadata, date or captions (vectors untouched)")
    ed.add_argument("id", type=_positive, metavar="ID")
    ed.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="set a metadata key (JSON values allowed)")
    ed.add_argument("--unset", action="append", default=[], metavar="KEY", help="remove a metadata key")
    ed.add_argument("--taken-at", metavar="ISO", help="set the date taken ('' clears it)")
    ed.add_argument("--caption-add", action="append", default=[], metavar="TEXT")
    ed.add_argument("--caption-rm", action="append", default=[], type=_positive, metavar="N", help="caption id to remove")
    ed.set_defaults(handler=cmd_edit)

    dup = sub.add_parser("duplicates", help="groups of near-identical images (resized, re-encoded copies)")
    dup.add_argument("--threshold", type=float, default=0.95, help="cosine similarity, 0.5-1 (default 0.95)")
    dup.add_argument("--json", action="store_true")
    dup.set_defaults(handler=cmd_duplicates)

    srv = sub.add_parser("serve", help="serve the HTTP API and web page")
    srv.add_argument("--host", help="address to listen on (default PGCLIP_HOST, 127.0.0.1)")
    srv.add_argument("--port", type=_positive, help="port (default PGCLIP_PORT, 8000)")
    srv.set_defaults(handler=cmd_serve)

    se = sub.add_parser("search", help="search from the command line (same search as the API)")
    se.add_argument("text", nargs="?", help='query text; composable: \'"2:golden retriever" + ./pool.jpg - fruit\'')
    se.add_argument("--image", metavar="PATH", help="search by an image file (added to the text, if any)")
    se.add_argument("--caption", metavar="WORDS", help="caption full-text query (websearch syntax)")
    se.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                    help="e.g. orientation=landscape, min_width=800, taken_after=2020-01-01, metadata.tag=animal")
    se.add_argument("-k", type=_positive, default=10, help="number of results (1-100)")
    se.add_argument("--fusion", choices=["rrf", "weighted"], default="rrf")
    se.add_argument("--order", choices=["relevance", "newest", "oldest"], default="relevance")
    se.add_argument("--min-similarity", type=float, default=None)
    se.add_argument("--json", action="store_true")
    se.set_defaults(handler=cmd_search)

    from pgclip.cli.models import add_model_parsers
    from pgclip.cli.evaluate import add_eval_parser

    add_model_parsers(sub, _positive)
    add_eval_parser(sub)

    demo = sub.add_parser("demo", help="database + demo collection + embeddings, then serve the page")
    demo.add_argument("--test-model", action="store_true",
                      help="use the random-weight test model (when real CLIP weights cannot be loaded)")
    demo.add_argument("--no-serve", action="store_true", help="stop once every demo image is embedded")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    # Library warnings (open_clip announces random test weights on the root logger) are
    # not the user's business; `pgclip worker` sets up its own logging.
    logging.getLogger().setLevel(logging.ERROR)
    try:
        settings = Settings.from_env()
        return handler(args, settings) or 0
    except PgclipError as exc:
        print(f"pgclip: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # A lost database connection that no command caught: one line, not a traceback.
        from pgclip.db.engine import translate_driver_error

        translated = translate_driver_error(exc)
        if translated is None:
            raise
        print(f"pgclip: error: {translated}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
