"""Storing images: rows, bytes, captions and metadata, in the caller's transaction."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

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


def insert_images(conn: psycopg.Connection, images: Sequence[NewImage]) -> tuple[dict[str, int], dict[str, int]]:
    """Insert images not yet stored, with their bytes.

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
    with conn.cursor() as cur:
        cur.executemany(
            IMAGES["insert_blob"], [{"image_id": added[sha], "data": by_sha[sha].data} for sha in added]
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
