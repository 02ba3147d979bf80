"""Running syncs as `pgclip sync` and `pgclip search --in` do: getting to a database (a fresh
one is migrated), syncing (``application/sync.py``), embedding the folder's images in this
process, and ``--watch``.

Embedding runs the worker loop (``workers/loop.py``) in a thread of this process, with the
encoder the caller may reuse afterwards (``search --in`` encodes its query with it: one model
load). It waits until the folder's images have no open job left, not until its own loop has
done them: other workers running meanwhile take some of the jobs, and that is fine. The
folder's jobs go to the head of the queue first, so an older backlog does not come first.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from pgclip.application import sync as folder_sync
from pgclip.application.sync_apply import sync
from pgclip.application.bootstrap import migrate, reachable_url, storing_model, worker_model
from pgclip.core.errors import PgclipError
from pgclip.core.settings import Settings
from pgclip.db import files
from pgclip.db import migrate as migrations
from pgclip.db.engine import connect
from pgclip.db.models import ModelRow

if TYPE_CHECKING:
    from pgclip.workers.encoder import ClipEncoder

EMBED_POLL_SECONDS = 0.2  # how often the folder's open jobs are counted while embedding
WATCH_DEBOUNCE_MS = 1000  # changes within this long of each other are one sync
WATCH_STEP_MS = 200  # a batch of changes ends after this long without another


def usable_database(settings: Settings) -> str:
    """The database URL, migrated if it is fresh (no pgclip schema at all), so that `pgclip
    search --in` works from a fresh clone with no other command. A database at another
    revision is not touched: that stays `pgclip migrate`'s decision (SchemaNotReady says so)."""
    url = reachable_url(settings)
    with connect(url, vector=False) as conn:
        fresh = migrations.current_revision(conn) is None
    if fresh:
        migrate(settings)
    with connect(url) as conn:
        migrations.require_head(conn)
    return url


@dataclasses.dataclass
class FolderSync:
    """Syncs of one folder into one database, for one model; the encoder is loaded the first
    time there is something to embed, and kept (``encoder`` may be handed in, or read after)."""

    settings: Settings
    url: str
    model: ModelRow
    root: Path
    embed: bool = True
    keep_missing: bool = False
    forget_missing: bool = True  # False: files marked missing by an earlier sync stay so
    encoder: ClipEncoder | None = None
    note: str | None = None  # the model is the active one, not the configured one (see storing_model)

    @classmethod
    def open(cls, settings: Settings, folder: str, **options) -> FolderSync:
        """Check the folder, reach (and if fresh, migrate) the database, find the model: the one
        this process embeds with when it embeds (refused, as a worker's, if it is not registered
        beside an active one), else the one ingest would queue for."""
        root = folder_sync.sync_root(folder)
        url = usable_database(settings)
        if options.get("embed", True):
            return cls(settings, url, worker_model(url, settings), root, **options)
        model, note = storing_model(url, settings, quick=True)
        return cls(settings, url, model, root, note=note, **options)

    @property
    def folder(self) -> str:
        """The search's ``folder`` filter for this folder."""
        return folder_sync.folder_filter(self.root)

    def run(self, *, dry_run: bool = False, progress: Callable[[int], None] | None = None,
            on_total: Callable[[int], None] | None = None,
            embed_progress: Callable[[int, int], None] | None = None) -> folder_sync.SyncReport:
        """One sync, then (with ``embed``) embedding until the folder's images have no open
        job. ``embed_progress(done, total)`` as images get embedded."""
        with connect(self.url, role="sync", autocommit=True) as conn:
            report = sync(
                conn, self.root, model_id=self.model.id, keep_missing=self.keep_missing,
                forget_missing=self.forget_missing, dry_run=dry_run,
                ts_config=self.settings.text_search_config, progress=progress, on_total=on_total,
            )
        if self.embed and not dry_run:
            report.embedded, report.failed = self.embed_folder(embed_progress)
        return report

    def embed_folder(self, on_progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
        """Embed the folder's images that the model lacks, in this process (and by whatever
        workers run elsewhere). Returns (embedded meanwhile, failed)."""
        with connect(self.url, role="sync", autocommit=True) as conn:
            with conn.transaction():
                files.enqueue_folder(conn, self.folder, self.model.id)
                files.prioritise(conn, self.folder, self.model.id)
            start = files.progress(conn, self.folder, self.model.id)
            if start.open == 0:
                return 0, start.failed
            if on_progress:
                on_progress(0, start.open)
            now = self._work(conn, start.open, on_progress)
        return start.open - now.open, now.failed

    def _work(self, conn: psycopg.Connection, total: int,
              on_progress: Callable[[int, int], None] | None) -> files.Progress:
        from pgclip.workers.encoder import ClipEncoder
        from pgclip.workers.loop import Worker

        if self.encoder is None:
            self.encoder = ClipEncoder.from_settings(self.settings, worker=True)
        self.encoder.load()
        s = self.settings
        worker = Worker(self.url, encoder=self.encoder, model=self.model, batch_size=s.batch_size,
                        lease_seconds=s.lease_seconds, max_attempts=s.max_attempts,
                        model_threads=self.encoder.model_threads)
        failure: list[BaseException] = []
        # An Event, not Thread.join: a join(timeout) that Ctrl-C interrupts marks a running thread
        # stopped on Python 3.11 (bpo-45274's fix), so the next join returned at once and the
        # process left before the worker gave its batch back (16 jobs left leased).
        ended = threading.Event()

        def run() -> None:
            try:
                worker.run()
            except BaseException as exc:  # reported by the waiting thread
                failure.append(exc)
            finally:
                ended.set()

        thread = threading.Thread(target=run, name="sync-worker", daemon=True)
        thread.start()
        try:
            while True:
                now = files.progress(conn, self.folder, self.model.id)
                if on_progress:
                    on_progress(max(0, total - now.open), total)
                if now.open == 0:
                    return now
                if ended.is_set():
                    if failure and isinstance(failure[0], PgclipError):
                        raise failure[0]
                    raise RuntimeError("the sync's worker stopped") from (failure[0] if failure else None)
                ended.wait(EMBED_POLL_SECONDS)
        finally:
            worker.stop()  # finishes the batch in hand, gives back the rest
            ended.wait()


def watch(root: Path, on_changes: Callable[[], None], *, poll: bool = False,
          on_polling: Callable[[str], None] | None = None, stop: threading.Event | None = None) -> None:
    """Call ``on_changes()`` after each batch of changes under ``root`` until Ctrl-C (raised as
    KeyboardInterrupt) or ``stop``. inotify where the system has it, else (or with ``poll``)
    polling; ``on_polling(reason)`` says when inotify could not be used."""
    import watchfiles

    force_polling = True if poll else None
    while True:
        folder_sync.sync_root_or_refuse(root)  # gone since the sync before (inotify would wait on nothing)
        changes = watchfiles.watch(root, debounce=WATCH_DEBOUNCE_MS, step=WATCH_STEP_MS, stop_event=stop,
                                   force_polling=force_polling, raise_interrupt=True, ignore_permission_denied=True)
        while True:
            try:
                next(changes)
            except StopIteration:
                return
            except (OSError, RuntimeError) as exc:
                # The folder went away before or while it was watched (renamed, unmounted): the
                # sync's own refusal, with nothing removed.
                folder_sync.sync_root_or_refuse(root)
                # inotify unavailable, or out of watches (a tree bigger than fs.inotify.max_user_watches):
                # the same changes, found by polling.
                if force_polling:
                    raise
                force_polling = True
                if on_polling:
                    on_polling(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
                break
            on_changes()
