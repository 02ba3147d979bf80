"""What `pgclip eval` reads and writes besides searches: stored images by path, dataset tags, evaluation-set
membership, filtered corpora, cached caption vectors."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from pgclip.core.errors import InvalidInput
from pgclip.db import search as db_search
from pgclip.db.models import ModelRow
from pgclip.db.queries import load

EVALUATION = load("evaluation.sql")


@dataclasses.dataclass(frozen=True)
class StoredSource:
    image_id: int
    source: str
    embedded: bool  # the model has its vector


@dataclasses.dataclass(frozen=True)
class Tags:
    dataset: str | None
    label: str | None


@dataclasses.dataclass(frozen=True)
class DatasetImage:
    image_id: int
    sha256: str
    dataset: str | None  # its tags as stored now
    label: str | None
    embedded: bool


def stored_sources(conn: psycopg.Connection, model: ModelRow) -> list[StoredSource]:
    """Every image that has a source path, with whether ``model`` has its vector."""
    with conn.cursor(row_factory=class_row(StoredSource)) as cur:
        return cur.execute(EVALUATION["sources"], {"model_id": model.id}).fetchall()


def filter_clause(conn: psycopg.Connection, filters: dict[str, Any]) -> sql.Composable:
    """The search's own WHERE clause for ``filters`` (over images ``i``), for the two statements below.

    InvalidInput for an unknown key or a bad value, as a search would say.
    """
    unknown = set(filters) - db_search.FILTER_KEYS
    if unknown:
        raise InvalidInput(f"unknown filter {min(unknown)!r} (known: {', '.join(sorted(db_search.FILTER_KEYS))})")
    try:
        with conn.transaction():
            where = conn.execute(EVALUATION["filter_clause"], {"filters": Jsonb(filters)}).fetchone()[0]
    except psycopg.Error as exc:
        raise db_search.translate(exc) from exc
    return sql.SQL(where)


def corpus_size(conn: psycopg.Connection, model: ModelRow, where: sql.Composable) -> int:
    """How many images with ``model``'s vector pass the filter ``where`` (see :func:`filter_clause`)."""
    # The model id as a literal, as in every vector query (see pgclip.db.models.vector_sql).
    statement = sql.SQL(EVALUATION["corpus_size"]).format(model_id=sql.Literal(int(model.id)), where=where)
    return int(conn.execute(statement).fetchone()[0])


def passing_filter(conn: psycopg.Connection, image_ids: Sequence[int], where: sql.Composable) -> set[int]:
    """The ids among ``image_ids`` whose images pass the filter ``where``."""
    statement = sql.SQL(EVALUATION["passing_filter"]).format(where=where)
    return {r[0] for r in conn.execute(statement, {"image_ids": list(image_ids)})}


def dataset_tags(conn: psycopg.Connection, sha256: Iterable[str]) -> dict[str, Tags]:
    """The stored images among these content hashes, with the dataset and class they are tagged with."""
    rows = conn.execute(EVALUATION["dataset_tags"], {"sha256": list(sha256)}).fetchall()
    return {sha: Tags(dataset, label) for sha, dataset, label in rows}


def dataset_images(conn: psycopg.Connection, model: ModelRow, sha256: Iterable[str]) -> list[DatasetImage]:
    """The stored images among these content hashes, by id, with their tags and whether ``model`` has their vector."""
    with conn.cursor(row_factory=class_row(DatasetImage)) as cur:
        return cur.execute(EVALUATION["dataset_images"], {"model_id": model.id, "sha256": list(sha256)}).fetchall()


def stale_images(conn: psycopg.Connection, dataset: str, current: Iterable[int]) -> list[int]:
    """Images tagged with ``dataset`` that are not among ``current`` (left by an earlier run)."""
    rows = conn.execute(EVALUATION["stale_images"], {"dataset": dataset, "current": list(current)})
    return [r[0] for r in rows]


@dataclasses.dataclass(frozen=True)
class SetChanges:
    added: int  # images that were in no set
    moved: int  # images taken from another set
    removed: int  # images that were in the set and are not now


def tag_set(conn: psycopg.Connection, key: str, name: str, image_ids: Sequence[int]) -> SetChanges:
    """Make the evaluation set ``name`` exactly ``image_ids``: metadata ``key`` = ``name`` on them,
    removed from the set's earlier members, other metadata untouched (one statement)."""
    rows = conn.execute(EVALUATION["tag_set"], {"key": key, "name": name, "image_ids": list(image_ids)}).fetchall()
    return SetChanges(added=sum(1 for member, before in rows if member and before is None),
                      moved=sum(1 for member, before in rows if member and before is not None),
                      removed=sum(1 for member, _ in rows if not member))


def cached_texts(conn: psycopg.Connection, model: ModelRow, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """The query cache's vectors of those ``texts`` it holds for ``model``."""
    with conn.cursor(binary=True) as cur:
        rows = cur.execute(EVALUATION["cached_texts"], {"model_id": model.id, "texts": list(texts)}).fetchall()
    return {text: vector.to_numpy() for text, vector in rows}
