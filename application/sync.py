"""`pgclip sync DIR`, and the first half of `pgclip search --in DIR`: a folder's files and the
database brought into agreement.

A scan lists the folder's image files (``ingest_files.discover``: the same files ingest
takes) and stats each; one query reads the folder's rows of ``pgclip.files``. A file whose
size and mtime match its row is unchanged and never read, so an unchanged folder costs a
stat per file and that query. Only new files and files whose size or mtime changed are read
and hashed, and what changed is decided by content:

* a new path whose bytes are those of a file gone from the same scan: **moved** (its row
  takes the new path; the image, its captions and vectors stay; nothing is embedded);
* a new path otherwise: **added** through ``workers.ingest.ingest`` (an image stored
  already is referenced, not stored twice);
* a path whose bytes changed: **updated**. Its image stays the same image (id, captions,
  metadata) and takes the new bytes, its vectors of every model dropped and re-queued;
  unless the new bytes are another stored image (the path points there) or the old image is
  not the file's alone (the file gets a new image). Same bytes with a new mtime: nothing;
* a video file is its video (``pgclip.videos``; its sampled frames are its images): added,
  moved and removed the same way; changed bytes make it a new video (frames are not
  re-sampled in place);
* a path gone: **removed**: its row goes, and its image with it when no other file row
  references it and it came in through sync (never an upload or a plain ingest); with
  ``keep_missing`` the row stays, marked missing, and leaves the folder's searches.

A file that is not a usable image keeps a row with its reason, so the next scan skips it
until it changes. This module scans and plans (and says what a dry run would do);
``sync_apply.py`` writes the plan.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

from pgclip.core.errors import InvalidInput
from pgclip.db import files
from pgclip.db.files import FileRow, FileState
from pgclip.workers.ingest_files import (
    VIDEO_SUFFIXES,
    discover,
    name_bytes,
    os_reason,
    readable_name,
    stored_name,
)

HASH_THREADS = 4  # files read and hashed at once (each is in memory while it is hashed)


def sync_root(folder: str | os.PathLike[str]) -> Path:
    """The folder a sync works on: absolute, symlinks resolved (so that two names of one folder
    are one set of rows). InvalidInput for a path that is not there or not a folder."""
    path = Path(folder).expanduser()
    try:
        if not path.is_dir():
            what = "not a folder" if os.path.lexists(path) else "no such folder"
            raise InvalidInput(f"{what}: {readable_name(path)}")
    except (OSError, ValueError):
        raise InvalidInput(f"cannot open folder {readable_name(path)}") from None
    return Path(os.path.realpath(path))


def sync_root_or_refuse(root: Path) -> None:
    """InvalidInput ("no such folder: X: nothing removed") unless ``root`` is still a folder."""
    try:
        sync_root(root)
    except InvalidInput as exc:
        raise InvalidInput(f"{exc}: nothing removed") from None


def folder_filter(root: Path) -> str:
    """The search's ``folder`` filter for a sync root (the text form ``pgclip.files.path`` uses)."""
    return stored_name(root)[0]


@dataclasses.dataclass(frozen=True)
class Seen:
    """A file as the scan found it."""

    path: Path
    size: int
    mtime_ns: int

    @property
    def is_video(self) -> bool:
        return self.path.suffix.lower() in VIDEO_SUFFIXES

    def state(self, *, image_id: int | None, owns_image: bool, sha256: str | None, problem: str | None = None,
              row: FileRow | None = None, video_id: int | None = None) -> FileState:
        text, raw = stored_name(self.path)
        return FileState(path=text, path_bytes=raw if raw is not None else name_bytes(self.path), image_id=image_id,
                         video_id=video_id, owns_image=owns_image, size=self.size, mtime_ns=self.mtime_ns,
                         sha256=sha256, problem=problem, id=row.id if row else None)

    def pointing(self, target: int, *, owns: bool, sha256: str, row: FileRow | None = None) -> FileState:
        """The row of this file as the image (a picture) or video ``target``."""
        if self.is_video:
            return self.state(image_id=None, video_id=target, owns_image=owns, sha256=sha256, row=row)
        return self.state(image_id=target, owns_image=owns, sha256=sha256, row=row)


@dataclasses.dataclass
class Plan:
    """What a sync will do (``--dry-run`` prints it and writes nothing)."""

    root: Path
    added: list[tuple[Seen, str]] = dataclasses.field(default_factory=list)  # (file, sha256)
    changed: list[tuple[FileRow, Seen, str]] = dataclasses.field(default_factory=list)
    moved: list[tuple[FileRow, Seen]] = dataclasses.field(default_factory=list)
    touched: list[tuple[FileRow, Seen]] = dataclasses.field(default_factory=list)  # same bytes, new stat
    gone: list[FileRow] = dataclasses.field(default_factory=list)
    unchanged: int = 0
    still_rejected: int = 0  # unchanged files that were not usable images when last read
    unreadable: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (name, reason): not looked at
    stored: dict[str, int] = dataclasses.field(default_factory=dict)  # sha256 -> image id, before the sync
    stored_videos: dict[str, int] = dataclasses.field(default_factory=dict)  # sha256 -> video id, before it

    def known(self, file: Seen, digest: str) -> int | None:
        """The stored image (or, for a video file, video) with these bytes, before the sync."""
        return (self.stored_videos if file.is_video else self.stored).get(digest)

    @property
    def folder(self) -> str:
        return folder_filter(self.root)


@dataclasses.dataclass
class SyncReport:
    """What a sync did (or, dry, would do); paths are readable names."""

    folder: str
    dry_run: bool = False
    added: list[str] = dataclasses.field(default_factory=list)
    updated: list[str] = dataclasses.field(default_factory=list)
    moved: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (from, to)
    removed: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)  # marked missing (--keep-missing)
    unchanged: int = 0
    still_rejected: int = 0  # files skipped: unchanged since they were found not to be usable images
    rejected: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, reason)
    images_deleted: int = 0
    embedded: int = 0  # images of the folder embedded while the sync waited (by any worker)
    failed: int = 0  # images of the folder whose embedding failed

    @property
    def changes(self) -> int:
        return len(self.added) + len(self.updated) + len(self.moved) + len(self.removed) + len(self.missing)

    def summary(self) -> str:
        """The one line a sync ends with."""
        verb = "would sync" if self.dry_run else "synced"
        parts = [f"{len(self.added)} added", f"{len(self.updated)} updated", f"{len(self.moved)} moved",
                 f"{len(self.missing)} marked missing" if self.missing else f"{len(self.removed)} removed",
                 f"{self.unchanged} unchanged"]
        if self.rejected:
            parts.append(f"{len(self.rejected)} rejected")
        if self.still_rejected:
            parts.append(f"{self.still_rejected} still not images (unchanged since rejected)")
        line = f"{verb} {self.folder}: {', '.join(parts)}"
        if self.embedded or self.failed:
            line += f"; {self.embedded} embedded" + (f", {self.failed} failed to embed" if self.failed else "")
        return line

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["moved"] = [{"from": a, "to": b} for a, b in self.moved]
        d["rejected"] = [{"path": p, "reason": r} for p, r in self.rejected]
        return d


# --- the scan and the plan ------------------------------------------------------------


def plan(conn: psycopg.Connection, root: Path) -> Plan:
    """Scan ``root`` and compare it with its rows; reads (hashes) only new and changed files.

    Only a file missing from a folder that was listed is gone: the rows under a folder that
    could not be listed (permissions, a drive gone mid-scan) stay as they are, and a root that
    is no longer a folder (renamed, unmounted) is an InvalidInput, with nothing changed."""
    result = Plan(root)
    unlisted: list[Path] = []
    sync_root_or_refuse(root)  # still a folder (a --watch outlives it)
    found, _, problems = discover([root], unlisted=unlisted)
    if root in unlisted or not os.path.isdir(root):
        raise InvalidInput(f"cannot list the folder {readable_name(root)} (gone, or not readable): nothing removed")
    result.unreadable.extend(problems)
    seen: dict[bytes, Seen] = {}
    for path in found:
        try:
            st = os.stat(path)
        except OSError as exc:  # vanished since it was listed
            result.unreadable.append((readable_name(path), os_reason(exc)))
            continue
        seen[name_bytes(path)] = Seen(path, st.st_size, st.st_mtime_ns)
    rows = {bytes(row.path_bytes): row for row in files.under(conn, folder_filter(root))}

    to_hash: list[tuple[FileRow | None, Seen]] = []
    for key, file in seen.items():
        row = rows.get(key)
        if row is None or (row.size, row.mtime_ns) != (file.size, file.mtime_ns):
            to_hash.append((row, file))
        elif row.missing_since is not None:
            result.touched.append((row, file))  # back where it was, as it was
        elif row.problem is not None:
            result.still_rejected += 1
        else:
            result.unchanged += 1
    unknown = tuple(name_bytes(folder).rstrip(b"/") + b"/" for folder in unlisted)
    gone = [row for key, row in rows.items() if key not in seen and not key.startswith(unknown)]

    with ThreadPoolExecutor(HASH_THREADS) as pool:
        digests = list(pool.map(_sha256, [file.path for _, file in to_hash]))
    hashed: list[tuple[FileRow | None, Seen, str]] = []
    for (row, file), (digest, reason) in zip(to_hash, digests, strict=True):
        if digest is None:
            result.unreadable.append((readable_name(file.path), reason or "cannot read"))
        else:
            hashed.append((row, file, digest))
    result.stored = files.images_by_sha256(conn, [d for _, file, d in hashed if not file.is_video])
    result.stored_videos = files.videos_by_sha256(conn, [d for _, file, d in hashed if file.is_video])

    # A new path with the bytes of a file gone from this scan is that file, moved.
    gone_by_sha: dict[str, list[FileRow]] = {}
    for row in gone:
        if row.problem is None and row.sha256:
            gone_by_sha.setdefault(row.sha256, []).append(row)
    for row, file, digest in hashed:
        if row is None and gone_by_sha.get(digest):
            result.moved.append((gone_by_sha[digest].pop(0), file))
        elif row is None:
            result.added.append((file, digest))
        elif digest == row.sha256:
            result.touched.append((row, file))  # saved again, same bytes
        else:
            result.changed.append((row, file, digest))
    moved_ids = {row.id for row, _ in result.moved}
    result.gone = [row for row in gone if row.id not in moved_ids]
    return result


def _sha256(path: Path) -> tuple[str | None, str | None]:
    """(sha256, None) of a regular file's bytes, read in chunks (a video may be gigabytes), or
    (None, reason). Opened non-blocking and checked on the open descriptor, as ingest reads."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        return None, os_reason(exc)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, "not a regular file"
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return hashlib.file_digest(f, "sha256").hexdigest(), None
    except OSError as exc:
        return None, os_reason(exc)
    finally:
        os.close(fd)


def dry_report(p: Plan, *, keep_missing: bool, forget_missing: bool = True) -> SyncReport:
    """What :func:`apply` would report for this plan, written nowhere."""
    report = SyncReport(p.folder, dry_run=True, unchanged=p.unchanged + len(p.touched), still_rejected=p.still_rejected)
    report.added = [readable_name(file.path) for file, _ in p.added]
    report.updated = [readable_name(file.path) for _, file, _ in p.changed]
    report.moved = [(row.path, readable_name(file.path)) for row, file in p.moved]
    if keep_missing:
        report.missing = [row.path for row in p.gone if row.missing_since is None]
    else:
        report.removed = [row.path for row in to_remove(p, forget_missing)]
    report.rejected = list(p.unreadable)
    return report


def to_remove(p: Plan, forget_missing: bool) -> list[FileRow]:
    """The gone files a sync without ``keep_missing`` removes (without ``forget_missing``, not
    those marked missing before)."""
    return [row for row in p.gone if forget_missing or row.missing_since is None]
