"""``pgclip ingest``: files and folders (plus an optional caption manifest) into the database.

Each batch is one transaction: image rows, their bytes, captions, metadata and
queue rows together, with one NOTIFY for the batch (delivered at commit). The
sha256 of the bytes identifies an image, so ingesting a tree again adds
nothing and enqueues nothing; it only adds captions that are new.

Files are checked here as far as their pixels decode (JPEGs at 1/8 scale, which
still reads every byte): an empty, truncated or over-sized file is rejected with
its reason and never stored. Full decoding is the workers' job; bytes that fail
there (stored by an older version, restored from a dump, inserted by hand) end
``failed`` in the queue with their reason.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

from pgclip.db import images as db_images
from pgclip.db import queue
from pgclip.errors import InvalidInput
from pgclip.workers.decode import ImageInfo, ImageRejected, probe
from pgclip.workers.manifest import Entry, Manifest

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
BATCH_FILES = 64  # files per transaction: big enough to amortise round-trips, small enough to show progress
READ_THREADS = 4  # reading + header parsing overlap with the database round-trips


@dataclasses.dataclass
class IngestReport:
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

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rejected"] = [{"path": p, "reason": r} for p, r in self.rejected]
        return d


def discover(paths: Iterable[Path]) -> tuple[list[Path], int, list[tuple[str, str]]]:
    """Image files under ``paths`` (recursive, sorted), the count of other files, and paths that do not exist."""
    found: list[Path] = []
    skipped = 0
    missing: list[tuple[str, str]] = []
    for root in paths:
        root = Path(root).expanduser()
        if root.is_file():
            if root.suffix.lower() in IMAGE_SUFFIXES:
                found.append(root)
            else:
                skipped += 1
            continue
        if not root.is_dir():
            missing.append((str(root), "no such file or directory"))
            continue
        for folder, dirs, files in os.walk(root, onerror=lambda e: missing.append((e.filename, e.strerror))):
            dirs.sort()
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in sorted(files):
                if name.startswith("."):
                    continue
                if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    found.append(Path(folder) / name)
                else:
                    skipped += 1
    return found, skipped, missing


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
        return [key for key in self.manifest.entries if key not in self.used]


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def new_image(data: bytes, info: ImageInfo, *, source: str | None, metadata: dict[str, Any]) -> db_images.NewImage:
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
    )


def _read(path: Path) -> tuple[Path, db_images.NewImage | None, str | None]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return path, None, f"cannot read: {exc.strerror or exc}"
    try:
        info = probe(data)
    except ImageRejected as exc:
        return path, None, str(exc)
    return path, new_image(data, info, source=str(path), metadata={}), None


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
) -> IngestReport:
    """Ingest image files; ``progress(n)`` is called after every n files.

    Each batch commits on its own (so a crash keeps what was done), unless the
    caller holds a transaction open: then the batches are savepoints within it.
    """
    paths = list(paths)
    if not paths and manifest is not None:
        # No folders given: ingest the files the manifest names.
        paths = [manifest.resolve(key) for key in manifest.entries]
    files, skipped, missing = discover(paths)
    report = IngestReport(skipped=skipped, rejected=list(missing))
    if manifest is not None:
        report.manifest_problems = list(manifest.problems)
        report.manifest_problem_count = manifest.problem_count
    index = _ManifestIndex(manifest)
    if on_total:
        on_total(len(files))
    with ThreadPoolExecutor(READ_THREADS) as pool:
        for batch in _batches(files, BATCH_FILES):
            probed = list(pool.map(_read, batch))
            _store_batch(conn, probed, index, report, model_id=model_id, ts_config=ts_config)
            if progress:
                progress(len(batch))
    report.manifest_missing = index.missing()
    return report


def _store_batch(
    conn: psycopg.Connection,
    probed: list[tuple[Path, db_images.NewImage | None, str | None]],
    index: _ManifestIndex,
    report: IngestReport,
    *,
    model_id: int,
    ts_config: str,
) -> None:
    good: list[tuple[Path, db_images.NewImage, Entry | None]] = []
    for path, image, reason in probed:
        if image is None:
            report.rejected.append((str(path), reason or "rejected"))
            continue
        entry = index.lookup(path)
        if entry and entry.metadata:
            image = dataclasses.replace(image, metadata={**image.metadata, **entry.metadata})
        good.append((path, image, entry))
    if not good:
        return
    with conn.transaction():
        added, existing = db_images.insert_images(conn, [image for _, image, _ in good])
        ids = {**existing, **added}
        db_images.merge_metadata(
            conn, {existing[img.sha256]: entry.metadata for _, img, entry in good if entry and img.sha256 in existing}
        )
        captions = [(ids[img.sha256], text) for _, img, entry in good if entry for text in entry.captions]
        report.captions_added += db_images.add_captions(conn, captions, ts_config=ts_config)
        report.enqueued += queue.enqueue(conn, sorted(added.values()), model_id)
        # Known images never queued for this model (ingested under another one) are queued now.
        report.enqueued += queue.enqueue(conn, sorted(existing.values()), model_id, only_unqueued=True)
    report.added += len(added)
    report.present += len(existing)
    report.image_ids.extend(sorted(ids.values()))


def require_paths(paths: list[Path], manifest: Manifest | None) -> None:
    if not paths and manifest is None:
        raise InvalidInput("give at least one file or folder to ingest (or --captions with a manifest)")
