"""Storing images: rows, bytes, captions and metadata, in the caller's transaction."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from pgclip.core.errors import NotFound
from pgclip.db.queries import load

IMAGES = load("images.sql")


@dataclasses.dataclass(frozen=True)
class NewImage:
    """What ingest knows about an image before it is stored."""

    sha256: str
    source: str | None
    byte_size: int
    width: int
    height: int
    format: str
    mime: str
    taken_at: dt.datetime | None
    metadata: dict[str, Any]
    data: bytes
    source_bytes: bytes | None = None  # the name's exact bytes when it is not UTF-8 (source escapes them)


def insert_images(conn: psycopg.Connection, images: Sequence[NewImage]) -> tuple[dict[str, int], dict[str, int]]:
    """Insert images not yet stored, with their bytes (and the bytes of stored images that lack them).

    Returns (added, existing): sha256 -> image id for the new rows and for the
    ones already in the database.
    """
    if not images:
        return {}, {}
    by_sha = {img.sha256: img for img in images}  # the same file twice in one batch is one image
    batch = list(by_sha.values())
    rows = conn.execute(
        IMAGES["insert_images"],
        {
            "sha256": [i.sha256 for i in batch],
            "source": [i.source for i in batch],
            "source_bytes": [i.source_bytes for i in batch],
            "byte_size": [i.byte_size for i in batch],
            "width": [i.width for i in batch],
            "height": [i.height for i in batch],
            "format": [i.format for i in batch],
            "mime": [i.mime for i in batch],
            "taken_at": [i.taken_at for i in batch],
            "metadata": [Jsonb(i.metadata) for i in batch],
        },
    ).fetchall()
    added = {sha: image_id for image_id, sha in rows}
    rest = [sha for sha in by_sha if sha not in added]
    existing = {}
    if rest:
        existing = {sha: image_id for image_id, sha in conn.execute(IMAGES["ids_by_sha256"], {"sha256": rest})}
    # Bytes for the new rows, and for known rows stored without them (`pgclip import` brings none).
    bare = {r[0] for r in conn.execute(IMAGES["without_bytes"], {"image_ids": list(existing.values())})} \
        if existing else set()
    wanted = {**added, **{sha: i for sha, i in existing.items() if i in bare}}
    with conn.cursor() as cur:
        cur.executemany(
            IMAGES["insert_blob"], [{"image_id": image_id, "data": by_sha[sha].data} for sha, image_id in wanted.items()]
        )
    return added, existing


def merge_metadata(conn: psycopg.Connection, metadata: dict[int, dict[str, Any]]) -> None:
    items = [(image_id, m) for image_id, m in metadata.items() if m]
    if items:
        conn.execute(
            IMAGES["merge_metadata"],
            {"image_ids": [i for i, _ in items], "metadata": [Jsonb(m) for _, m in items]},
        )


def add_captions(conn: psycopg.Connection, captions: Sequence[tuple[int, str]], *, ts_config: str) -> int:
    """Add (image id, text) captions; returns how many were new."""
    if not captions:
        return 0
    rows = conn.execute(
        IMAGES["add_captions"],
        {"image_ids": [c[0] for c in captions], "texts": [c[1] for c in captions], "ts_config": ts_config},
    ).fetchall()
    return len(rows)


UNSET: Any = object()


def edit_image(
    conn: psycopg.Connection,
    image_id: int,
    *,
    metadata: dict[str, Any] | None = None,
    replace_metadata: bool = False,
    unset_keys: Sequence[str] = (),
    taken_at: dt.datetime | None | Any = UNSET,
    new_captions: Sequence[str] = (),
    remove_caption_ids: Sequence[int] = (),
    ts_config: str = "english",
) -> None:
    """Change an image's metadata, date and captions in the caller's transaction.

    Raises NotFound for an unknown image or a caption id that is not the image's.
    """
    if conn.execute(IMAGES["lock_image"], {"image_id": image_id}).fetchone() is None:
        raise NotFound(f"no image with id {image_id}")
    if metadata is not None or replace_metadata:
        conn.execute(IMAGES["set_metadata"],
                     {"image_id": image_id, "metadata": Jsonb(metadata or {}), "replace": replace_metadata})
    if unset_keys:
        conn.execute(IMAGES["unset_metadata"], {"image_id": image_id, "keys": list(unset_keys)})
    if taken_at is not UNSET:
        conn.execute(IMAGES["set_taken_at"], {"image_id": image_id, "taken_at": taken_at})
    if remove_caption_ids:
        removed = {r[0] for r in conn.execute(
            IMAGES["remove_captions"], {"image_id": image_id, "caption_ids": list(remove_caption_ids)})}
        missing = sorted(set(remove_caption_ids) - removed)
        if missing:
            raise NotFound(f"image {image_id} has no caption with id {missing[0]}")
    if new_captions:
        add_captions(conn, [(image_id, text) for text in new_captions], ts_config=ts_config)


def delete_images(conn: psycopg.Connection, image_ids: Sequence[int]) -> set[int]:
    """Delete images and everything hanging off them; returns the ids that existed."""
    rows = conn.execute(IMAGES["delete_images"], {"image_ids": list(image_ids)}).fetchall()
    return {r[0] for r in rows}


# --- reading one image -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Caption:
    id: int
    text: str


@dataclasses.dataclass(frozen=True)
class ImageDetail:
    """One stored image as its page shows it, seen from one model (``embedded``, the queue)."""

    id: int
    sha256: str
    source: str | None
    width: int | None  # none of these four until a worker decodes an image added with SQL
    height: int | None
    format: str | None
    mime: str | None
    byte_size: int
    taken_at: dt.datetime | None
    created_at: dt.datetime
    metadata: dict[str, Any]
    embedded: bool  # the model's vector exists
    queue_state: str | None  # of the newest job for the model; None: never queued for it
    last_error: str | None
    has_thumbnail: bool


def image_detail(conn: psycopg.Connection, image_id: int, model_id: int) -> ImageDetail:
    """The image as model ``model_id`` sees it; NotFound if there is none."""
    with conn.cursor(row_factory=class_row(ImageDetail)) as cur:
        row = cur.execute(IMAGES["detail"], {"image_id": image_id, "model_id": model_id}).fetchone()
    if row is None:
        raise NotFound(f"no image with id {image_id}")
    return row


def captions(conn: psycopg.Connection, image_id: int) -> list[Caption]:
    """The image's captions, oldest first."""
    with conn.cursor(row_factory=class_row(Caption)) as cur:
        return cur.execute(IMAGES["captions"], {"image_id": image_id}).fetchall()


def image_exists(conn: psycopg.Connection, image_id: int) -> bool:
    return bool(conn.execute(IMAGES["exists"], {"image_id": image_id}).fetchone()[0])


def known_ids(conn: psycopg.Connection, image_ids: Sequence[int]) -> set[int]:
    """The ids among ``image_ids`` that name stored images."""
    return {r[0] for r in conn.execute(IMAGES["known_ids"], {"image_ids": list(image_ids)})}


@dataclasses.dataclass(frozen=True)
class Blob:
    data: bytes
    mime: str | None  # an image added with SQL has none until a worker has decoded it
    sha256: str | None = None  # the original's (a thumbnail has none of its own)


def original(conn: psycopg.Connection, image_id: int) -> Blob:
    """The image's bytes as stored; NotFound if there is no such image (or no bytes stored for it)."""
    row = conn.execute(IMAGES["original"], {"image_id": image_id}).fetchone()
    if row is None:
        if image_exists(conn, image_id):
            raise NotFound(f"image {image_id} has no stored bytes")
        raise NotFound(f"no image with id {image_id}")
    return Blob(bytes(row[0]), row[1], row[2])


def thumbnail(conn: psycopg.Connection, image_id: int) -> Blob:
    """The image's thumbnail; NotFound if there is no such image or it has not been embedded yet."""
    row = conn.execute(IMAGES["thumbnail"], {"image_id": image_id}).fetchone()
    if row is None:
        if image_exists(conn, image_id):
            raise NotFound(f"image {image_id} has no thumbnail (not embedded yet)")
        raise NotFound(f"no image with id {image_id}")
    return Blob(bytes(row[0]), row[1])


@dataclasses.dataclass(frozen=True)
class Described:
    metadata: dict[str, Any]
    taken_at: dt.datetime | None


def described(conn: psycopg.Connection, image_id: int) -> Described:
    """The image's metadata and date; NotFound if there is no such image."""
    with conn.cursor(row_factory=class_row(Described)) as cur:
        row = cur.execute(IMAGES["metadata"], {"image_id": image_id}).fetchone()
    if row is None:
        raise NotFound(f"no image with id {image_id}")
    return row


def sources(conn: psycopg.Connection, image_ids: Sequence[int]) -> dict[int, str | None]:
    """Each stored image's source (its path or upload name), by id."""
    return dict(conn.execute(IMAGES["sources"], {"image_ids": list(image_ids)}).fetchall())


def decode_state(conn: psycopg.Connection, image_ids: Sequence[int]) -> tuple[set[int], set[int]]:
    """The ids among ``image_ids`` of images added with SQL and not yet decoded (no width),
    and those of images that have their thumbnail."""
    rows = conn.execute(IMAGES["decode_state"], {"image_ids": list(image_ids)}).fetchall()
    return {i for i, unprobed, _ in rows if unprobed}, {i for i, _, thumbnailed in rows if thumbnailed}


def blobs(conn: psycopg.Connection, image_ids: Sequence[int]) -> dict[int, bytes]:
    """The stored bytes of these images, by id (an image without bytes is left out)."""
    rows = conn.execute(IMAGES["blobs"], {"image_ids": list(image_ids)}).fetchall()
    return {image_id: bytes(data) for image_id, data in rows}
