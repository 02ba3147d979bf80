"""Decoding untrusted image bytes into RGB images that open_clip's preprocessing accepts.

Every failure is an :class:`ImageRejected` with a one-line reason: a permanent
failure, so the job fails at once and keeps that reason. Out-of-memory is not
caught here (it is transient and the job retries).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import math
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from pgclip.core.errors import InvalidInput
from pgclip.core.times import within_range

# Pillow's own default (Image.MAX_IMAGE_PIXELS, about a 9459 x 9459 image, ~256 MiB as
# RGB). Checked here against our own constant so that another module raising or
# disabling Pillow's global limit does not change what a worker accepts.
MAX_IMAGE_PIXELS = 89_478_485
# Camera and web raster formats. Pillow can also open EPS (hands the file to
# Ghostscript), PSD, FITS and dozens of rarer formats; hostile input gets none of them.
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "AVIF", "BMP", "TIFF")
THUMBNAIL_QUALITY = 80  # WebP quality: small files, no visible artefacts at 256 px
THUMBNAIL_METHOD = 2  # WebP effort, 0-6 (Pillow's default 4 costs twice as much here)
_MIME_OVERRIDES = {"MPO": "image/jpeg"}  # multi-picture JPEGs from cameras are served as JPEG
_WHITE = (255, 255, 255, 255)
_EXIF_IFD, _GPS_IFD = ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo
_T = ExifTags.Base
_G = ExifTags.GPS
T = TypeVar("T")


class ImageRejected(InvalidInput):
    """The bytes are not an image pgclip can decode; the message is the one-line reason."""


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`probe` learns about an image; sizes are after EXIF orientation."""

    width: int
    height: int
    format: str  # Pillow's format name: "JPEG", "PNG", ...
    mime: str
    byte_size: int
    sha256: str  # hex digest of the bytes as received
    taken_at: datetime | None  # naive: the camera's local time, as EXIF records it
    camera_make: str | None
    camera_model: str | None
    gps_latitude: float | None  # degrees, negative south
    gps_longitude: float | None  # degrees, negative west
    orientation: int | None  # EXIF orientation 1-8 as stored (already applied to width/height)
    frames: int


def probe(data: bytes) -> ImageInfo:
    """Size, format and EXIF facts of an image, after checking that its pixels decode.

    Raises :class:`ImageRejected` for anything :func:`decode` would reject.
    """
    im = _open(data)
    exif = _exif(im)
    orientation = _orientation(exif.get(_T.Orientation))
    width, height = im.size
    if orientation in (5, 6, 7, 8):  # these orientations rotate by 90 degrees
        width, height = height, width
    _load(im, reduced=True)
    frames = _safe(lambda: getattr(im, "n_frames", 1), 1)  # counting seeks through every frame
    gps = _safe(lambda: exif.get_ifd(_GPS_IFD), {})
    return ImageInfo(
        width=width,
        height=height,
        format=im.format or "",
        mime=_MIME_OVERRIDES.get(im.format or "") or im.get_format_mimetype() or "application/octet-stream",
        byte_size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        taken_at=_taken_at(exif),
        camera_make=_text(exif.get(_T.Make)),
        camera_model=_text(exif.get(_T.Model)),
        gps_latitude=_coordinate(gps.get(_G.GPSLatitude), gps.get(_G.GPSLatitudeRef), "S", 90),
        gps_longitude=_coordinate(gps.get(_G.GPSLongitude), gps.get(_G.GPSLongitudeRef), "W", 180),
        orientation=orientation,
        frames=frames,
    )


_capture = threading.local()


def route_warnings() -> None:
    """Send warnings raised inside :func:`captured_warnings` blocks to those blocks.

    Call it once from the main thread before starting the threads that capture:
    it changes process-wide state (``warnings.showwarning`` and the filters),
    which ``warnings.catch_warnings`` would also swap for every thread at once
    (it is not thread-safe), and ingest probes files on a thread pool.
    Warnings outside any block are shown as before. Idempotent.
    """
    if warnings.showwarning is not _show_warning:
        _show_warning.previous = warnings.showwarning  # type: ignore[attr-defined]
        warnings.showwarning = _show_warning
    # Python shows a warning once per code location by default: the second file with
    # corrupt EXIF would go uncounted. Pillow's warnings are counted every time.
    warnings.filterwarnings("always", module=r"PIL(\.|$)")
    warnings.filterwarnings("always", category=Image.DecompressionBombWarning)


@contextlib.contextmanager
def captured_warnings() -> Iterator[list[str]]:
    """The warnings this thread raises inside the block, as one-line texts, instead of printed.

    Pillow warns rather than fails for what it can read around ("Corrupt EXIF
    data", odd TIFF tags, DecompressionBombWarning): facts to count for the
    user, not Python warnings with source lines. Needs :func:`route_warnings`.
    """
    sink: list[str] = []
    outer = getattr(_capture, "sink", None)
    _capture.sink = sink
    try:
        yield sink
    finally:
        _capture.sink = outer


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    sink = getattr(_capture, "sink", None)
    if sink is None:
        _show_warning.previous(message, category, filename, lineno, file, line)  # type: ignore[attr-defined]
    else:
        sink.append(f"{category.__name__}: {' '.join(str(message).split())}")


_show_warning.previous = warnings.showwarning  # type: ignore[attr-defined]


def decode(data: bytes) -> Image.Image:
    """The image as RGB, upright (EXIF orientation applied), first frame of an animation.

    Transparency is composited on white; 16-bit and float greyscale are scaled to
    8 bits. Raises :class:`ImageRejected` with a one-line reason for anything else.
    """
    im = _open(data)
    _load(im)
    im = _safe(lambda: ImageOps.exif_transpose(im), im)  # a bad orientation tag keeps the pixels as stored
    return _to_rgb(im)


@dataclass(frozen=True)
class Thumbnail:
    data: bytes  # WebP
    width: int
    height: int


def make_thumbnail(img: Image.Image, max_side: int = 256) -> Thumbnail:
    """A WebP thumbnail no larger than max_side on either side, aspect ratio kept.

    Made for every image a worker embeds, beside the model on the same cores, so it
    is cheap: a box reduction to within 2x of the size, bilinear from there and WebP
    method 2 cost a quarter of Lanczos at method 4 (1.4 against 5.6 ms for 640x480 on
    this project's 2-core machine; bicubic instead of bilinear costs 0.35 ms more), for
    files a tenth larger that look the same at 256 px.
    """
    width, height = img.size
    scale = min(1.0, max_side / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    thumb = img if size == img.size else img.resize(size, Image.Resampling.BILINEAR, reducing_gap=1.0)
    if thumb.mode not in ("RGB", "RGBA"):
        thumb = thumb.convert("RGB")
    out = io.BytesIO()
    thumb.save(out, format="WEBP", quality=THUMBNAIL_QUALITY, method=THUMBNAIL_METHOD)
    return Thumbnail(out.getvalue(), *thumb.size)


def _open(data: bytes) -> Image.Image:
    """Open and read only the header; reject non-images and over-sized images."""
    if not data:
        raise ImageRejected("empty file")
    try:
        im = Image.open(io.BytesIO(data), formats=_openable_formats())
    except UnidentifiedImageError:
        raise ImageRejected("not an image (cannot identify image file)") from None
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageRejected(_reason(exc)) from None
    width, height = im.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageRejected(
            f"image too large: {width}x{height} = {width * height} pixels exceeds the limit of {MAX_IMAGE_PIXELS}"
        )
    if width < 1 or height < 1:
        raise ImageRejected(f"empty image: {width}x{height} pixels")
    return im


@functools.cache
def _openable_formats() -> tuple[str, ...]:
    Image.init()  # registers every plugin this Pillow build has (AVIF may be missing)
    return tuple(f for f in ACCEPTED_FORMATS if f in Image.OPEN)


def _load(im: Image.Image, *, reduced: bool = False) -> None:
    """Decode the pixels of the current frame (never with LOAD_TRUNCATED_IMAGES)."""
    try:
        if reduced:
            # JPEGs decode at 1/8 scale: every byte of the bitstream is still read (so
            # truncation shows) at a fraction of the cost. Other formats ignore this.
            im.draft(im.mode, (1, 1))
        im.load()
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageRejected(_reason(exc)) from None


def _reason(exc: Exception) -> str:
    message = " ".join(str(exc).split())
    if "truncated" in message.lower():
        return "truncated image"
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        # Pillow checks its own (global) limit before we see the size; its message has the count.
        found = re.search(r"\((\d+) pixels\)", message)
        pixels = found.group(1) if found else "too many"
        return f"image too large: {pixels} pixels exceeds the limit of {MAX_IMAGE_PIXELS}"
    return f"corrupt image ({message[:120] or type(exc).__name__})"


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB for every mode Pillow decodes; alpha composited on white, wide greys scaled."""
    try:
        if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            return Image.fromarray(_grey_to_8bit(np.asarray(im), im.mode)).convert("RGB")
        if im.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in im.info:
            rgba = im.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
        return im if im.mode == "RGB" else im.convert("RGB")
    except MemoryError:
        raise
    except ValueError:  # Pillow: "conversion from X to RGB not supported"
        raise ImageRejected(f"unsupported image mode {im.mode}") from None
    except Exception as exc:
        raise ImageRejected(_reason(exc)) from None


def _grey_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16-bit, 32-bit or float greyscale to 0-255 from the range its mode implies."""
    values = values.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I;16") or (low >= 0 and 255 < high <= 65535 and mode == "I"):
        scale_low, scale_high = 0.0, 65535.0  # 16-bit data, whatever its container
    elif mode == "F" and low >= 0 and high <= 1:
        scale_low, scale_high = 0.0, 1.0  # float images normalised to [0, 1]
    elif low >= 0 and high <= 255:
        scale_low, scale_high = 0.0, 255.0
    else:  # no range to rely on: stretch what is there
        scale_low, scale_high = low, max(high, low + 1)
    scaled = (values - scale_low) * (255.0 / (scale_high - scale_low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _exif(im: Image.Image) -> Image.Exif:
    return _safe(im.getexif, Image.Exif())


def _safe(read: Callable[[], T], default: T) -> T:
    """Metadata is optional: a malformed tag must never reject an image that decodes."""
    try:
        return read()
    except MemoryError:
        raise
    except Exception:
        return default


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def _orientation(value: object) -> int | None:
    return value if isinstance(value, int) and 1 <= value <= 8 else None


def _taken_at(exif: Image.Exif) -> datetime | None:
    """DateTimeOriginal (from the Exif IFD), falling back to the file's DateTime."""
    sub = _safe(lambda: exif.get_ifd(_EXIF_IFD), {})
    for value in (sub.get(_T.DateTimeOriginal), exif.get(_T.DateTime)):
        text = _text(value)
        if text:
            try:
                when = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
            except ValueError:
                continue  # "0000:00:00 00:00:00", blanks, garbage
            if within_range(when):  # "9999:12:31 23:59:59" is a placeholder, not a date
                return when
    return None


def _coordinate(dms: object, ref: object, negative: str, limit: float) -> float | None:
    """Degrees from EXIF (degrees, minutes, seconds) rationals, signed by the reference letter."""
    if isinstance(dms, (str, bytes)):
        return None
    try:
        degrees, minutes, seconds = (float(part) for part in dms)  # type: ignore[union-attr]
        value = degrees + minutes / 60 + seconds / 3600
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not math.isfinite(value) or not 0 <= value <= limit:
        return None
    return -value if (_text(ref) or "").upper().startswith(negative) else value
