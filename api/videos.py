"""The videos' routes: a video's facts, its bytes with HTTP Range support (a browser seeks in
a ``<video>`` with Range requests), and deleting a video with its frames.

A video's frames are images and are served by the image routes; a frame's image detail
and every search result that is a frame name their video (``schemas.FrameVideo``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Annotated

from litestar import delete, get
from litestar.exceptions import HTTPException
from litestar.params import HeaderParameter, Parameter
from litestar.response import Stream

from pgclip.api.auth import require_write_key
from pgclip.api.routes import ApiController, ServiceDep
from pgclip.api.schemas import VideoDetail
from pgclip.application.service import Service

VideoId = Annotated[int, Parameter(ge=1, le=2**62, description="video id")]
CHUNK_BYTES = 1 << 20  # bytes read from the database per step: memory stays flat whatever the video's size
_RANGE = re.compile(r"\s*(\d*)\s*-\s*(\d*)\s*", re.ASCII)


class _Bytes(Stream):
    """A Stream that is sent with its own media type (Litestar's Stream lets the handler's win)."""

    def to_asgi_response(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        kwargs["media_type"] = self.media_type
        return super().to_asgi_response(*args, **kwargs)


class RangeNotSatisfiable(HTTPException):
    status_code = 416


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range a ``Range`` header asks for, as (first, last) inclusive and clipped to
    ``size``; None to send the whole (no header, another unit, or several ranges, which
    RFC 9110 lets a server ignore). A malformed or unsatisfiable bytes range raises 416."""
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    if "," in spec:
        return None  # browsers ask for one range at a time; the whole answers several
    found = _RANGE.fullmatch(spec)
    if not found or found.group(1) == found.group(2) == "":
        raise _unsatisfiable(f"malformed Range header {header[:60]!r}: expected bytes=FIRST-LAST, bytes=FIRST- "
                             "or bytes=-SUFFIX", size)
    first, last = found.group(1), found.group(2)
    if first == "":  # the last N bytes
        count = int(last)
        if count == 0 or size == 0:
            raise _unsatisfiable(f"the range {header[:60]!r} holds no bytes of the video ({size} bytes)", size)
        return max(0, size - count), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        raise _unsatisfiable(f"malformed Range header {header[:60]!r}: its last byte comes before its first", size)
    if start >= size:
        raise _unsatisfiable(f"the range {header[:60]!r} starts past the end of the video ({size} bytes)", size)
    return start, min(end, size - 1)


def _unsatisfiable(detail: str, size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(detail=detail, headers={"Content-Range": f"bytes */{size}"})


async def _chunks(service: Service, video_id: int, start: int, end: int) -> AsyncIterator[bytes]:
    """The bytes first..end, read CHUNK_BYTES at a time, each read on its own pooled connection
    (a slow client holds no connection between reads)."""
    at = start
    while at <= end:
        piece = await asyncio.to_thread(service.video_bytes, video_id, at, min(CHUNK_BYTES, end - at + 1))
        if not piece:
            return  # deleted meanwhile: the answer ends short, and the client sees it did
        yield piece
        at += len(piece)


class VideoController(ApiController):
    path = "/api/videos"
    tags = ["videos"]

    @get("/{video_id:int}", summary="A video: its source, duration, sampling interval and stored frames")
    async def detail(self, video_id: VideoId, service: ServiceDep) -> VideoDetail:
        return VideoDetail.of(await asyncio.to_thread(service.video, video_id))

    @get("/{video_id:int}/original", summary="The video's bytes as ingested (Range requests: 206, or 416)",
         media_type="application/octet-stream")
    async def original(
        self, video_id: VideoId, service: ServiceDep,
        range_: Annotated[str | None, HeaderParameter(name="Range", required=False,
                                                      description="one byte range, e.g. bytes=0-1023")] = None,
    ) -> Stream:
        size, mime = await asyncio.to_thread(service.video_size, video_id)
        wanted = byte_range(range_, size)
        # The bytes never change for an id (the id is tied to their sha256).
        headers = {"Accept-Ranges": "bytes", "Cache-Control": "public, max-age=31536000, immutable"}
        if wanted is None:
            first, last, status = 0, size - 1, 200
        else:
            (first, last), status = wanted, 206
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        headers["Content-Length"] = str(last - first + 1)
        return _Bytes(_chunks(service, video_id, first, last), status_code=status, media_type=mime, headers=headers)

    @delete("/{video_id:int}", guards=[require_write_key], status_code=204,
            summary="Delete a video with its frames (their vectors, captions, queue rows)")
    async def remove(self, video_id: VideoId, service: ServiceDep) -> None:
        await asyncio.to_thread(service.delete_video, video_id)

