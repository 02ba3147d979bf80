"""``pgclip ingest``: files and folders (plus an optional caption manifest) into the database.

Each batch is one transaction: image rows, their bytes, captions, metadata and
queue rows together, with one NOTIFY for the batch (delivered at commit). The
sha256 of the bytes identifies an image, so ingesting a tree again adds
nothing and enqueues nothing; it only adds captions that are new. A run that
is killed keeps the batches it committed, and the same command again adds the
rest.

Files are checked here as far as their pixels decode (JPEGs at 1/8 scale, which
still reads every byte): an empty, truncated or over-sized file is rejected with
its reason and never stored. Full decoding is the workers' job; bytes that fail
there (stored by an older version, restored from a dump, inserted by hand) end
``failed`` in the queue with their reason.

No single file ends a run: what cannot be found, opened, read, decoded or
stored is rejected with its reason (see ``ingest_files``). Only the database
going away ends it early, as :class:`IngestInterrupted`, saying how far it got.

Videos (``workers/video.py``) are read one at a time in this thread, after their
batch's images: each is its own transaction (the video, its bytes, its sampled
frames as images, their jobs), so a video that turns out damaged halfway through
its frames leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

from pgclip.core.errors import DatabaseUnavailable, InvalidInput
from pgclip.db import images as db_images
from pgclip.db import queue
from pgclip.db.engine import driver_message
from pgclip.workers.decode import ImageInfo, ImageRejected, captured_warnings, probe, route_warnings
from pgclip.workers.ingest_files import IMAGE_SUFFIXES, Unreadable, discover, read_file, readable_name, stored_name
from pgclip.workers.manifest import Entry, Manifest
from pgclip.workers.video import MAX_VIDEO_BYTES, VIDEO_SUFFIXES, VideoOptions, VideoRejected, store_video

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "BATCH_FILES", "IngestInterrupted", "IngestReport", "discover", "ingest", "new_image"]

BATCH_FILES = 64  # files per transaction: big enough to amortise round-trips, small enough to show progress
READ_THREADS = 4  # reading + header parsing overlap with the database round-trips


class IngestInterrupted(DatabaseUnavailable):
    """The database went away (or failed) mid-run; the batches committed before stay.

    The message is the one line for the user; ``report`` holds what was done.
    """

    def __init__(self, message: str, report: IngestReport) -> None:
        super().__init__(message)
        self.report = report


class IngestStopped(KeyboardInterrupt):
    """Ctrl-C mid-run; the batches committed before stay. The message is the one line for the user."""

    def __init__(self, message: str, report: IngestReport) -> None:
        super().__init__(message)
        self.report = report


@dataclasses.dataclass
class IngestReport:
    """What a run did; paths are readable names (undecodable bytes as ``\\xNN``)."""

    added: int = 0
    present: int = 0
    skipped: int = 0  # files that are not images by their extension
    rejected: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    captions_added: int = 0
    enqueued: int = 0
    manifest_missing: list[str] = dataclasses.field(default_factory=list)
    manifest_problems: list[str] = dataclasses.field(default_factory=list)
    manifest_problem_count: int = 0
    image_ids: list[int] = dataclasses.field(default_factory=list)
    # (path, warning) for what the image library warned about while reading a file
    # (corrupt EXIF, odd TIFF tags, ...): the file was still judged on its pixels.
    warnings: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    files: int = 0  # image and video files found (the run's total)
    committed_files: int = 0  # of those, files whose outcome is final (their batch committed)
    videos_added: int = 0
    videos_present: int = 0  # videos whose bytes were stored already (nothing added)
    frames_added: int = 0  # images made from the added videos' frames (not counted in `added`)
    video_ids: list[int] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rejected"] = [{"path": p, "reason": r} for p, r in self.rejected]
        d["warnings"] = [{"path": p, "warning": w} for p, w in self.warnings]
        return d


@dataclasses.dataclass(frozen=True)
class _Probed:
    """One file after reading: the image to store, or the reason it cannot be."""

    path: Path
    image: db_images.NewImage | None
    reason: str | None
    warnings: tuple[str, ...] = ()
    video: bool = False  # a video: read and stored later, one at a time, in the calling thread


class _ManifestIndex:
    """Finds a file's manifest entry by resolved path, else by file name (Flickr30k lists bare names)."""

    def __init__(self, manifest: Manifest | None) -> None:
        self.manifest = manifest
        self.by_path: dict[Path, str] = {}
        self.by_name: dict[str, str] = {}
        self.used: set[str] = set()
        if manifest:
            for key in manifest.entries:
                self.by_path[_resolved(manifest.resolve(key))] = key
                self.by_name.setdefault(Path(key).name, key)

    def lookup(self, path: Path) -> Entry | None:
        if not self.manifest:
            return None
        key = self.by_path.get(_resolved(path)) or self.by_name.get(path.name)
        if key is None:
            return None
        self.used.add(key)
        return self.manifest.entries[key]

    def missing(self) -> list[str]:
        if not self.manifest:
            return []
        return [readable_name(key) for key in self.manifest.entries if key not in self.used]


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):  # RuntimeError: a symlink loop (Python 3.11); ValueError: a NUL
        return path.absolute()


def new_image(
    data: bytes, info: ImageInfo, *, source: str | None, metadata: dict[str, Any], source_bytes: bytes | None = None
) -> db_images.NewImage:
    """The row to store for probed bytes: EXIF facts into ``metadata``, given metadata winning."""
    exif = {
        "camera_make": info.camera_make,
        "camera_model": info.camera_model,
        "gps_latitude": info.gps_latitude,
        "gps_longitude": info.gps_longitude,
        "exif_orientation": info.orientation,
    }
    merged = {k: v for k, v in exif.items() if v is not None} | metadata
    return db_images.NewImage(
        sha256=info.sha256, source=source, byte_size=len(data), width=info.width, height=info.height,
        format=info.format, mime=info.mime, taken_at=info.taken_at, metadata=merged, data=data,
        source_bytes=source_bytes,
    )


def _read(path: Path) -> _Probed:
    """Read and probe one file; whatever goes wrong is this file's reason, never the run's end."""
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return _Probed(path, None, None, video=True)  # READ_THREADS whole videos in memory at once would be too many
    with captured_warnings() as warned:
        try:
            data = read_file(path)
            info = probe(data)
            source, source_bytes = stored_name(path)
            image = new_image(data, info, source=source, metadata={}, source_bytes=source_bytes)
            return _Probed(path, image, None, tuple(warned))
        except (Unreadable, ImageRejected) as exc:
            return _Probed(path, None, str(exc), tuple(warned))
        except MemoryError:
            return _Probed(path, None, "out of memory while decoding it", tuple(warned))
        except Exception as exc:  # a bug or a library's surprise: still one file's problem
            return _Probed(path, None, f"cannot read ({type(exc).__name__}: {exc})", tuple(warned))


def _batches(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def ingest(
    conn: psycopg.Connection,
    paths: Iterable[Path],
    *,
    model_id: int,
    manifest: Manifest | None = None,
    ts_config: str = "english",
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    batch_files: int = BATCH_FILES,
    video: VideoOptions = VideoOptions(),
    stop: Callable[[], bool] | None = None,
) -> IngestReport:
    """Ingest image and video files; ``progress(n)`` is called after every n files; once
    ``stop()`` says so (the CLI's first Ctrl-C), no batch is begun and IngestStopped is raised.

    Each batch commits on its own (so a crash keeps what was done), unless the
    caller holds a transaction open: then the batches are savepoints within it;
    each video is a transaction (or savepoint) of its own. ``video``: how frames are
    sampled. Raises :class:`IngestInterrupted` when the database goes away mid-run.
    """
    paths = list(paths)
    as_files = False
    if not paths and manifest is not None:
        # No folders given: ingest the files the manifest names (files only: a folder there is an error).
        paths, as_files = [manifest.resolve(key) for key in manifest.entries], True
    files, skipped, problems = discover(paths, as_files=as_files)
    report = IngestReport(skipped=skipped, rejected=list(problems), files=len(files))
    if manifest is not None:
        report.manifest_problems = list(manifest.problems)
        report.manifest_problem_count = manifest.problem_count
    index = _ManifestIndex(manifest)
    if on_total:
        on_total(len(files))
    route_warnings()
    try:
        with ThreadPoolExecutor(READ_THREADS) as pool:
            for batch in _batches(files, batch_files):
                if stop is not None and stop():
                    raise KeyboardInterrupt
                probed = list(pool.map(_read, batch))
                _store_batch(conn, probed, index, report, model_id=model_id, ts_config=ts_config)
                for item in probed:
                    if item.video:
                        _store_video(conn, item.path, index.lookup(item.path), report, model_id=model_id,
                                     ts_config=ts_config, options=video)
                report.committed_files += len(batch)
                if progress:
                    progress(len(batch))
    except KeyboardInterrupt:
        # Asked to stop between batches, or Ctrl-C itself (a second one in the CLI): a batch in
        # hand is rolled back with the connection; those committed stay.
        raise IngestStopped(f"interrupted after committing {report.committed_files} of {report.files} files; "
                            "run the same command again to add the rest", report) from None
    report.manifest_missing = index.missing()
    return report


@dataclasses.dataclass(frozen=True)
class _Stored:
    added: dict[str, int]
    existing: dict[str, int]
    captions_added: int
    enqueued: int


def _store_batch(
    conn: psycopg.Connection,
    probed: list[_Probed],
    index: _ManifestIndex,
    report: IngestReport,
    *,
    model_id: int,
    ts_config: str,
) -> None:
    good: list[tuple[Path, db_images.NewImage, Entry | None]] = []
    for item in probed:
        if item.video:
            continue  # stored apart (_store_video)
        name = readable_name(item.path)
        report.warnings.extend((name, warning) for warning in item.warnings)
        if item.image is None:
            report.rejected.append((name, item.reason or "rejected"))
            continue
        entry = index.lookup(item.path)
        image = item.image
        if entry and entry.metadata:
            image = dataclasses.replace(image, metadata={**image.metadata, **entry.metadata})
        good.append((item.path, image, entry))
    _store(conn, good, report, model_id=model_id, ts_config=ts_config)


def _store(
    conn: psycopg.Connection,
    good: list[tuple[Path, db_images.NewImage, Entry | None]],
    report: IngestReport,
    *,
    model_id: int,
    ts_config: str,
) -> None:
    """Store a batch in one transaction; a batch the database refuses is stored file by file.

    One file's values can make a statement fail (metadata PostgreSQL cannot
    hold, say): then each file gets its own transaction, so only that file is
    rejected, with the database's reason.
    """
    if not good:
        return
    try:
        with conn.transaction():
            stored = _write(conn, good, model_id=model_id, ts_config=ts_config)
    except (psycopg.DataError, psycopg.IntegrityError, ValueError) as exc:
        if conn.closed or conn.broken:
            raise _interrupted(conn, exc, report) from exc
        if len(good) > 1:
            for one in good:
                _store(conn, [one], report, model_id=model_id, ts_config=ts_config)
            return
        report.rejected.append((readable_name(good[0][0]), f"the database refused it: {driver_message(exc)}"))
        return
    except psycopg.Error as exc:
        raise _interrupted(conn, exc, report) from exc
    report.added += len(stored.added)
    # Already present: stored before, or by another file of this batch with the same bytes (the
    # two maps are by sha256), so that added + present + skipped + rejected counts every file.
    report.present += len(good) - len(stored.added)
    report.captions_added += stored.captions_added
    report.enqueued += stored.enqueued
    report.image_ids.extend(sorted({**stored.existing, **stored.added}.values()))


def _write(
    conn: psycopg.Connection,
    good: list[tuple[Path, db_images.NewImage, Entry | None]],
    *,
    model_id: int,
    ts_config: str,
) -> _Stored:
    added, existing = db_images.insert_images(conn, [image for _, image, _ in good])
    ids = {**existing, **added}
    db_images.merge_metadata(
        conn, {existing[img.sha256]: entry.metadata for _, img, entry in good if entry and img.sha256 in existing}
    )
    captions = [(ids[img.sha256], text) for _, img, entry in good if entry for text in entry.captions]
    captions_added = db_images.add_captions(conn, captions, ts_config=ts_config)
    enqueued = queue.enqueue(conn, sorted(added.values()), model_id)
    # Known images never queued for this model (ingested under another one) are queued now.
    enqueued += queue.enqueue(conn, sorted(existing.values()), model_id, only_unqueued=True)
    return _Stored(added, existing, captions_added, enqueued)


def _store_video(
    conn: psycopg.Connection,
    path: Path,
    entry: Entry | None,
    report: IngestReport,
    *,
    model_id: int,
    ts_config: str,
    options: VideoOptions,
) -> None:
    """Read one video and store it with its frames in one transaction; a manifest entry's
    metadata and captions go to each of its frames. Any problem is this file's reason."""
    name = readable_name(path)
    try:
        data = read_file(path, max_bytes=MAX_VIDEO_BYTES)
    except Unreadable as exc:
        report.rejected.append((name, str(exc)))
        return
    source, source_bytes = stored_name(path)
    try:
        with conn.transaction():
            stored = store_video(conn, data, source=source, source_bytes=source_bytes, model_id=model_id,
                                 options=options)
            # A manifest entry describes the frames the video owns, not the images it shares
            # with another video or a picture (theirs stay as they were).
            described = stored.own
            if entry and entry.metadata:
                db_images.merge_metadata(conn, {i: entry.metadata for i in described})
            captions = [(i, text) for i in described for text in (entry.captions if entry else ())]
            report.captions_added += db_images.add_captions(conn, captions, ts_config=ts_config)
    except VideoRejected as exc:
        report.rejected.append((name, str(exc)))
        return
    except MemoryError:
        report.rejected.append((name, "out of memory while decoding it"))
        return
    except (psycopg.DataError, psycopg.IntegrityError) as exc:
        if conn.closed or conn.broken:
            raise _interrupted(conn, exc, report) from exc
        report.rejected.append((name, f"the database refused it: {driver_message(exc)}"))
        return
    except psycopg.Error as exc:
        raise _interrupted(conn, exc, report) from exc
    except Exception as exc:  # a bug or a library's surprise: still one file's problem
        report.rejected.append((name, f"cannot read ({type(exc).__name__}: {exc})"))
        return
    if stored.created:
        report.videos_added += 1
        report.frames_added += len(stored.own)
    else:
        report.videos_present += 1
    report.enqueued += stored.enqueued
    report.video_ids.append(stored.video_id)


def _interrupted(conn: psycopg.Connection, exc: BaseException, report: IngestReport) -> IngestInterrupted:
    done = f"after committing {report.committed_files} of {report.files} files"
    state = getattr(exc, "sqlstate", None) or ""
    # A crash or shutdown reaches the client as a broken connection, or first as 08xxx / 57Pxx.
    if conn.closed or conn.broken or state.startswith(("08", "57P")):
        what = "database connection lost"
    else:
        what = f"database error ({driver_message(exc)})"
    return IngestInterrupted(f"{what} {done}; run the same command again to add the rest", report)


def require_paths(paths: list[Path], manifest: Manifest | None) -> None:
    if not paths and manifest is None:
        raise InvalidInput("give at least one file or folder to ingest (or --captions with a manifest)")
