"""Writing a sync's plan (``application/sync.py`` makes it): ``sync`` is the whole of one sync.

Syncs take turns (an advisory lock held across the sync), and the writes commit in steps:
the rows of touched, moved, repointed and gone files in one transaction, then each batch of
files to store (ingested and pointed at in one transaction), and each image that takes new
bytes in place in its own. A sync that is killed keeps what it committed, and the next one
finishes the job (what it did not get to is still new or changed on disk).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

from pgclip.application.sync import Plan, Seen, SyncReport, dry_report, plan, to_remove
from pgclip.db import files
from pgclip.db.files import FileRow
from pgclip.workers.decode import ImageRejected, probe
from pgclip.workers.ingest import BATCH_FILES, ingest, new_image
from pgclip.workers.ingest_files import Unreadable, read_file, readable_name, stored_name


def apply(
    conn: psycopg.Connection, p: Plan, *, model_id: int, keep_missing: bool = False, forget_missing: bool = True,
    ts_config: str = "english", progress: Callable[[int], None] | None = None, batch_files: int = BATCH_FILES,
) -> SyncReport:
    """Write the plan (``conn`` in autocommit mode: each step is its own transaction).
    ``progress(n)`` after every n files stored; files to store are ingested for ``model_id``.
    Files gone from disk are removed, or with ``keep_missing`` marked missing; without
    ``forget_missing`` those marked missing before stay so (`search --in` removes nothing
    that `sync --keep-missing` kept)."""
    report = SyncReport(p.folder, unchanged=p.unchanged + len(p.touched), still_rejected=p.still_rejected,
                        rejected=list(p.unreadable))
    released: list[int] = []  # images that rows let go of
    released_videos: list[int] = []
    store: list[tuple[Seen, str, FileRow | None]] = [(file, digest, None) for file, digest in p.added]
    replace: list[tuple[FileRow, Seen, str]] = []

    with conn.transaction():
        updates = [file.state(image_id=row.image_id, video_id=row.video_id, owns_image=row.owns_image,
                              sha256=row.sha256, problem=row.problem, row=row)
                   for row, file in (*p.touched, *p.moved)]
        for row, file, digest in p.changed:
            target = p.known(file, digest)
            if target is not None and target not in (row.image_id, row.video_id):
                # The new bytes are a stored image (or video): the path points there.
                updates.append(file.pointing(target, owns=False, sha256=digest, row=row))
                report.updated.append(readable_name(file.path))
                _let_go(row, released, released_videos)
            elif row.image_id is None:
                store.append((file, digest, row))  # rejected before, or a video: stored anew
            else:
                replace.append((row, file, digest))
        files.update(conn, updates)
        files.rename_sources(conn, [(row.image_id, row.path, *stored_name(file.path))
                                    for row, file in p.moved if row.image_id is not None])
        files.rename_sources(conn, [(row.video_id, row.path, *stored_name(file.path))
                                    for row, file in p.moved if row.video_id is not None], videos=True)
        report.moved = [(row.path, readable_name(file.path)) for row, file in p.moved]
        if keep_missing:
            newly = [row for row in p.gone if row.missing_since is None]
            files.mark_missing(conn, [row.id for row in newly])
            report.missing = [row.path for row in newly]
        else:
            gone = to_remove(p, forget_missing)
            files.remove(conn, [row.id for row in gone])
            report.removed = [row.path for row in gone]
            for row in gone:
                _let_go(row, released, released_videos)
        report.images_deleted += len(files.release_images(conn, released))
        files.release_videos(conn, released_videos)

    # An image that is its file's alone takes the new bytes in place; otherwise the file gets
    # an image of its own (stored below).
    if replace:
        with conn.transaction():
            alone = {row.image_id for row, _, _ in replace if row.owns_image} - files.shared(
                conn, [row.image_id for row, _, _ in replace if row.image_id is not None])
        for row, file, digest in replace:
            if row.image_id in alone:
                _replace(conn, row, file, digest, report)
                if progress:
                    progress(1)
            else:
                store.append((file, digest, row))
    for batch in _batches(store, batch_files):
        _store(conn, batch, p, report, model_id=model_id, ts_config=ts_config)
        if progress:
            progress(len(batch))
    return report


def _replace(conn: psycopg.Connection, row: FileRow, file: Seen, digest: str, report: SyncReport) -> None:
    """The file's own image takes its new bytes (one transaction per file)."""
    name = readable_name(file.path)
    try:
        data = read_file(file.path)
        if hashlib.sha256(data).hexdigest() != digest:
            report.rejected.append((name, "changed while syncing: the next sync takes it"))
            return
        image = new_image(data, probe(data), source=None, metadata={})
    except (Unreadable, ImageRejected) as exc:
        with conn.transaction():  # no longer an image: the file keeps its reason, the image goes
            files.update(conn, [file.state(image_id=None, owns_image=False, sha256=digest, problem=str(exc), row=row)])
            report.images_deleted += len(files.release_images(conn, [row.image_id]))  # type: ignore[list-item]
        report.rejected.append((name, str(exc)))
        return
    with conn.transaction():
        files.replace_bytes(conn, row.image_id, image, image.metadata)  # type: ignore[arg-type]
        files.update(conn, [file.state(image_id=row.image_id, owns_image=True, sha256=digest, row=row)])
    report.updated.append(name)


def _let_go(row: FileRow, images: list[int], videos: list[int]) -> None:
    """The row no longer references its image or video: one that came in through sync is released."""
    if row.owns_image and row.image_id is not None:
        images.append(row.image_id)
    if row.owns_image and row.video_id is not None:
        videos.append(row.video_id)


def _store(
    conn: psycopg.Connection, batch: list[tuple[Seen, str, FileRow | None]], p: Plan, report: SyncReport, *,
    model_id: int, ts_config: str,
) -> None:
    """Ingest a batch of files and point their rows at the images, in one transaction."""
    with conn.transaction():
        ingested = ingest(conn, [file.path for file, _, _ in batch], model_id=model_id, ts_config=ts_config)
        rejected = dict(ingested.rejected)
        ids = files.images_by_sha256(conn, [digest for file, digest, _ in batch if not file.is_video])
        videos = files.videos_by_sha256(conn, [digest for file, digest, _ in batch if file.is_video])
        new_rows, updates, released, released_videos = [], [], [], []
        for file, digest, row in batch:
            name = readable_name(file.path)
            target = (videos if file.is_video else ids).get(digest)
            if name in rejected:
                state = file.state(image_id=None, owns_image=False, sha256=digest, problem=rejected[name], row=row)
                report.rejected.append((name, rejected[name]))
            elif target is not None:
                state = file.pointing(target, owns=p.known(file, digest) is None, sha256=digest, row=row)
                (report.added if row is None else report.updated).append(name)
            else:  # ingest read other bytes than the scan did
                report.rejected.append((name, "changed while syncing: the next sync takes it"))
                continue
            if row is None:
                new_rows.append(state)
            else:
                updates.append(state)
                if (row.image_id, row.video_id) != (state.image_id, state.video_id):
                    _let_go(row, released, released_videos)
        files.add(conn, new_rows)
        files.update(conn, updates)
        report.images_deleted += len(files.release_images(conn, released))
        files.release_videos(conn, released_videos)


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def sync(
    conn: psycopg.Connection, root: Path, *, model_id: int, keep_missing: bool = False, forget_missing: bool = True,
    dry_run: bool = False, ts_config: str = "english", progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> SyncReport:
    """Plan and apply a sync of ``root`` (``conn`` in autocommit mode), holding the sync lock."""
    files.lock(conn)
    try:
        p = plan(conn, root)
        if dry_run:
            return dry_report(p, keep_missing=keep_missing, forget_missing=forget_missing)
        if on_total:
            on_total(len(p.added) + len(p.changed))
        return apply(conn, p, model_id=model_id, keep_missing=keep_missing, forget_missing=forget_missing,
                     ts_config=ts_config, progress=progress)
    finally:
        if not conn.closed and not conn.broken:
            files.unlock(conn)
