"""A set of files as `pgclip export` writes them and `pgclip import` reads them:
the layout, the parquet schemas, and the checks a set passes before anything is imported.

A set is a folder::

    pgclip-export.json                  the manifest: model, dimension, rows, files and their sha256
    img_emb/img_emb_<i>.npy             float32 (or float16) rows x dimension, one row per image
    metadata/metadata_<i>.parquet       the same rows in the same order: image_path, caption, and
                                        pgclip's columns (sha256, sizes, taken_at, metadata, captions,
                                        and a frame's video and time)
    thumbnails/thumbnails_<i>.parquet   the same rows again: the WebP thumbnails (optional)

Row r of ``img_emb_<i>.npy`` is row r of every ``*_<i>.parquet``: clip-retrieval's own
convention, so its readers (``embedding-reader``'s ``parquet_npy``) take the set as it is.
Parts hold at most ``ROWS_PER_FILE`` rows; everything streams a batch at a time in both
directions. The manifest is written last: a folder without one is not a set. Image bytes
never travel (see README, "Export and import").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pgclip.core.errors import InvalidInput
from pgclip.core.times import check_time
from pgclip.db import exchange as db
from pgclip.workers.weights import file_sha256 as sha256_file

MANIFEST = "pgclip-export.json"
FORMAT = "pgclip-export"
FORMAT_VERSION = 1
ROWS_PER_FILE = 100_000  # rows per part: 100k x 512 float32 is a 200 MB .npy, as clip-retrieval writes them
BATCH_ROWS = 2_000  # rows per cursor fetch, per parquet row group and per import statement
DTYPES = {"float32": np.float32, "float16": np.float16}
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# A vector further than this from unit length is scaled to it on import (float16 sets stay well inside).
UNIT_TOLERANCE = 1e-2



def arrow():
    """pyarrow, imported on first use: it costs every other command a quarter of a second."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


def metadata_schema(pa):
    return pa.schema([
        ("image_path", pa.string()),  # clip-retrieval's name for where the image came from: pgclip's source
        ("caption", pa.string()),  # clip-retrieval's one caption: the image's first, or null
        ("image_id", pa.int64()),  # the exporting database's id (an import matches images by sha256)
        ("sha256", pa.string()),
        ("source_bytes", pa.binary()),  # the name's exact bytes when it is not UTF-8, else null
        ("byte_size", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),
        ("mime", pa.string()),
        ("taken_at", pa.timestamp("us", tz="UTC")),
        ("metadata", pa.string()),  # a JSON object
        ("captions", pa.list_(pa.string())),  # every caption, oldest first
        # A frame sampled from a video: the video (its bytes never travel) and the frame's time.
        # Both null for a picture; a set without these columns (pgclip before 2026-12-07) has none.
        ("video", video_type(pa)),
        ("video_ts", pa.float64()),  # seconds from the video's start
        # The other videos the image is a frame of, each with the frame's time in it (a frame
        # two videos share is stored once); empty for most images, absent from older sets.
        ("shared_videos", pa.list_(pa.struct([("video", video_type(pa)), ("video_ts", pa.float64())]))),
    ])


def video_type(pa):
    return pa.struct([
        ("sha256", pa.string()), ("source", pa.string()), ("source_bytes", pa.binary()),
        ("byte_size", pa.int64()), ("mime", pa.string()), ("container", pa.string()),
        ("duration_s", pa.float64()), ("frame_interval_s", pa.float64()),
        ("width", pa.int32()), ("height", pa.int32()),
    ])


def thumbnail_schema(pa):
    return pa.schema([
        ("image_id", pa.int64()),
        ("thumbnail", pa.binary()),
        ("thumbnail_mime", pa.string()),
        ("thumbnail_width", pa.int32()),
        ("thumbnail_height", pa.int32()),
    ])


def first_line(exc: BaseException) -> str:
    """The first line of a library's message: errors are one line."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# --- reading a set ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Part:
    rows: int
    img_emb: Path
    metadata: Path
    thumbnails: Path | None


@dataclasses.dataclass(frozen=True)
class ExportSet:
    """A set whose manifest parsed and whose files match it (sha256, shapes, row counts)."""

    directory: Path
    model_name: str
    pretrained: str
    dimension: int
    rows: int
    parts: list[Part]


def _bad(directory: Path, what: str) -> InvalidInput:
    return InvalidInput(f"{directory}/{MANIFEST}: {what}")


def read_manifest(directory: Path) -> ExportSet:
    """Parse and check a set's manifest and files before anything is written anywhere:
    every file present, inside the folder, of the sha256 it was written with, and of the
    shape the manifest says (a truncated or edited file is refused here, in one line)."""
    path = directory / MANIFEST
    if not path.is_file():
        raise InvalidInput(
            f"{directory} holds no pgclip export ({MANIFEST} is missing): `pgclip export` writes one, "
            "and a set without it (an interrupted export, or one from another tool) cannot be imported")
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != FORMAT:
            raise _bad(directory, f"not a {FORMAT} manifest")
        if doc.get("format_version") != FORMAT_VERSION:
            raise _bad(directory, f"format version {doc.get('format_version')!r}; this pgclip reads {FORMAT_VERSION}")
        model = doc["model"]
        name, pretrained, dimension = model["name"], model["pretrained"], model["dimension"]
        rows, raw_parts = doc["rows"], doc["parts"]
        if not (isinstance(name, str) and isinstance(pretrained, str) and type(dimension) is int
                and type(rows) is int and isinstance(raw_parts, list)):
            raise _bad(directory, "model name, pretrained, dimension, rows or parts of the wrong type")
        parts = [_part(directory, p) for p in raw_parts]
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise _bad(directory, f"unreadable ({type(exc).__name__}: {first_line(exc)})") from None
    if sum(p.rows for p in parts) != rows:
        raise _bad(directory, f"says {rows} rows, its parts hold {sum(p.rows for p in parts)}")
    for part in parts:
        _check_npy(part, dimension)
        _check_parquet(part.metadata, part.rows, {"sha256", "metadata", "captions", "width", "height"})
        if part.thumbnails is not None:
            _check_parquet(part.thumbnails, part.rows, {"thumbnail"})
    return ExportSet(directory, name, pretrained, dimension, rows, parts)


def _part(directory: Path, raw: dict[str, Any]) -> Part:
    files = raw["files"]
    resolved: dict[str, Path] = {}
    for kind, entry in files.items():
        path = (directory / entry["path"]).resolve()
        if not path.is_relative_to(directory.resolve()):
            raise _bad(directory, f"{entry['path']!r} lies outside the folder")
        if not path.is_file():
            raise InvalidInput(f"{path}: missing (the manifest lists it)")
        if sha256_file(path) != entry["sha256"]:
            raise InvalidInput(f"{path}: its sha256 differs from the manifest's (truncated, corrupt or edited)")
        resolved[kind] = path
    if type(raw["rows"]) is not int or "img_emb" not in resolved or "metadata" not in resolved:
        raise _bad(directory, "a part without rows, img_emb or metadata")
    return Part(raw["rows"], resolved["img_emb"], resolved["metadata"], resolved.get("thumbnails"))


def _open_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"{path}: not a readable .npy file ({first_line(exc)})") from None


def _check_npy(part: Part, dimension: int) -> None:
    array = _open_npy(part.img_emb)
    if array.dtype.str not in ("<f4", "<f2") or array.ndim != 2:
        raise InvalidInput(f"{part.img_emb}: expected a 2-D float32 or float16 array, found {array.dtype} "
                           f"with shape {array.shape}")
    if array.shape != (part.rows, dimension):
        raise InvalidInput(f"{part.img_emb}: shape {array.shape}, the manifest says ({part.rows}, {dimension})")


def _check_parquet(path: Path, rows: int, columns: set[str]) -> None:
    pa, pq = arrow()
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput(f"{path}: not a readable parquet file ({first_line(exc)})") from None
    if parquet.metadata.num_rows != rows:
        raise InvalidInput(f"{path}: {parquet.metadata.num_rows} rows, the manifest says {rows}")
    missing = columns - set(parquet.schema_arrow.names)
    if missing:
        raise InvalidInput(f"{path}: no column {', '.join(sorted(missing))}")


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    pa, pq = arrow()
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
            yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput(f"{path}: unreadable ({first_line(exc)})") from None


def _taken_at(where: str, value: Any) -> dt.datetime | None:
    """A timestamp column as it is; ISO 8601 text (another tool's export) parsed; naive times read
    as UTC (clip-retrieval's). Anything else is refused: PostgreSQL would read 'yesterday' as a day."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip()) if value[:4].isdigit() else None
        except ValueError:
            value = None
        if value is None:
            raise InvalidInput(f"{where}: taken_at is not a date and time (ISO 8601, e.g. 2024-05-01T12:00:00Z)")
    elif isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if not isinstance(value, dt.datetime):
        raise InvalidInput(f"{where}: taken_at {value!r} is not a date and time")
    return check_time(f"{where}: taken_at", value)


def _row(part: Part, n: int, meta: dict[str, Any], thumb: dict[str, Any] | None, vector: np.ndarray) -> db.ExchangeRow:
    """One row of the set, checked: what the database would refuse is refused here, naming the row."""
    where = f"{part.metadata} row {n}"
    sha = meta.get("sha256")
    if not (isinstance(sha, str) and SHA256_HEX.fullmatch(sha)):
        raise InvalidInput(f"{where}: sha256 is not 64 lowercase hex digits")
    for key in ("width", "height", "byte_size"):
        if not isinstance(meta.get(key), int) or meta[key] < (0 if key == "byte_size" else 1):
            raise InvalidInput(f"{where}: {key} {meta.get(key)!r} is not a positive integer")
    try:
        metadata = json.loads(meta.get("metadata") or "{}")
    except ValueError:
        raise InvalidInput(f"{where}: metadata is not JSON") from None
    if not isinstance(metadata, dict):
        raise InvalidInput(f"{where}: metadata is not a JSON object")
    captions = meta.get("captions") or []
    if not all(isinstance(c, str) and c.strip() for c in captions):
        raise InvalidInput(f"{where}: an empty caption")
    texts = [meta.get("image_path"), meta.get("format"), meta.get("mime"), json.dumps(metadata), *captions]
    if any(isinstance(t, str) and "\x00" in t for t in texts) or "\\u0000" in texts[3]:
        raise InvalidInput(f"{where}: a NUL character (PostgreSQL text cannot hold one)")
    if not (isinstance(meta.get("format"), str) and isinstance(meta.get("mime"), str)):
        raise InvalidInput(f"{where}: format or mime missing")
    vector = np.asarray(vector, dtype=np.float32)
    if not np.all(np.isfinite(vector)) or not np.any(vector):
        raise InvalidInput(f"{part.img_emb} row {n}: the vector is zero or not finite")
    wide = vector.astype(np.float64)  # float32 squares overflow for vectors near its limit
    norm = float(np.linalg.norm(wide))
    if abs(norm - 1.0) > UNIT_TOLERANCE:  # an export's vectors are unit length; another tool's may not be
        vector = (wide / norm).astype(np.float32)
    if thumb is not None and thumb.get("image_id") != meta.get("image_id"):
        raise InvalidInput(f"{part.thumbnails} row {n}: image_id {thumb.get('image_id')} where "
                           f"{part.metadata.name} has {meta.get('image_id')}")
    video = _video(where, meta.get("video"), meta.get("video_ts"))
    shared = _shared(where, meta.get("shared_videos"))
    taken_at = _taken_at(where, meta.get("taken_at"))
    thumb = thumb or {}
    return db.ExchangeRow(
        image_id=meta.get("image_id"), sha256=sha, source=meta.get("image_path"),
        source_bytes=meta.get("source_bytes"), byte_size=meta["byte_size"], width=meta["width"],
        height=meta["height"], format=meta["format"], mime=meta["mime"], taken_at=taken_at, metadata=metadata,
        captions=list(captions), embedding=vector, thumbnail=thumb.get("thumbnail"),
        thumbnail_mime=thumb.get("thumbnail_mime"), thumbnail_width=thumb.get("thumbnail_width"),
        thumbnail_height=thumb.get("thumbnail_height"), video=video,
        video_ts=meta.get("video_ts") if video is not None else None, shared=shared,
    )


def _finite(value: Any, low: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and value >= low


def _video(where: str, raw: Any, ts: Any) -> db.NewVideo | None:
    """A frame's video, checked as the database's constraints would; None for a picture."""
    if raw is None and ts is None:
        return None
    if not isinstance(raw, dict) or ts is None:
        raise InvalidInput(f"{where}: video and video_ts go together (a frame has both, a picture neither)")
    if not _finite(ts, 0):
        raise InvalidInput(f"{where}: video_ts {ts!r} is not a time in seconds (a finite number >= 0)")
    if not (isinstance(raw.get("sha256"), str) and SHA256_HEX.fullmatch(raw["sha256"])):
        raise InvalidInput(f"{where}: the video's sha256 is not 64 lowercase hex digits")
    for key, low in (("width", 1), ("height", 1), ("byte_size", 0)):
        if not isinstance(raw.get(key), int) or raw[key] < low:
            raise InvalidInput(f"{where}: the video's {key} {raw.get(key)!r} is not a positive integer")
    if not (_finite(raw.get("frame_interval_s"), 0) and raw["frame_interval_s"] > 0):
        raise InvalidInput(f"{where}: the video's frame_interval_s {raw.get('frame_interval_s')!r} is not > 0")
    if raw.get("duration_s") is not None and not _finite(raw["duration_s"], 0):
        raise InvalidInput(f"{where}: the video's duration_s {raw['duration_s']!r} is not a duration")
    texts = [raw.get("mime"), raw.get("container")]
    if not all(isinstance(t, str) and t for t in texts) or not isinstance(raw.get("source"), (str, type(None))):
        raise InvalidInput(f"{where}: the video's mime or container is missing")
    if any(isinstance(t, str) and "\x00" in t for t in (*texts, raw.get("source"))):
        raise InvalidInput(f"{where}: a NUL character in the video's fields (PostgreSQL text cannot hold one)")
    return db.NewVideo(**{name: raw.get(name) for name in db.VIDEO_FIELDS})


def _shared(where: str, raw: Any) -> tuple[db.SharedFrame, ...]:
    """The other videos a row's image is a frame of, each checked as a frame's own video is."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise InvalidInput(f"{where}: shared_videos is not a list of videos with their video_ts")
    shared = []
    for k, item in enumerate(raw):
        video = _video(f"{where} shared_videos[{k}]", item.get("video"), item.get("video_ts"))
        if video is None:
            raise InvalidInput(f"{where} shared_videos[{k}]: no video")
        shared.append(db.SharedFrame(video, item["video_ts"]))
    return tuple(shared)


def batches(part: Part) -> Iterator[list[db.ExchangeRow]]:
    vectors = _open_npy(part.img_emb)
    thumbs = _parquet_rows(part.thumbnails) if part.thumbnails is not None else None
    batch: list[db.ExchangeRow] = []
    for n, meta in enumerate(_parquet_rows(part.metadata)):
        thumb = next(thumbs, None) if thumbs is not None else None
        batch.append(_row(part, n, meta, thumb, vectors[n]))
        if len(batch) == BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


