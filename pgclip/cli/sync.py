"""`pgclip sync DIR`: a folder's new, changed, moved and deleted files reflected in the
database (``application/sync.py``), once or, with ``--watch``, as they change."""

from __future__ import annotations

import argparse
import signal
import sys

from pgclip.cli.common import database_lost, usage_error
from pgclip.cli.common import out as _out
from pgclip.cli.common import progress as _progress
from pgclip.core.settings import Settings


def add_sync_parser(sub: argparse._SubParsersAction) -> None:
    sy = sub.add_parser("sync", help="bring a folder up to date in the database: new, changed, moved and deleted "
                                     "files (`pgclip search --in DIR` does it before searching)")
    sy.add_argument("folder", metavar="DIR", help="the folder (recursive)")
    sy.add_argument("--dry-run", action="store_true",
                    help="list what would be added, updated, moved and removed, and write nothing")
    sy.add_argument("--keep-missing", action="store_true",
                    help="keep deleted files' images, marked missing (they leave `search --in`), instead of "
                         "removing them")
    sy.add_argument("--embed", action="store_true",
                    help="embed the folder's new images in this process, with a progress bar (no worker needed)")
    sy.add_argument("--watch", action="store_true", help="keep syncing as files change, until Ctrl-C")
    sy.add_argument("--poll", action="store_true",
                    help="with --watch: look for changes by polling instead of inotify (network file systems)")
    sy.add_argument("--json", action="store_true", help="print each sync's report as JSON")
    sy.add_argument("-v", "--verbose", action="store_true", help="list every file added, updated, moved, removed")
    sy.set_defaults(handler=cmd_sync)


def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    """Exit status: 0 in sync, 1 some files could not be stored (listed), 2 usage error (nothing
    written), 3 the database unreachable or lost midway (what was committed stays)."""
    import logging

    from pgclip.application.sync_run import FolderSync, watch
    from pgclip.core.errors import InvalidInput
    from pgclip.workers.ingest_files import one_line

    if args.poll and not args.watch:
        return usage_error("--poll goes with --watch")
    if args.watch and args.dry_run:
        return usage_error("--dry-run writes nothing, so there is nothing to --watch")
    logging.getLogger("psycopg").setLevel(logging.CRITICAL)  # a lost connection is reported below, once
    try:
        try:
            folder = FolderSync.open(settings, args.folder, embed=args.embed, keep_missing=args.keep_missing)
        except InvalidInput as exc:
            return usage_error(str(exc))
        if folder.note:
            print(f"pgclip: {folder.note}", file=sys.stderr)
        if not args.watch:
            return 1 if _sync_once(folder, args).rejected else 0
        signal.signal(signal.SIGTERM, _interrupted)  # systemd, `docker stop`: as Ctrl-C
        try:
            _sync_once(folder, args)
            watch(folder.root, lambda: _sync_once(folder, args, quiet=True), poll=args.poll,
                  on_polling=lambda why: print(f"pgclip: inotify unavailable ({one_line(why)}); polling instead",
                                               file=sys.stderr))
        except KeyboardInterrupt:
            pass
        _out(f"stopped watching {one_line(folder.folder)}")
        return 0
    except InvalidInput as exc:  # the folder went away (renamed, unmounted) after the sync began
        print(f"pgclip: error: {one_line(str(exc))}", file=sys.stderr)
        if args.watch:
            print(f"pgclip: stopped watching {one_line(args.folder)}; `pgclip sync` it again once it is back",
                  file=sys.stderr)
        return 1
    except Exception as exc:
        return database_lost(exc)


def _sync_once(folder, args: argparse.Namespace, *, quiet: bool = False):
    """One sync; its report printed (under --watch, only when something changed)."""
    report = _run(folder, dry_run=args.dry_run)
    if quiet and not report.changes and not report.rejected and not report.embedded:
        return report
    print_report(report, as_json=args.json, verbose=args.verbose or args.dry_run)
    return report


def print_report(report, *, as_json: bool = False, verbose: bool = False, file=None) -> None:
    """A sync's summary line, the files it could not store, and (``verbose``) every change."""
    import json

    from pgclip.workers.ingest_files import one_line

    write = _out if file is None else (lambda line: print(line, file=file))
    if as_json:
        write(json.dumps(report.as_dict(), indent=2))
        return
    if verbose:
        for label, names in (("add", report.added), ("update", report.updated), ("remove", report.removed),
                             ("mark missing", report.missing)):
            for name in names:
                write(f"  {label} {one_line(name)}")
        for old, new in report.moved:
            write(f"  move {one_line(old)} -> {one_line(new)}")
    for path, reason in report.rejected:
        write(f"  rejected {one_line(path)}: {one_line(reason)}")
    write(one_line(report.summary()))


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def synced_folder(folder: str, settings: Settings):
    """`pgclip search --in DIR`: sync DIR and embed what it lacks, in this process. Returns the
    search's folder filter and the encoder loaded meanwhile (None when nothing needed it).
    What changed is said on stderr (stdout is the search's); a folder in sync says nothing."""
    from pgclip.application.sync_run import FolderSync

    synced = FolderSync.open(settings, folder, embed=True, forget_missing=False)
    report = _run(synced)
    if report.changes or report.rejected or report.embedded or report.failed:
        print_report(report, file=sys.stderr)
    return synced.folder, synced.encoder


def _run(folder, *, dry_run: bool = False):
    """One sync with its progress bars on stderr: files stored, then images embedded."""
    with _progress(None, "file", "sync") as bar, _progress(None, "img", "embed") as embed_bar:
        def embedding(done: int, total: int) -> None:
            embed_bar.total = total
            embed_bar.n = done
            embed_bar.refresh()

        return folder.run(dry_run=dry_run, progress=bar.update, on_total=lambda n: setattr(bar, "total", n),
                          embed_progress=embedding)
