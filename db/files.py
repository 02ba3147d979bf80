"""Folders kept in sync: the rows of ``pgclip.files`` and what changes with them (the
statements are in ``sql/files.sql``). Each function runs in the caller's transaction."""

from __future__ import annotations

import dataclasses
import datetime as dt
import zlib
from collections.abc import Sequence

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from pgclip.db.images import NewImage
from pgclip.db.queries import QUEUE, load

FILES = load("files.sql")
# The advisory lock syncs take turns on (one key for every folder: overlapping folders share rows).
SYNC_LOCK = zlib.crc32(b"pgclip.sync")


def folder_key(folder: str) -> str:
    """A folder as the statements take it: absolute, without its trailing '/' ('' for the root)."""
    return folder.rstrip("/")


@dataclasses.dataclass(frozen=True)
class FileRow:
    """One synced file as the database last saw it."""

    id: int
    path: str
    path_bytes: bytes
    image_id: int | None  # a picture's image
    video_id: int | None  # a video file's video (its frames are the images); neither: ``problem`` says why
    owns_image: bool  # the image (or video) came in through sync
    size: int
    mtime_ns: int
    sha256: str | None
    problem: str | None
    missing_since: dt.datetime | None


@dataclasses.dataclass(frozen=True)
class FileState:
    """What a row is to become (a new row has no ``id``)."""

    path: str
    path_bytes: bytes
    image_id: int | None
    owns_image: bool
    size: int
    mtime_ns: int
    sha256: str | None
    problem: str | None = None
    id: int | None = None
    video_id: int | None = None


def lock(conn: psycopg.Connection) -> None:
    """Wait for any other sync to finish, then hold the sync lock until :func:`unlock` (or the
    connection ends). Outside a transaction: the lock spans the sync's commits."""
    conn.execute(FILES["lock"], {"key": SYNC_LOCK})


def unlock(conn: psycopg.Connection) -> None:
    conn.execute(FILES["unlock"], {"key": SYNC_LOCK})


def under(conn: psycopg.Connection, folder: str) -> list[FileRow]:
    """Every file row under ``folder`` (missing ones too), by path."""
    with conn.cursor(row_factory=class_row(FileRow)) as cur:
        return cur.execute(FILES["under"], {"folder": folder_key(folder)}).fetchall()


def images_by_sha256(conn: psycopg.Connection, digests: Sequence[str]) -> dict[str, int]:
    """Of these contents, those stored already: sha256 -> image id."""
    if not digests:
        return {}
    return dict(conn.execute(FILES["images_by_sha256"], {"sha256": list(set(digests))}).fetchall())


def videos_by_sha256(conn: psycopg.Connection, digests: Sequence[str]) -> dict[str, int]:
    """Of these contents, the videos stored already: sha256 -> video id."""
    if not digests:
        return {}
    return dict(conn.execute(FILES["videos_by_sha256"], {"sha256": list(set(digests))}).fetchall())


def shared(conn: psycopg.Connection, image_ids: Sequence[int]) -> set[int]:
    """The ids among ``image_ids`` that more than one file row references."""
    if not image_ids:
        return set()
    return {r[0] for r in conn.execute(FILES["shared"], {"image_ids": list(image_ids)})}


def _columns(states: Sequence[FileState]) -> dict[str, list]:
    return {
        "path": [s.path for s in states], "path_bytes": [s.path_bytes for s in states],
        "image_id": [s.image_id for s in states], "video_id": [s.video_id for s in states],
        "owns_image": [s.owns_image for s in states],
        "size": [s.size for s in states], "mtime_ns": [s.mtime_ns for s in states],
        "sha256": [s.sha256 for s in states], "problem": [s.problem for s in states],
    }


def add(conn: psycopg.Connection, states: Sequence[FileState]) -> None:
    if states:
        conn.execute(FILES["add"], _columns(states))


def update(conn: psycopg.Connection, states: Sequence[FileState]) -> None:
    """Rows (by ``id``) take these values, and are no longer missing."""
    if states:
        conn.execute(FILES["update"], {"id": [s.id for s in states], **_columns(states)})


def rename_sources(conn: psycopg.Connection, moves: Sequence[tuple[int, str, str, bytes | None]], *,
                   videos: bool = False) -> None:
    """(image id, old path, new path, new path's bytes when not UTF-8): the image's source
    follows its file where the source was that file (``videos``: the ids are videos')."""
    if moves:
        conn.execute(FILES["rename_video_sources" if videos else "rename_sources"], {
            "video_id": [m[0] for m in moves],
            "image_id": [m[0] for m in moves], "old_path": [m[1] for m in moves],
            "new_path": [m[2] for m in moves], "new_bytes": [m[3] for m in moves],
        })


def mark_missing(conn: psycopg.Connection, ids: Sequence[int]) -> None:
    if ids:
        conn.execute(FILES["mark_missing"], {"ids": list(ids)})


def remove(conn: psycopg.Connection, ids: Sequence[int]) -> None:
    if ids:
        conn.execute(FILES["remove"], {"ids": list(ids)})


def release_images(conn: psycopg.Connection, image_ids: Sequence[int]) -> set[int]:
    """Images that came in through sync and that file rows let go of: kept while another row
    references them, else deleted. Returns the ids deleted. Call after the rows changed."""
    if not image_ids:
        return set()
    return {r[0] for r in conn.execute(FILES["release_images"], {"image_ids": sorted(set(image_ids))})}


def release_videos(conn: psycopg.Connection, video_ids: Sequence[int]) -> set[int]:
    """:func:`release_images` for videos (deleting one deletes its frames)."""
    if not video_ids:
        return set()
    return {r[0] for r in conn.execute(FILES["release_videos"], {"video_ids": sorted(set(video_ids))})}


def replace_bytes(conn: psycopg.Connection, image_id: int, image: NewImage, exif: dict) -> None:
    """The image (a synced file's alone) becomes the file's new bytes: same id, captions and
    metadata; new sha256, size and format facts; no thumbnail and no vector of any model until
    it is embedded again (queued here for every model in use; workers are notified at commit)."""
    conn.execute(FILES["replace_image"], {
        "image_id": image_id, "sha256": image.sha256, "byte_size": image.byte_size, "width": image.width,
        "height": image.height, "format": image.format, "mime": image.mime, "taken_at": image.taken_at,
        "exif": Jsonb(exif),
    })
    conn.execute(FILES["replace_blob"], {"image_id": image_id, "data": image.data})
    conn.execute(FILES["drop_thumbnails"], {"image_ids": [image_id]})
    conn.execute(FILES["drop_vectors"], {"image_ids": [image_id]})
    conn.execute(FILES["requeue"], {"image_ids": [image_id]})
    for (model_id,) in conn.execute(FILES["models_in_use"]).fetchall():
        conn.execute(QUEUE["notify"], {"model_id": model_id})


def enqueue_folder(conn: psycopg.Connection, folder: str, model_id: int) -> int:
    """Queue the folder's images the model never had a job for; returns how many. Notifies."""
    added = conn.execute(FILES["enqueue_folder"], {"folder": folder_key(folder), "model_id": model_id}).fetchall()
    if added:
        conn.execute(QUEUE["notify"], {"model_id": model_id})
    return len(added)


def prioritise(conn: psycopg.Connection, folder: str, model_id: int) -> None:
    """Put the folder's claimable jobs for the model at the head of its queue."""
    conn.execute(FILES["prioritise"], {"folder": folder_key(folder), "model_id": model_id})


@dataclasses.dataclass(frozen=True)
class Progress:
    open: int  # images of the folder still to embed (pending or leased)
    failed: int  # images whose embedding failed


def progress(conn: psycopg.Connection, folder: str, model_id: int) -> Progress:
    """How far the model is with the folder's present images."""
    with conn.cursor(row_factory=class_row(Progress)) as cur:
        return cur.execute(FILES["progress"], {"folder": folder_key(folder), "model_id": model_id}).fetchone()
