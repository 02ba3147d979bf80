"""Videos: untrusted bytes into frames sampled every N seconds, each a JPEG that is then an image.

Decoded with PyAV (FFmpeg inside the wheel). Only the containers pgclip accepts are
opened, each with its own demuxer named explicitly, after the first bytes say which it
is: FFmpeg left to guess would also open playlists and formats that fetch other files
(HLS, concat). Frames are decoded one after the other and each sampled frame is handed
on before the next is decoded, so memory holds the video's bytes and one frame, however
long the video.

Every failure is a :class:`VideoRejected` with a one-line reason (empty, not a video,
truncated, damaged at some second, no video stream, too large), raised before or while
the frames are read; the caller stores a video's rows in one transaction, so a video
that fails halfway leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import io
import math
import re
from collections.abc import Iterator

from typing import TYPE_CHECKING

from pgclip.core.errors import InvalidInput
from pgclip.workers.decode import MAX_IMAGE_PIXELS
from pgclip.workers.ingest_files import VIDEO_SUFFIXES

if TYPE_CHECKING:
    import psycopg

    from pgclip.core.settings import Settings

DEFAULT_FRAME_INTERVAL = 5.0  # seconds (seed 003 searched cartoon episodes this way)
DEFAULT_MAX_FRAMES = 1000  # per video: 83 minutes at 5 s; a longer video gets a wider interval
# PostgreSQL holds at most 1 GB in one value (the video's bytes are one bytea).
MAX_VIDEO_BYTES = 1_000_000_000  # bytes
FRAME_QUALITY = 90  # JPEG quality of a stored frame: the worker and the page read it like a photo
# A container that declares a duration but whose frames stop this much earlier was cut short.
TRUNCATION_SLACK = 1.0  # seconds
_EPSILON = 1e-6  # seconds: a frame at 4.9999999 s is the 5 s sample


class VideoRejected(InvalidInput):
    """The bytes are not a video pgclip can sample; the message is the one-line reason."""


@dataclasses.dataclass(frozen=True)
class Container:
    """A container format pgclip accepts: its name, its MIME type and FFmpeg's demuxer for it."""

    name: str
    mime: str
    demuxer: str


MP4 = Container("mp4", "video/mp4", "mp4")
MOV = Container("mov", "video/quicktime", "mov")
WEBM = Container("webm", "video/webm", "matroska")
MATROSKA = Container("matroska", "video/x-matroska", "matroska")
AVI = Container("avi", "video/x-msvideo", "avi")

# ISO base media files (MP4, MOV) start with a box whose type is one of these.
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")
_EBML = b"\x1a\x45\xdf\xa3"  # Matroska and WebM


def sniff(data: bytes) -> Container | None:
    """The accepted container these bytes start as, or None."""
    head = data[:64]
    if len(head) >= 12 and head[4:8] in _ISO_BOXES:
        return MOV if head[4:8] == b"ftyp" and head[8:12] == b"qt  " else MP4
    if head.startswith(_EBML):
        return WEBM if b"webm" in head else MATROSKA
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return AVI
    return None


def is_video(data: bytes, filename: str | None = None) -> bool:
    """Whether an upload is meant as a video: its bytes start as one, or its name says so."""
    if sniff(data) is not None:
        return True
    suffix = "." + filename.rsplit(".", 1)[-1].lower() if filename and "." in filename else ""
    return suffix in VIDEO_SUFFIXES


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns from a video's header."""

    sha256: str  # hex digest of the bytes as received
    byte_size: int
    container: str
    mime: str
    duration_s: float | None  # as the container declares it
    width: int
    height: int
    codec: str
    created_at: dt.datetime | None  # the container's creation_time tag, if any
    frame_interval_s: float  # what sampling uses: the interval asked, widened to respect the frame cap


@dataclasses.dataclass(frozen=True)
class Frame:
    """One sampled frame: its time in the video and the frame as a JPEG at the video's size."""

    ts: float  # seconds from the start of the video
    data: bytes
    width: int
    height: int


def probe_video(data: bytes, *, frame_interval: float = DEFAULT_FRAME_INTERVAL,
                max_frames: int = DEFAULT_MAX_FRAMES) -> VideoInfo:
    """A video's facts from its header (nothing decoded yet); raises :class:`VideoRejected`."""
    container = _container_of(data)
    with _opened(data, container) as (media, stream):
        ctx = stream.codec_context
        width, height = ctx.width, ctx.height
        if width < 1 or height < 1:
            raise VideoRejected(f"damaged video (its video stream has no picture size: {width}x{height})")
        if width * height > MAX_IMAGE_PIXELS:
            raise VideoRejected(f"video too large: {width}x{height} = {width * height} pixels per frame exceeds "
                                f"the limit of {MAX_IMAGE_PIXELS}")
        duration = _duration(media, stream)
        interval = frame_interval
        if duration is not None and duration / interval > max_frames:
            interval = duration / max_frames  # cover the whole video with at most max_frames frames
        return VideoInfo(
            sha256=hashlib.sha256(data).hexdigest(), byte_size=len(data), container=container.name,
            mime=container.mime, duration_s=duration, width=width, height=height, codec=ctx.name,
            created_at=_creation_time(media.metadata, stream.metadata), frame_interval_s=interval,
        )


def sample_frames(data: bytes, info: VideoInfo, *, max_frames: int = DEFAULT_MAX_FRAMES) -> Iterator[Frame]:
    """The video's frames every ``info.frame_interval_s`` seconds, the first frame always among them.

    Each sample is the first frame at or after its time (its own timestamp is the one
    reported). Raises :class:`VideoRejected` when decoding fails or the frames end well
    before the declared duration (a truncated file), possibly after yielding some frames.
    """
    import av

    interval = info.frame_interval_s
    with _opened(data, _container_of(data)) as (media, stream):
        stream.thread_type = "AUTO"
        start = _start_time(media, stream)
        step = 1 / float(stream.average_rate) if stream.average_rate else 0.04
        next_at, sampled, decoded, last = 0.0, 0, 0, None
        try:
            for frame in media.decode(stream):
                decoded += 1
                ts = frame.time - start if frame.time is not None else (decoded - 1) * step
                ts = max(0.0, ts)
                last = ts
                if ts + _EPSILON < next_at:
                    continue
                yield _frame(frame, ts)
                sampled += 1
                if sampled >= max_frames:
                    return  # the cap: only reached when the duration was unknown (else the interval widened)
                next_at = (math.floor((ts + _EPSILON) / interval) + 1) * interval
        except av.error.FFmpegError as exc:
            where = f" at {last:.1f} s" if last is not None else ""
            raise VideoRejected(f"damaged video{where} ({_ffmpeg_reason(exc)})") from None
        if decoded == 0:
            raise VideoRejected("damaged or truncated video (no frame could be decoded)")
        duration = info.duration_s
        if duration is not None and last is not None and last + step < duration - TRUNCATION_SLACK:
            raise VideoRejected(f"truncated video (its frames end at {last:.1f} s of the {duration:.1f} s it declares)")


def _frame(frame, ts: float) -> Frame:  # noqa: ANN001 (an av.VideoFrame)
    image = frame.to_image()  # RGB at the coded size
    rotation = _safe_rotation(frame)
    if rotation:
        image = image.rotate(rotation, expand=True)  # the display matrix turns it upright (as players do)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=FRAME_QUALITY)
    return Frame(ts=round(ts, 3), data=out.getvalue(), width=image.width, height=image.height)


def _safe_rotation(frame) -> int:  # noqa: ANN001
    try:
        rotation = int(round(frame.rotation or 0))
    except Exception:  # a malformed display matrix: show the frame as coded
        return 0
    return rotation if rotation in (90, -90, 180, -180) else 0


def _container_of(data: bytes) -> Container:
    if not data:
        raise VideoRejected("empty file")
    if len(data) > MAX_VIDEO_BYTES:
        raise VideoRejected(f"video too large: {len(data)} bytes exceeds the limit of {MAX_VIDEO_BYTES} "
                            "(PostgreSQL holds at most 1 GB in one value)")
    container = sniff(data)
    if container is None:
        raise VideoRejected("not a video (not an MP4, MOV, WebM, Matroska or AVI file)")
    return container


@contextlib.contextmanager
def _opened(data: bytes, container: Container) -> Iterator[tuple[object, object]]:
    """The opened container and its first video stream; FFmpeg's log lines are kept off stderr
    (its last error line is in PyAV's exception, and so in the reason)."""
    import av
    import av.logging

    _ffmpeg_errors_in_exceptions()
    with av.logging.Capture(local=False):
        try:
            media = av.open(io.BytesIO(data), mode="r", format=container.demuxer)
        except av.error.FFmpegError as exc:
            raise VideoRejected(f"not a video, or damaged ({_ffmpeg_reason(exc)})") from None
        except MemoryError:
            raise
        except Exception as exc:  # PyAV's own surprises (a header it cannot represent)
            raise VideoRejected(f"not a video, or damaged ({type(exc).__name__}: {exc})") from None
        with media:
            if not media.streams.video:
                raise VideoRejected("no video stream (an audio-only file?)")
            yield media, media.streams.video[0]


@functools.cache
def _ffmpeg_errors_in_exceptions() -> None:
    """FFmpeg's error lines reach PyAV only with a log level set; PyAV then adds the last one to
    its exceptions ("moov atom not found"). Inside a Capture they are never printed."""
    import av.logging

    if av.logging.get_level() is None:
        av.logging.set_level(av.logging.ERROR)


_ERRNO = re.compile(r"^\[Errno -?\d+\]\s*")
_FILE_NAME = re.compile(r":\s*'[^']*'$")
_LOG_SOURCE = re.compile(r"^\[[^\]]*\]\s*")


def _ffmpeg_reason(exc: Exception) -> str:
    """PyAV's message as a reason: FFmpeg's own last error line where it has one
    ("moov atom not found"), else the error's name ("Invalid data found when processing input")."""
    message = " ".join(str(exc).split())
    head, found, log = message.partition("; last error log: ")
    text = _LOG_SOURCE.sub("", log) if found else _FILE_NAME.sub("", _ERRNO.sub("", head))
    return text.strip()[:160] or type(exc).__name__


def _duration(media, stream) -> float | None:  # noqa: ANN001
    if stream.duration is not None and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif media.duration is not None:
        seconds = media.duration / 1_000_000  # AV_TIME_BASE
    else:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _start_time(media, stream) -> float:  # noqa: ANN001
    if stream.start_time is not None and stream.time_base:
        return float(stream.start_time * stream.time_base)
    if media.start_time is not None:
        return media.start_time / 1_000_000
    return 0.0


def _creation_time(*tags: dict[str, str]) -> dt.datetime | None:
    for metadata in tags:
        raw = (metadata or {}).get("creation_time")
        if not raw:
            continue
        try:
            when = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            continue
        # Cameras without a clock write 1904-01-01 or 1970-01-01; a year past 9000 is no date either
        # (and its frames' times, seconds later, could pass what any reader reads back).
        if 1970 < when.year < 9000:
            return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
    return None


# --- storing a video: its row and bytes, its frames as images, their jobs --------------------

FRAMES_PER_INSERT = 16  # frames held in memory between two INSERTs (JPEGs at the video's size)


@dataclasses.dataclass(frozen=True)
class VideoOptions:
    """How frames are sampled (``PGCLIP_VIDEO_FRAME_INTERVAL``, ``PGCLIP_VIDEO_MAX_FRAMES``)."""

    frame_interval: float = DEFAULT_FRAME_INTERVAL  # seconds
    max_frames: int = DEFAULT_MAX_FRAMES

    @classmethod
    def from_settings(cls, settings: Settings, frame_interval: float | None = None) -> VideoOptions:
        return cls(frame_interval or settings.video_frame_interval, settings.video_max_frames)


@dataclasses.dataclass(frozen=True)
class StoredVideo:
    """What storing one video did."""

    video_id: int
    created: bool  # False: a video with the same bytes was stored already (nothing added)
    frame_ids: list[int]  # the images its frames are, in time order (on a repeat: its stored frames)
    own: list[int]  # of those, the images the video owns (stored for it; the others it shares)
    frames_sampled: int  # sampled this time; more than frame_ids when some frames are byte for byte the same
    enqueued: int


def store_video(conn: psycopg.Connection, data: bytes, *, source: str | None, model_id: int,
                source_bytes: bytes | None = None, options: VideoOptions = VideoOptions()) -> StoredVideo:
    """Store a video, its bytes and its sampled frames as queued images, in the caller's transaction.

    Raises :class:`VideoRejected` (before anything is written, or midway: the caller's
    transaction must then roll back so nothing of the video stays). The same bytes again
    add nothing; their frames are queued for ``model_id`` if they never were. A frame whose bytes
    are an image stored already (another video's frame, a picture) is shared, not stored again.
    """
    from pgclip.db import queue
    from pgclip.db import videos as db_videos

    info = probe_video(data, frame_interval=options.frame_interval, max_frames=options.max_frames)
    video = db_videos.NewVideo(
        sha256=info.sha256, source=source, source_bytes=source_bytes, byte_size=info.byte_size, mime=info.mime,
        container=info.container, duration_s=info.duration_s, frame_interval_s=info.frame_interval_s,
        width=info.width, height=info.height,
    )
    video_id, created = db_videos.insert_video(conn, video, data)
    if not created:
        known = db_videos.frame_ids(conn, video_id)
        return StoredVideo(video_id, False, known, db_videos.frame_ids(conn, video_id, own=True), 0,
                           queue.enqueue(conn, known, model_id, only_unqueued=True))
    added: list[int] = []
    shared: list[int] = []
    pending: list[db_videos.NewFrame] = []

    def flush() -> None:
        new, same = db_videos.insert_frames(conn, video_id, video, pending)
        added.extend(new)
        shared.extend(same)
        pending.clear()

    sampled = 0
    for frame in sample_frames(data, info, max_frames=options.max_frames):
        sampled += 1
        taken_at = info.created_at + dt.timedelta(seconds=frame.ts) if info.created_at else None
        pending.append(db_videos.NewFrame(hashlib.sha256(frame.data).hexdigest(), frame.ts, frame.width,
                                          frame.height, taken_at, frame.data))
        if len(pending) >= FRAMES_PER_INSERT:
            flush()
    flush()
    enqueued = queue.enqueue(conn, added, model_id) + queue.enqueue(conn, shared, model_id, only_unqueued=True)
    frame_ids = db_videos.frame_ids(conn, video_id) if shared else added
    return StoredVideo(video_id, True, frame_ids, added, sampled, enqueued)
