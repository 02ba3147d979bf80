"""Constructed search data for the integration tests: images, captions and vectors written
straight into the tables, so every expected result can be computed beside it in Python."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import psycopg
import pytest

from pgclip.db.engine import connect
from pgclip.db.models import ModelRow, active_model, index_ddl

_names = itertools.count()


def unit(v: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


def at_angle(degrees: float, dim: int) -> np.ndarray:
    """A unit vector at ``degrees`` from the first axis (towards the second), so its cosine
    similarity to :func:`axis` ``(0)`` is ``cos(degrees)``."""
    v = np.zeros(dim, dtype=np.float64)
    v[0], v[1] = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return v.astype(np.float32)


def axis(i: int, dim: int) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[i] = 1.0
    return v


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def model(conn: psycopg.Connection) -> ModelRow:
    row = active_model(conn)
    assert row is not None, "the test template registers test-tiny as the active model"
    return row


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """What a test chose for one image (and so can compute expectations from)."""

    id: int
    width: int
    height: int
    format: str
    taken_at: dt.datetime | None
    metadata: dict[str, Any]
    captions: tuple[str, ...]
    vector: np.ndarray | None

    @property
    def orientation(self) -> str:
        return "landscape" if self.width > self.height else "portrait" if self.width < self.height else "square"


def add_image(
    conn: psycopg.Connection,
    *,
    vector: np.ndarray | None = None,
    captions: Sequence[str] = (),
    width: int = 400,
    height: int = 300,
    format: str = "JPEG",
    taken_at: dt.datetime | None = None,
    metadata: dict[str, Any] | None = None,
    ts_config: str = "english",
) -> ImageSpec:
    """Insert one image (and its captions, in order, and its vector for the active model)."""
    name = f"img{next(_names)}"
    image_id = conn.execute(
        "INSERT INTO pgclip.images (sha256, source, byte_size, width, height, format, mime, taken_at, metadata)"
        " VALUES (%s, %s, 100, %s, %s, %s, %s, %s, %s) RETURNING id",
        [hashlib.sha256(name.encode()).hexdigest(), f"{name}.{format.lower()}", width, height, format,
         f"image/{format.lower()}", taken_at, json.dumps(metadata or {})],
    ).fetchone()[0]
    for text in captions:
        conn.execute(
            "INSERT INTO pgclip.captions (image_id, text, ts_config) VALUES (%s, %s, %s::regconfig)",
            [image_id, text, ts_config],
        )
    if vector is not None:
        conn.execute(
            "INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)",
            [image_id, model(conn).id, np.asarray(vector, dtype=np.float32)],
        )
    return ImageSpec(image_id, width, height, format, taken_at, dict(metadata or {}), tuple(captions),
                     None if vector is None else np.asarray(vector, dtype=np.float32))


def jsonb_contains(doc: Any, pattern: Any) -> bool:
    """PostgreSQL's ``jsonb @>`` for the shapes the tests use (objects, arrays, scalars)."""
    if isinstance(pattern, dict):
        return isinstance(doc, dict) and all(k in doc and jsonb_contains(doc[k], v) for k, v in pattern.items())
    if isinstance(pattern, list):
        return isinstance(doc, list) and all(any(jsonb_contains(d, p) for d in doc) for p in pattern)
    return doc == pattern


# --- a large collection, loaded in bulk ------------------------------------------------


def low_rank_vectors(rng: np.random.Generator, n: int, dim: int, *, rank: int = 8, noise: float = 0.05,
                     basis: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors near a ``rank``-dimensional subspace (real embeddings have a low
    intrinsic dimension; uniform random vectors would make every neighbour equally far)."""
    if basis is None:
        basis = rng.normal(size=(rank, dim))
    x = rng.normal(size=(n, rank)) @ basis + noise * rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), basis


@dataclasses.dataclass(frozen=True)
class Collection:
    """A bulk-loaded collection (:func:`bulk_load`) and what the tests need to check it."""

    url: str
    ids: np.ndarray
    vectors: np.ndarray
    rare: np.ndarray  # masks over ids
    tenth: np.ndarray
    queries: np.ndarray


def exact_neighbours(c: Collection, q: np.ndarray, mask: np.ndarray | None = None, k: int = 10) -> list[int]:
    """The k nearest of the images ``mask`` keeps (all when None), by exact cosine, ties by id."""
    keep = np.ones(len(c.ids), dtype=bool) if mask is None else mask
    sims = c.vectors[keep].astype(np.float64) @ q.astype(np.float64)
    return c.ids[keep][np.lexsort((c.ids[keep], -sims))][:k].tolist()


def bulk_load(conn: psycopg.Connection, vectors: np.ndarray, metadata: Sequence[dict[str, Any]]) -> list[int]:
    """COPY images 1..n and their vectors (binary, so the stored floats are exactly ours), then
    build the model's HNSW index after loading, as a real bulk load would; commits.

    Meant for an empty database: the image ids are written explicitly."""
    m = model(conn)
    n = len(vectors)
    ids = list(range(1, n + 1))
    conn.execute(f"DROP INDEX pgclip.{m.index_name}")  # rebuilt below: far faster than n inserts
    with conn.cursor().copy(
        "COPY pgclip.images (id, sha256, byte_size, width, height, format, mime, metadata) FROM STDIN"
    ) as copy:
        for i, meta in zip(ids, metadata, strict=True):
            copy.write_row([i, f"{i:064x}", 100, 640, 480, "JPEG", "image/jpeg", json.dumps(meta)])
    binary = "COPY pgclip.embeddings (image_id, model_id, embedding) FROM STDIN WITH (FORMAT BINARY)"
    with conn.cursor().copy(binary) as copy:
        copy.set_types(["bigint", "integer", "vector"])
        for i, v in zip(ids, vectors, strict=True):
            copy.write_row([i, m.id, v])
    conn.execute("SELECT setval(pg_get_serial_sequence('pgclip.images', 'id'), %s)", [n])
    # The model's own index (same name, expression and predicate), with a sparser graph than
    # the default m=16, ef_construction=64: a build in ~2 s instead of ~10, and a recall that
    # holds on this graph holds on the denser one. A parallel build where the host allows it.
    conn.execute("SET LOCAL max_parallel_maintenance_workers = 2")
    conn.execute("SET LOCAL min_parallel_table_scan_size = 0")
    conn.execute(index_ddl(dataclasses.replace(m, index_params={"m": 8, "ef_construction": 32})))
    conn.commit()
    conn.autocommit = True
    try:
        conn.execute("VACUUM ANALYZE pgclip.images")
        conn.execute("VACUUM ANALYZE pgclip.embeddings")
    finally:
        conn.autocommit = False
    return ids


@contextlib.contextmanager
def explaining(url: str) -> Iterator[tuple[psycopg.Connection, list[str]]]:
    """A connection whose every statement, including those run inside pgclip.search, sends its
    plan back as a notice (auto_explain): EXPLAIN cannot see inside a function."""
    with connect(url, role="test", autocommit=True) as conn:
        try:
            conn.execute("LOAD 'auto_explain'")
        except (psycopg.errors.UndefinedFile, psycopg.errors.InsufficientPrivilege) as exc:
            pytest.skip(f"auto_explain cannot be loaded on this server ({exc.sqlstate}: {exc}); plans not checked")
        for setting in ("auto_explain.log_min_duration = 0", "auto_explain.log_nested_statements = on",
                        "auto_explain.log_format = json", "client_min_messages = log"):
            conn.execute(f"SET {setting}")
        notices: list[str] = []
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        yield conn, notices


def vector_hits_plan(conn: psycopg.Connection, notices: list[str], sql: str, args: list) -> str:
    """The plan (as JSON text) of the vector_hits CTE of the query pgclip.search generated."""
    notices.clear()
    conn.execute(sql, args).fetchall()
    plans = [json.loads(n.split("plan:", 1)[1]) for n in notices if "plan:" in n and "vector_hits" in n]
    assert len(plans) == 1, f"expected one generated search query among {len(notices)} logged statements"

    def find(node: dict) -> dict | None:
        if node.get("Subplan Name") == "CTE vector_hits":
            return node
        return next((found for child in node.get("Plans", []) if (found := find(child))), None)

    cte = find(plans[0]["Plan"])
    assert cte is not None
    return json.dumps(cte)
