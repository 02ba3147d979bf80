"""The pgclip schema as SQLAlchemy models: the source of truth alembic checks against.

Everything lives in the ``pgclip`` schema. Two decisions shape it (DESIGN.md):

* Vectors live in ``embeddings``, keyed by (image, model), never on ``images``:
  a non-HOT update re-inserts a row into every index of its table, so a vector
  beside metadata would be re-inserted into the HNSW graph on every metadata
  edit; and models of different dimensions must coexist. The column is an
  untyped ``vector``; each model gets a partial expression index
  ``((embedding::vector(dim)) vector_cosine_ops) WHERE model_id = <id>``,
  created when the model is registered (see ``pgclip.db.models``).
* The work queue is its own narrow table (``embedding_jobs``) so that its many
  state changes never touch the big tables.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Text,
    func,
)
from sqlalchemy import text as sql
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, REGCONFIG, TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA = "pgclip"

# Constraint names are what the error translation keys on; keep them stable.
NAMING = {
    "ix": "%(table_name)s_%(column_0_N_name)s_idx",
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "ck": "%(table_name)s_%(constraint_name)s_check",
    "fk": "%(table_name)s_%(column_0_name)s_fkey",
    "pk": "%(table_name)s_pkey",
}

JOB_STATES = ("pending", "leased", "done", "failed")
MODEL_STATES = ("building", "active", "retired")
INDEX_KINDS = ("hnsw", "ivfflat", "none")
STORAGES = ("vector", "halfvec")


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA, naming_convention=NAMING)


TAKEN_AT_RANGE = "taken_at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 23:59:59.999999+00'"


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class Image(Base):
    """One picture, identified by the sha256 of its bytes (the same file twice is one row)."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    sha256: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    source: Mapped[str | None] = mapped_column(Text, comment="original filename or path, as ingested")
    source_bytes: Mapped[bytes | None] = mapped_column(
        LargeBinary,
        comment="the exact bytes of source when they are not valid UTF-8 (source then escapes them as \\xNN); else null",
    )
    byte_size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # Null only for an image added with SQL (pgclip.image_inbox) until the worker that
    # embeds it has decoded it: SQL cannot read an image's size or format.
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(Text, comment="PIL format name, e.g. JPEG")
    mime: Mapped[str | None] = mapped_column(Text)
    taken_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = _now()
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, server_default=sql("'{}'::jsonb")
    )
    # A frame sampled from a video (migration 0010): both set, or both null for a picture.
    video_id: Mapped[int | None] = mapped_column(
        ForeignKey("videos.id", ondelete="CASCADE"), comment="the video this image is a frame of; null for a picture"
    )
    video_ts: Mapped[float | None] = mapped_column(
        Double, comment="seconds from the start of the video; null for a picture"
    )

    __table_args__ = (
        CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name="sha256_hex"),
        CheckConstraint("width > 0 AND height > 0", name="positive_size"),
        CheckConstraint("jsonb_typeof(metadata) = 'object'", name="metadata_object"),
        CheckConstraint("(video_id IS NULL) = (video_ts IS NULL) AND video_ts >= 0", name="video_frame"),
        # Migration 0018: times every client reads back (core.times.EARLIEST / LATEST).
        CheckConstraint(TAKEN_AT_RANGE, name="taken_at_range"),
        Index("images_metadata_idx", "metadata", postgresql_using="gin", postgresql_ops={"metadata": "jsonb_path_ops"}),
        Index("images_taken_at_idx", "taken_at"),
        Index("images_video_id_idx", "video_id", postgresql_where=sql("video_id IS NOT NULL")),
    )


class ImageBlob(Base):
    """The original bytes, apart from ``images`` so metadata scans never read them."""

    __tablename__ = "image_blobs"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class Video(Base):
    """A video whose sampled frames are images (``images.video_id``, ``images.video_ts``), migration 0010."""

    __tablename__ = "videos"
    __table_args__ = (
        CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name="sha256_hex"),
        CheckConstraint("width > 0 AND height > 0", name="positive_size"),
        CheckConstraint("frame_interval_s > 0", name="frame_interval"),
        {"comment": "a video whose sampled frames are images (images.video_id, images.video_ts)"},
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    sha256: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    source: Mapped[str | None] = mapped_column(Text, comment="original filename or path, as ingested")
    source_bytes: Mapped[bytes | None] = mapped_column(
        LargeBinary,
        comment="the exact bytes of source when they are not valid UTF-8 (source then escapes them as \\xNN); else null",
    )
    byte_size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    mime: Mapped[str] = mapped_column(Text, nullable=False)
    container: Mapped[str] = mapped_column(Text, nullable=False, comment="mp4, mov, webm, matroska or avi")
    duration_s: Mapped[float | None] = mapped_column(
        Double, comment="seconds, as the container declares it; null when it does not"
    )
    frame_interval_s: Mapped[float] = mapped_column(
        Double, nullable=False,
        comment="seconds between sampled frames (wider than asked when the frame cap would be exceeded)",
    )
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[dt.datetime] = _now()


class VideoBlob(Base):
    """A video's original bytes (stored uncompressed: a Range request reads only its chunks)."""

    __tablename__ = "video_blobs"

    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class SharedFrame(Base):
    """A video's frame whose bytes are an image stored already (another video's frame, or a
    picture), migration 0015: the video lists it among its frames, and when the video that owns
    the image is deleted, the image becomes this video's frame (a trigger on ``videos``)."""

    __tablename__ = "shared_frames"

    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    video_ts: Mapped[float] = mapped_column(Double, nullable=False, comment="seconds from the start of this video")

    __table_args__ = (
        CheckConstraint("video_ts >= 0", name="video_ts"),
        Index("shared_frames_image_id_idx", "image_id"),
        {"comment": "a frame of a video whose bytes are an image stored already (another video's frame, or a picture)"},
    )


class ImageInbox(Base):
    """Where SQL alone adds images (INSERT or COPY): a statement-level trigger takes each
    statement's rows into ``images``, ``image_blobs``, ``captions`` and the queue, and
    deletes them from here (``db/sql/sql_ingest.sql``)."""

    __tablename__ = "image_inbox"
    __table_args__ = (
        CheckConstraint("jsonb_typeof(metadata) = 'object'", name="metadata_object"),
        {"comment": "INSERT or COPY (data, source, captions, metadata) here to add images with SQL; "
                    "rows are taken at once"},
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    source: Mapped[str | None] = mapped_column(Text)
    captions: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False, server_default=sql("'{}'"))
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, server_default=sql("'{}'::jsonb")
    )
    # Hashed once, as the row arrives: the trigger's statements all join on it.
    sha256: Mapped[str] = mapped_column(Text, Computed("encode(sha256(data), 'hex')", persisted=True))


class Thumbnail(Base):
    """A small WebP rendering for the web page, written by the worker that embeds the image."""

    __tablename__ = "thumbnails"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    mime: Mapped[str] = mapped_column(Text, nullable=False, server_default=sql("'image/webp'"))
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class Caption(Base):
    """Text describing an image; several per image, searchable through ``tsv``."""

    __tablename__ = "captions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    text: Mapped[str] = mapped_column(Text, nullable=False)
    # The text search configuration is stored per caption (from PGCLIP_TEXT_SEARCH_CONFIG
    # at ingest) so the generated column stays immutable and changing the setting later
    # never silently re-parses old captions.
    ts_config: Mapped[str] = mapped_column(REGCONFIG, nullable=False, server_default=sql("'english'::regconfig"))
    tsv: Mapped[Any] = mapped_column(TSVECTOR, Computed("to_tsvector(ts_config, text)", persisted=True))
    created_at: Mapped[dt.datetime] = _now()

    __table_args__ = (
        CheckConstraint("length(text) > 0", name="not_empty"),
        # The image first: ready to be distributed by image_id (docs/scaling.md, migration 0013).
        PrimaryKeyConstraint("image_id", "id", name="captions_pkey"),
        Index("captions_tsv_idx", "tsv", postgresql_using="gin"),
        # md5 of the text, not the text: a B-tree entry must stay under ~2.7 kB.
        Index("captions_image_text_key", "image_id", sql("md5(text)"), unique=True),
    )


class Model(Base):
    """A CLIP model this database knows; exactly one is ``active`` and answers searches."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, Identity(always=False), primary_key=True)
    name: Mapped[str] = mapped_column(Text, nullable=False, comment="open_clip model name")
    pretrained: Mapped[str] = mapped_column(
        Text, nullable=False, comment="open_clip pretrained tag, or sha256:<digest> of a local checkpoint"
    )
    dimension: Mapped[int] = mapped_column(Integer, nullable=False)
    state: Mapped[str] = mapped_column(Text, nullable=False, server_default=sql("'building'"))
    created_at: Mapped[dt.datetime] = _now()
    index_kind: Mapped[str] = mapped_column(
        Text, nullable=False, server_default=sql("'hnsw'"), comment="hnsw, ivfflat, or none (exact search)"
    )
    storage: Mapped[str] = mapped_column(
        Text, nullable=False, server_default=sql("'vector'"),
        comment="the type the index compares vectors as: vector, or halfvec",
    )
    index_params: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=sql("'{}'"),
        comment="m, ef_construction, ef_search (hnsw); lists, probes (ivfflat); absent: the defaults",
    )

    __table_args__ = (
        CheckConstraint(f"state IN {MODEL_STATES}", name="state"),
        CheckConstraint(f"index_kind IN {INDEX_KINDS}", name="index_kind"),
        CheckConstraint(f"storage IN {STORAGES}", name="storage"),
        CheckConstraint("jsonb_typeof(index_params) = 'object'", name="index_params"),
        # pgvector indexes at most 2,000 dimensions of `vector`.
        CheckConstraint("dimension BETWEEN 1 AND 2000", name="dimension"),
        Index("models_name_pretrained_key", "name", "pretrained", unique=True),
        Index("models_one_active_key", "state", unique=True, postgresql_where=sql("state = 'active'")),
    )


class Embedding(Base):
    """One model's vector of one image (L2-normalised; compared by cosine distance)."""

    __tablename__ = "embeddings"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    embedding: Mapped[Any] = mapped_column(Vector(), nullable=False)
    created_at: Mapped[dt.datetime] = _now()

    __table_args__ = (Index("embeddings_model_id_idx", "model_id"),)


class EmbeddingJob(Base):
    """The queue: one row per (image, model) to embed, claimed by workers with a lease."""

    __tablename__ = "embedding_jobs"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), nullable=False)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), nullable=False)
    state: Mapped[str] = mapped_column(Text, nullable=False, server_default=sql("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=sql("0"))
    run_after: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(),
        comment="a pending job is not claimed before this (retry backoff)",
    )
    lease_until: Mapped[dt.datetime | None] = mapped_column(
        DateTime(timezone=True), comment="while leased: when the lease expires and the job may be claimed again"
    )
    locked_by: Mapped[str | None] = mapped_column(Text, comment="worker id holding the lease")
    last_error: Mapped[str | None] = mapped_column(Text)
    enqueued_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = _now()

    __table_args__ = (
        CheckConstraint(f"state IN {JOB_STATES}", name="state"),
        CheckConstraint("attempts >= 0", name="attempts"),
        CheckConstraint(
            "(state = 'leased') = (lease_until IS NOT NULL AND locked_by IS NOT NULL)", name="lease"
        ),
        # At most one open job per image and model: enqueueing twice is a no-op.
        Index(
            "embedding_jobs_open_key", "image_id", "model_id", unique=True,
            postgresql_where=sql("state IN ('pending', 'leased')"),
        ),
        # The claim's index: open jobs of one model in the order they become claimable
        # (a pending job at run_after, a leased one when its lease expires).
        Index(
            "embedding_jobs_claim_idx", "model_id", sql("COALESCE(lease_until, run_after)"), "id",
            postgresql_where=sql("state IN ('pending', 'leased')"),
        ),
        Index("embedding_jobs_image_id_idx", "image_id"),
        Index("embedding_jobs_failed_idx", "model_id", postgresql_where=sql("state = 'failed'")),
    )


class TextVector(Base):
    """The shared cache of query-text vectors (``db/sql/text.sql``): ``pgclip.embed_text``,
    the API and the CLI read and fill it, the least recently used rows over a bound are evicted."""

    __tablename__ = "text_vectors"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    embedding: Mapped[Any] = mapped_column(Vector(), nullable=False)
    last_used: Mapped[dt.datetime] = _now()

    __table_args__ = (
        CheckConstraint("length(text) BETWEEN 1 AND 1000", name="length"),
        # md5 of the text, not the text: a B-tree entry must stay under ~2.7 kB.
        Index("text_vectors_model_text_key", "model_id", sql("md5(text)"), unique=True),
        Index("text_vectors_lru_idx", "model_id", "last_used"),
    )


class TextRequest(Base):
    """A text ``pgclip.embed_text`` asked the running workers to embed; gone once answered."""

    __tablename__ = "text_requests"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    requested_at: Mapped[dt.datetime] = _now()
    error: Mapped[str | None] = mapped_column(Text, comment="why the worker could not embed it")

    __table_args__ = (
        CheckConstraint("length(text) BETWEEN 1 AND 1000", name="length"),
        Index("text_requests_model_text_key", "model_id", sql("md5(text)"), unique=True),
    )


class File(Base):
    """A file of a folder kept in sync (``pgclip sync``, ``pgclip search --in``): which image its
    bytes are, and the size and mtime that let the next sync skip it without reading it."""

    __tablename__ = "files"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    # Sorted bytewise, so that a folder's files are one range of files_path_idx (the search's
    # folder filter, db/sql/search.sql).
    path: Mapped[str] = mapped_column(
        Text(collation="C"), nullable=False,
        comment="absolute path; bytes that are not UTF-8 written \\xNN, as images.source writes them",
    )
    path_bytes: Mapped[bytes] = mapped_column(LargeBinary, nullable=False, unique=True,
                                              comment="the exact bytes of the path: the file's identity")
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    video_id: Mapped[int | None] = mapped_column(
        ForeignKey("videos.id", ondelete="CASCADE"), comment="a video file: the video whose frames are its images"
    )
    owns_image: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=sql("false"),
        comment="the image (or video) came in through sync: it goes when no file row references it any more",
    )
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    mtime_ns: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str | None] = mapped_column(Text, comment="of the bytes last synced (null: unreadable)")
    problem: Mapped[str | None] = mapped_column(
        Text, comment="why the file could not be stored (then image_id and video_id are null); tried again once it "
                      "changes"
    )
    synced_at: Mapped[dt.datetime] = _now()
    missing_since: Mapped[dt.datetime | None] = mapped_column(
        DateTime(timezone=True), comment="gone from disk, kept by pgclip sync --keep-missing"
    )

    __table_args__ = (
        CheckConstraint("num_nonnulls(image_id, video_id, problem) = 1", name="one_target"),
        Index("files_path_idx", "path"),
        Index("files_image_id_idx", "image_id"),
        Index("files_video_id_idx", "video_id"),
        # Whether a folder holds a video (the search's folder filter asks, to choose its form).
        Index("files_video_path_idx", "path", postgresql_where=sql("video_id IS NOT NULL")),
    )
