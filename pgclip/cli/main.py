"""The ``pgclip`` command: the parser (each module of this package adds its group of
subcommands) and ``main``, where every user mistake ends as one line on stderr
(``pgclip: error: ...``) and exit status 1; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from pgclip import __version__
from pgclip.cli.common import out as _out
from pgclip.cli.evaluate import add_eval_parser
from pgclip.cli.exchange import add_exchange_parsers
from pgclip.cli.heatmap import add_heatmap_parsers
from pgclip.cli.models import add_model_parsers
from pgclip.cli.queue import add_queue_parsers
from pgclip.cli.search import add_search_parsers
from pgclip.cli.serve import add_serve_parsers
from pgclip.cli.sync import add_sync_parser
from pgclip.cli.tags import add_tag_parsers
from pgclip.core.errors import PgclipError
from pgclip.core.settings import Settings

Handler = Callable[[argparse.Namespace, Settings], int | None]


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
    from pgclip.application.bootstrap import migrate_schema, storing_model
    from pgclip.db.migrate import head_revision

    url = migrate_schema(settings)
    model, note = storing_model(url, settings)  # a stray PGCLIP_MODEL (a dropped model) is not registered again
    _out(f"schema at {head_revision()} in {_masked(url)}")
    _out(f"model {model.label}: dimension {model.dimension}, {model.state}")
    if note:
        print(f"pgclip: {note}", file=sys.stderr)
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

    add_queue_parsers(sub)
    add_search_parsers(sub)
    add_sync_parser(sub)
    add_serve_parsers(sub)
    add_model_parsers(sub)
    add_eval_parser(sub)
    add_exchange_parsers(sub)
    add_tag_parsers(sub)
    add_heatmap_parsers(sub)
    return parser


# Commands that run until stopped: their log lines name the process, and pgclip's own INFO
# lines (a worker starting, the database going away and coming back) are part of their log.
LONG_RUNNING = {"worker": "pgclip-worker", "serve": "pgclip-api", "demo": "pgclip-demo"}


def _configure_logging(command: str, settings: Settings) -> None:
    from pgclip.core.logs import configure

    if command in LONG_RUNNING:
        configure(settings.log_format, process=LONG_RUNNING[command], level=logging.WARNING,
                  pgclip_level=logging.INFO)
    else:
        configure(settings.log_format, process="pgclip")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    # Library warnings (open_clip announces random test weights on the root logger) are
    # not the user's business; until the settings say how to log, only errors pass.
    logging.getLogger().setLevel(logging.ERROR)
    try:
        settings = Settings.from_env()
        _configure_logging(args.command, settings)
        return handler(args, settings) or 0
    except PgclipError as exc:
        print(f"pgclip: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `pgclip status | head -1`: the reader left. Nothing to say; Python's own flush at exit
        # would fail again on the closed pipe, so stdout goes to /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command that a closed pipe stopped
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
