"""Stored vectors read whole (not searched): the map's projection and the similarity heat-map."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

import numpy as np
import psycopg

from pgclip.db.models import ModelRow
from pgclip.db.queries import load

VECTORS = load("vectors.sql")


@dataclasses.dataclass(frozen=True)
class Stamp:
    """What changes whenever a model's vectors do."""

    count: int
    newest: dt.datetime | None


@dataclasses.dataclass(frozen=True)
class Vectors:
    ids: list[int]  # ascending
    matrix: np.ndarray  # len(ids) x dimension, float32


def stamp(conn: psycopg.Connection, model: ModelRow) -> Stamp:
    count, newest = conn.execute(VECTORS["stamp"], {"model_id": model.id}).fetchone()
    return Stamp(int(count), newest)


def read_vectors(conn: psycopg.Connection, model: ModelRow, *, limit: int | None = None) -> Vectors:
    """The model's vectors by image id; with ``limit``, the same fixed sample of that many each time."""
    statement, params = VECTORS["all"], {"model_id": model.id}
    if limit is not None:
        statement, params = VECTORS["sample"], {"model_id": model.id, "limit": limit}
    with conn.cursor(binary=True) as cur:
        rows = cur.execute(statement, params).fetchall()
    if not rows:
        return Vectors([], np.zeros((0, model.dimension), dtype=np.float32))
    return Vectors([r[0] for r in rows], np.stack([r[1].to_numpy() for r in rows]))


def vectors_of(conn: psycopg.Connection, model: ModelRow, image_ids: Sequence[int]) -> dict[int, np.ndarray]:
    """The model's vectors of those images that have one, by image id."""
    with conn.cursor(binary=True) as cur:
        rows = cur.execute(VECTORS["of_images"], {"model_id": model.id, "image_ids": list(image_ids)}).fetchall()
    return {r[0]: r[1].to_numpy() for r in rows}


def metadata_values(conn: psycopg.Connection, image_ids: Sequence[int], key: str, *,
                    max_chars: int) -> list[str | None]:
    """Each image's value for the top-level metadata ``key`` as text (None where it has none),
    in the order of ``image_ids``; at most ``max_chars`` characters each."""
    rows = conn.execute(VECTORS["metadata_values"],
                        {"ids": list(image_ids), "key": key, "max_chars": max_chars}).fetchall()
    return [r[0] for r in rows]


def metadata_keys(conn: psycopg.Connection, image_ids: Sequence[int], *, limit: int) -> list[str]:
    """The top-level metadata keys of these images, most common first (at most ``limit``)."""
    return [r[0] for r in conn.execute(VECTORS["metadata_keys"], {"ids": list(image_ids), "limit": limit})]
