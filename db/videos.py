"""Storing videos and their frames, and reading them back (statements in ``db/sql/videos.sql``).

A frame is an image row like any other (bytes in ``image_blobs``, queued, embedded by the
workers) that also names its video and its time in it; the video's own bytes are in
``video_blobs``. Writes run in the caller's transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

import psycopg
from psycopg.rows import class_row

from pgclip.core.errors import NotFound
from pgclip.db.queries import load

VIDEOS = load("videos.sql")


@dataclasses.dataclass(frozen=True)
class NewVideo:
    """What ingest knows about a video before it is stored."""

    sha256: str
    source: str | None
    source_bytes: bytes | None  # the name's exact bytes when it is not UTF-8 (source escapes them)
    byte_size: int
    mime: str
    container: str
    duration_s: float | None
    frame_interval_s: float
    width: int
    height: int


@dataclasses.dataclass(frozen=True)
class NewFrame:
    """One sampled frame, as a JPEG."""

    sha256: str
    ts: float  # seconds from the start of the video
    width: int
    height: int
    taken_at: dt.datetime | None
    data: bytes


def insert_video(conn: psycopg.Connection, video: NewVideo, data: bytes) -> tuple[int, bool]:
    """Store the video and its bytes unless a video with the same bytes is stored: (id, created)."""
    row = conn.execute(VIDEOS["insert_video"], dataclasses.asdict(video)).fetchone()
    if row is None:
        return conn.execute(VIDEOS["video_by_sha256"], {"sha256": video.sha256}).fetchone()[0], False
    conn.execute(VIDEOS["insert_video_blob"], {"video_id": row[0], "data": data})
    return row[0], True


def insert_frames(conn: psycopg.Connection, video_id: int, video: NewVideo,
                  frames: Sequence[NewFrame]) -> tuple[list[int], list[int]]:
    """Store frames of a stored video, with their bytes: (the new image ids, the shared ones).

    A frame whose bytes equal an earlier frame of the batch is skipped; one whose bytes equal an
    image already stored (another video's frame, a picture) is not stored again: the video
    shares that image (``shared_frames``).
    """
    by_sha = {f.sha256: f for f in reversed(frames)}  # the earliest of identical frames wins
    batch = sorted(by_sha.values(), key=lambda f: f.ts)
    if not batch:
        return [], []
    rows = conn.execute(
        VIDEOS["insert_frames"],
        {
            "video_id": video_id, "source": video.source, "source_bytes": video.source_bytes,
            "sha256": [f.sha256 for f in batch], "byte_size": [len(f.data) for f in batch],
            "width": [f.width for f in batch], "height": [f.height for f in batch],
            "taken_at": [f.taken_at for f in batch], "video_ts": [f.ts for f in batch],
        },
    ).fetchall()
    added = {sha: image_id for image_id, sha in rows}
    if added:
        conn.execute(VIDEOS["insert_frame_blobs"],
                     {"image_ids": list(added.values()), "data": [by_sha[sha].data for sha in added]})
    skipped = [f for f in batch if f.sha256 not in added]
    shared = []
    if skipped:
        shared = [r[0] for r in conn.execute(VIDEOS["share_frames"], {
            "video_id": video_id, "sha256": [f.sha256 for f in skipped], "video_ts": [f.ts for f in skipped]})]
    return sorted(added.values()), sorted(shared)


def frame_ids(conn: psycopg.Connection, video_id: int, *, own: bool = False) -> list[int]:
    """The image ids of a video's frames (its own and those it shares; ``own``: its own only),
    in time order."""
    return [r[0] for r in conn.execute(VIDEOS["frame_ids"], {"video_id": video_id, "own": own})]


@dataclasses.dataclass(frozen=True)
class VideoFrame:
    """The video an image is a frame of, and where in it."""

    image_id: int
    video_id: int
    ts: float  # seconds from the start of the video
    source: str | None
    mime: str
    duration_s: float | None


def frames_of(conn: psycopg.Connection, image_ids: Sequence[int]) -> dict[int, VideoFrame]:
    """For the images among ``image_ids`` that are video frames: their video, by image id."""
    if not image_ids:
        return {}
    with conn.cursor(row_factory=class_row(VideoFrame)) as cur:
        rows = cur.execute(VIDEOS["frames_of"], {"image_ids": list(image_ids)}).fetchall()
    return {row.image_id: row for row in rows}


@dataclasses.dataclass(frozen=True)
class Video:
    """One stored video."""

    id: int
    sha256: str
    source: str | None
    byte_size: int
    mime: str
    container: str
    duration_s: float | None
    frame_interval_s: float
    width: int
    height: int
    created_at: dt.datetime
    frames: int  # of its frames, how many are stored (its own and those it shares)


def video(conn: psycopg.Connection, video_id: int) -> Video:
    """The video; NotFound if there is none."""
    with conn.cursor(row_factory=class_row(Video)) as cur:
        row = cur.execute(VIDEOS["video"], {"video_id": video_id}).fetchone()
    if row is None:
        raise NotFound(f"no video with id {video_id}")
    return row


def stored_size(conn: psycopg.Connection, video_id: int) -> tuple[int, str]:
    """(length of the stored bytes, MIME type); NotFound if there is no such video, or it has
    no bytes (it came from `pgclip import`, where bytes never travel)."""
    row = conn.execute(VIDEOS["stored_size"], {"video_id": video_id}).fetchone()
    if row is None:
        raise NotFound(f"no video with id {video_id}")
    if row[0] is None:
        raise NotFound(f"video {video_id} has no stored bytes (it came from `pgclip import`)")
    return row[0], row[1]


def read_range(conn: psycopg.Connection, video_id: int, start: int, length: int) -> bytes:
    """``length`` bytes of the video from offset ``start`` (fewer at its end; empty if it is gone)."""
    row = conn.execute(VIDEOS["read_range"], {"video_id": video_id, "start": start, "length": length}).fetchone()
    return bytes(row[0]) if row else b""


def delete_videos(conn: psycopg.Connection, video_ids: Sequence[int]) -> set[int]:
    """Delete videos with their frames and all that hangs off them; returns the ids that existed."""
    return {r[0] for r in conn.execute(VIDEOS["delete_videos"], {"video_ids": list(video_ids)})}


def clock(seconds: float) -> str:
    """A time in a video as people write it: ``0:05``, ``12:30``, ``1:02:03``."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
