"""Export and import round-trips (the statements are in ``sql/exchange.sql``).

An export reads one model's vectors, with the images around them, from one
snapshot through a server-side cursor. An import writes rows in the caller's
transaction and follows one merge rule: images are matched by sha256, and a
database that already has an image keeps everything it has and gains only what
it lacks (see the ``merge_images`` section). File formats are not this module's
business (``pgclip.application.exchange``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from pgclip.db.engine import connect
from pgclip.db.images import add_captions
from pgclip.db.models import MODELS, ModelRow, get_model, index_ddl, vector_count
from pgclip.db.queries import load
from pgclip.db.videos import NewVideo

EXCHANGE = load("exchange.sql")
# A frame's video travels as what ingest knows of a video before storing it (its bytes never do).
VIDEO_FIELDS = tuple(f.name for f in dataclasses.fields(NewVideo))


@dataclasses.dataclass(frozen=True)
class SharedFrame:
    """Another video the image is a frame of (the frame is stored once, owned by one video)."""

    video: NewVideo
    video_ts: float  # seconds from that video's start


@dataclasses.dataclass(frozen=True)
class ExchangeRow:
    """One image with one model's vector: a row of an export, or of an import."""

    image_id: int | None  # the exporting database's id; ignored by an import (images match by sha256)
    sha256: str
    source: str | None
    source_bytes: bytes | None
    byte_size: int
    width: int
    height: int
    format: str
    mime: str
    taken_at: dt.datetime | None
    metadata: dict[str, Any]
    captions: list[str]
    embedding: np.ndarray  # float32, the model's dimension
    thumbnail: bytes | None = None
    thumbnail_mime: str | None = None
    thumbnail_width: int | None = None
    thumbnail_height: int | None = None
    video: NewVideo | None = None  # a frame's video; None for a picture
    video_ts: float | None = None  # seconds from the video's start; None for a picture
    shared: tuple[SharedFrame, ...] = ()  # the other videos it is a frame of


@dataclasses.dataclass(frozen=True)
class ExportCounts:
    vectors: int  # images with the model's vector: the rows an export writes
    images: int  # every image in the database


@contextmanager
def snapshot(conn: psycopg.Connection) -> Iterator[None]:
    """A read-only repeatable-read transaction: every read inside sees the same data."""
    with conn.transaction():
        conn.execute(EXCHANGE["snapshot"])
        yield


def export_counts(conn: psycopg.Connection, model: ModelRow) -> ExportCounts:
    vectors, images = conn.execute(EXCHANGE["export_counts"], {"model_id": model.id}).fetchone()
    return ExportCounts(int(vectors), int(images))


def _export_row(cursor: psycopg.Cursor) -> Any:
    names = [c.name for c in cursor.description]

    def make(values: Sequence[Any]) -> ExchangeRow:
        row = dict(zip(names, values, strict=True))
        row["embedding"] = row["embedding"].to_numpy().astype(np.float32, copy=False)
        row["captions"] = list(row["captions"])
        for key in ("source_bytes", "thumbnail", "video_source_bytes"):
            if row[key] is not None:
                row[key] = bytes(row[key])
        video = {name: row.pop(f"video_{name}") for name in VIDEO_FIELDS}
        row["video"] = NewVideo(**video) if video["sha256"] is not None else None
        return ExchangeRow(**row)

    return make


def export_rows(
    conn: psycopg.Connection, model: ModelRow, *, thumbnails: bool, batch_rows: int
) -> Iterator[list[ExchangeRow]]:
    """The model's rows in image id order, ``batch_rows`` at a time, through a server-side
    cursor (call inside :func:`snapshot`: a named cursor lives in its transaction)."""
    with conn.cursor(name="pgclip_export", binary=True, row_factory=_export_row) as cur:
        cur.itersize = batch_rows
        cur.execute(EXCHANGE["export_rows"], {"model_id": model.id, "thumbnails": thumbnails})
        while rows := cur.fetchmany(batch_rows):
            yield _with_shared(conn, rows)


def _with_shared(conn: psycopg.Connection, rows: list[ExchangeRow]) -> list[ExchangeRow]:
    """The rows with the other videos each is a frame of (one query per batch, in the snapshot)."""
    shared: dict[int, list[SharedFrame]] = {}
    for image_id, ts, *video in conn.execute(EXCHANGE["export_shared"], {"image_ids": [r.image_id for r in rows]}):
        fields = dict(zip(VIDEO_FIELDS, video, strict=True))
        if fields["source_bytes"] is not None:
            fields["source_bytes"] = bytes(fields["source_bytes"])
        shared.setdefault(image_id, []).append(SharedFrame(NewVideo(**fields), ts))
    return [dataclasses.replace(r, shared=tuple(shared[r.image_id])) if r.image_id in shared else r for r in rows]


# --- import ---------------------------------------------------------------------------


def register_model(conn: psycopg.Connection, name: str, pretrained: str, dimension: int,
                   index_params: dict[str, Any]) -> tuple[ModelRow, bool]:
    """The model's row, registered in the caller's transaction when the database does not
    know it yet (state ``building``; its index is built after the import commits, by
    :func:`build_index`, once over all the vectors). Returns (model, newly registered)."""
    known = get_model(conn, name, pretrained)
    if known is not None:
        return known, False
    conn.execute(MODELS["register"], {"name": name, "pretrained": pretrained, "dimension": dimension,
                                      "index_params": Jsonb(index_params)})
    model = get_model(conn, name, pretrained)
    assert model is not None
    return model, True


def build_index(url: str, model: ModelRow) -> None:
    """Build the model's vector index if it has none, without blocking writers
    (``CREATE INDEX CONCURRENTLY``, outside any transaction)."""
    if model.index_kind == "none":
        return
    with connect(url, role="import", autocommit=True) as conn:
        conn.execute(index_ddl(model, rows=vector_count(conn, model), concurrently=True))


@dataclasses.dataclass
class ImportCounts:
    rows: int = 0  # rows read
    images_added: int = 0  # images the database did not have
    images_present: int = 0  # images matched by sha256
    vectors_added: int = 0
    vectors_kept: int = 0  # images that already had the model's vector (theirs is kept)
    captions_added: int = 0
    jobs_done: int = 0  # open jobs closed + done jobs recorded
    thumbnails_added: int = 0
    videos_added: int = 0  # videos (without their bytes) the frames' links needed
    frames_linked: int = 0  # images that became a frame of their video
    frames_shared: int = 0  # links to another video an image is a frame of (pgclip.shared_frames)

    def add(self, other: ImportCounts) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def import_rows(conn: psycopg.Connection, model: ModelRow, rows: Sequence[ExchangeRow], *,
                ts_config: str) -> ImportCounts:
    """Write a batch of rows for ``model`` in the caller's transaction, by the merge rule
    (module docstring). A sha256 given twice counts once (the first row wins)."""
    counts = ImportCounts(rows=len(rows))
    unique: dict[str, ExchangeRow] = {}
    for row in rows:
        unique.setdefault(row.sha256, row)
    batch = list(unique.values())
    if not batch:
        return counts
    added = dict(conn.execute(EXCHANGE["import_images"], {
        "sha256": [r.sha256 for r in batch], "source": [r.source for r in batch],
        "source_bytes": [r.source_bytes for r in batch], "byte_size": [r.byte_size for r in batch],
        "width": [r.width for r in batch], "height": [r.height for r in batch],
        "format": [r.format for r in batch], "mime": [r.mime for r in batch],
        "taken_at": [r.taken_at for r in batch], "metadata": [Jsonb(r.metadata) for r in batch],
    }).fetchall())
    ids = {sha: image_id for image_id, sha in added.items()}
    rest = [r for r in batch if r.sha256 not in ids]
    if rest:
        matched = conn.execute(EXCHANGE["merge_images"], {
            "sha256": [r.sha256 for r in rest], "metadata": [Jsonb(r.metadata) for r in rest],
            "taken_at": [r.taken_at for r in rest], "new_ids": list(added),
        }).fetchall()
        ids.update({sha: image_id for image_id, sha in matched})
    counts.images_added, counts.images_present = len(added), len(batch) - len(added)
    # Rows whose image vanished between the two statements (deleted meanwhile) are skipped.
    batch = [r for r in batch if r.sha256 in ids]

    counts.captions_added = add_captions(
        conn, [(ids[r.sha256], text) for r in batch for text in r.captions], ts_config=ts_config)
    frames = [r for r in batch if r.video is not None and r.video_ts is not None]
    # (image id, video, time) of every video each image is a frame of: its owner first.
    links = [(ids[r.sha256], r.video, r.video_ts) for r in frames]
    links += [(ids[r.sha256], s.video, s.video_ts) for r in batch for s in r.shared]
    if links:
        videos = {video.sha256: video for _, video, _ in links}
        columns = {name: [getattr(v, name) for v in videos.values()] for name in VIDEO_FIELDS}
        counts.videos_added = len(conn.execute(EXCHANGE["import_videos"], columns).fetchall())
        if frames:
            counts.frames_linked = conn.execute(EXCHANGE["link_frames"], {
                "image_ids": [ids[r.sha256] for r in frames], "video_sha256": [r.video.sha256 for r in frames],  # type: ignore[union-attr]
                "video_ts": [r.video_ts for r in frames],
            }).rowcount
        counts.frames_shared = conn.execute(EXCHANGE["share_frames"], {
            "image_ids": [i for i, _, _ in links], "video_sha256": [v.sha256 for _, v, _ in links],
            "video_ts": [ts for _, _, ts in links],
        }).rowcount
    with_vector = [r[0] for r in conn.execute(EXCHANGE["import_vectors"], {
        "model_id": model.id, "image_ids": [ids[r.sha256] for r in batch],
        "vectors": [np.asarray(r.embedding, dtype=np.float32) for r in batch],
    }).fetchall()]
    counts.vectors_added, counts.vectors_kept = len(with_vector), len(batch) - len(with_vector)
    if with_vector:
        closed, recorded = conn.execute(
            EXCHANGE["finish_jobs"], {"model_id": model.id, "image_ids": with_vector}).fetchone()
        counts.jobs_done = closed + recorded
    thumbs = [r for r in batch if r.thumbnail is not None]
    if thumbs:
        counts.thumbnails_added = conn.execute(EXCHANGE["import_thumbnails"], {
            "image_ids": [ids[r.sha256] for r in thumbs], "mime": [r.thumbnail_mime or "image/webp" for r in thumbs],
            "width": [r.thumbnail_width for r in thumbs], "height": [r.thumbnail_height for r in thumbs],
            "data": [r.thumbnail for r in thumbs],
        }).rowcount
    return counts
