"""Calling ``pgclip.search`` (its SQL: ``db/sql/search.sql``) and reading its rows with image details.

The search itself is SQL, written once; this module only validates what it
can before any SQL runs, manages the paging cursor, and translates the
function's errors into pgclip's.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import json
from typing import Any

import numpy as np
import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from pgclip.core.errors import InvalidInput, NotFound, NotReady, PgclipError

from pgclip.core.search_request import FILTER_KEYS, MAX_WINDOW, OPTIONS, PARAMS, RRF_K, default_window
from pgclip.db.models import ModelRow, require_active_model

# The options of an API or CLI caller with bounds or choices: checked here, before any SQL.
_CHECKED = tuple(p.name for p in OPTIONS if p.api and (p.choices or p.minimum is not None))


@dataclasses.dataclass(frozen=True)
class SearchParams:
    """One search, its defaults those of ``pgclip.core.search_request``. ``vector`` is unit-length
    (text, image, id or composed); ``caption_query`` is websearch syntax over captions; both may
    be given (hybrid) or either alone."""

    vector: np.ndarray | None = None
    caption_query: str | None = None
    filters: dict[str, Any] = dataclasses.field(default_factory=dict)
    k: int = PARAMS["k"].default
    fusion: str = PARAMS["fusion"].default  # one of its choices (validate checks)
    weight: float = PARAMS["weight"].default
    min_similarity: float | None = PARAMS["min_similarity"].default
    max_drop: float | None = PARAMS["max_drop"].default
    order: str = PARAMS["order"].default
    cursor: str | None = None
    ts_config: str = PARAMS["ts_config"].default

    def validate(self, *, needs_query: bool = True) -> None:
        """Refuse what the search request's definition (``pgclip.core.search_request``) refuses,
        before any SQL runs; the CLI's filters get the API's answers here."""
        for name in _CHECKED:
            PARAMS[name].check(getattr(self, name))
        unknown = set(self.filters) - FILTER_KEYS
        if unknown:
            raise InvalidInput(f"unknown filter {sorted(unknown)[0]!r} (known: {', '.join(sorted(FILTER_KEYS))})")
        for key, value in self.filters.items():
            PARAMS[key].check(value)
        folder = self.filters.get("folder")
        if folder is not None and not (isinstance(folder, str) and folder.startswith("/")):
            raise InvalidInput(f"folder must be an absolute path, got {folder!r}")
        if needs_query and self.vector is None and not (self.caption_query or "").strip():
            raise InvalidInput("give a text, an image, an image id or a caption query to search for")
        if self.vector is not None and not np.all(np.isfinite(self.vector)):
            raise InvalidInput("the query vector has non-finite values")

    def fingerprint(self, similar_to: int | None = None) -> str:
        """Identifies the query a cursor belongs to (everything but the page)."""
        h = hashlib.sha256()
        if similar_to is not None:
            h.update(f"similar:{similar_to}".encode())
        if self.vector is not None:
            h.update(np.asarray(self.vector, dtype=np.float32).tobytes())
        h.update(json.dumps([self.caption_query, self.filters, self.fusion, self.weight, self.min_similarity,
                             self.max_drop, self.order, self.ts_config], sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Hit:
    """One result with every score that explains it (None where a component did not apply)."""

    image_id: int
    score: float
    similarity: float | None
    text_rank: float | None
    vector_rank: int | None
    text_rank_position: int | None
    source: str | None
    width: int
    height: int
    format: str
    taken_at: dt.datetime | None
    metadata: dict[str, Any]
    caption: str | None
    has_thumbnail: bool


@dataclasses.dataclass(frozen=True)
class Page:
    hits: list[Hit]
    next_cursor: str | None
    model: str


def _encode_cursor(offset: int, window: int, fingerprint: str) -> str:
    raw = json.dumps({"o": offset, "w": window, "q": fingerprint}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, fingerprint: str) -> tuple[int, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        offset, window, q = int(data["o"]), int(data["w"]), str(data["q"])
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InvalidInput("malformed cursor: pass back the next_cursor of a previous page unchanged") from None
    if q != fingerprint:
        raise InvalidInput("this cursor belongs to a different query")
    if not 1 <= window <= MAX_WINDOW or not 0 <= offset < window:
        raise InvalidInput("malformed cursor: pass back the next_cursor of a previous page unchanged")
    return offset, window


_ROWS = """
SELECT s.image_id, s.score, s.similarity, s.text_rank, s.vector_rank, s.text_rank_position,
       i.source, i.width, i.height, i.format, i.taken_at, i.metadata,
       (SELECT c.text FROM pgclip.captions c WHERE c.image_id = s.image_id ORDER BY c.id LIMIT 1) AS caption,
       EXISTS (SELECT 1 FROM pgclip.thumbnails t WHERE t.image_id = s.image_id) AS has_thumbnail
FROM {source}
     WITH ORDINALITY AS s(image_id, score, similarity, text_rank, vector_rank, text_rank_position, n)
JOIN pgclip.images i ON i.id = s.image_id
ORDER BY s.n
"""
_SEARCH = _ROWS.format(
    source="pgclip.search(%(vector)s, %(caption_query)s, %(filters)s, %(k)s, %(offset)s::int, %(options)s)")
# "More like this" is pgclip.similar's, the one analysts call: not a second version here.
_SIMILAR = _ROWS.format(source="pgclip.similar(%(image_id)s, %(k)s, %(filters)s, %(offset)s::int, %(options)s)")


def search(conn: psycopg.Connection, params: SearchParams, *, model: ModelRow | None = None,
           similar_to: int | None = None) -> Page:
    """Run one page of a search with the active model (read in the same transaction); with
    ``similar_to``, of "more like this" for that image (its own vector, itself excluded)."""
    params.validate(needs_query=similar_to is None)
    fingerprint = params.fingerprint(similar_to)
    window = default_window(params.k)
    offset = 0
    if params.cursor:
        offset, window = _decode_cursor(params.cursor, fingerprint)
    options = {
        "fusion": params.fusion, "weight": params.weight, "rrf_k": RRF_K, "order": params.order,
        "window": window, "ts_config": params.ts_config,
    }
    if params.min_similarity is not None:
        options["min_similarity"] = params.min_similarity
    if params.max_drop is not None:
        options["max_drop"] = params.max_drop
    with conn.transaction():
        model = model or require_active_model(conn)
        options["model_id"] = model.id
        if params.vector is not None and len(params.vector) != model.dimension:
            raise InvalidInput(f"query vector has {len(params.vector)} dimensions, the active model has {model.dimension}")
        try:
            with conn.cursor(row_factory=class_row(Hit)) as cur:
                hits = cur.execute(
                    _SEARCH if similar_to is None else _SIMILAR,
                    {"image_id": similar_to,
                     "vector": None if params.vector is None else np.asarray(params.vector, dtype=np.float32),
                     "caption_query": params.caption_query, "filters": Jsonb(params.filters), "k": params.k,
                     "offset": offset, "options": Jsonb(options)},
                ).fetchall()
        except psycopg.Error as exc:
            raise translate(exc) from exc
    more = len(hits) == params.k and offset + params.k < window
    return Page(hits, _encode_cursor(offset + params.k, window, fingerprint) if more else None, model.name)


def translate(exc: psycopg.Error) -> PgclipError | psycopg.Error:
    """The search functions' SQLSTATEs as pgclip errors; anything else is a bug and stays itself."""
    state = exc.sqlstate or ""
    message = exc.diag.message_primary or str(exc)
    if state == "P0002":
        return NotFound(message)
    if state == "55000":
        return NotReady(message)
    # 22xxx: data exceptions (invalid parameter values, bad casts of filter values).
    if state.startswith("22"):
        return InvalidInput(message)
    return exc


def stored_vector(conn: psycopg.Connection, model: ModelRow, image_id: int) -> np.ndarray:
    """An image's vector under ``model``; NotFound for an unknown image, NotReady before it is embedded."""
    row = conn.execute(
        "SELECT e.embedding FROM pgclip.embeddings e WHERE e.image_id = %s AND e.model_id = %s",
        [image_id, model.id],
    ).fetchone()
    if row is None:
        if conn.execute("SELECT 1 FROM pgclip.images WHERE id = %s", [image_id]).fetchone() is None:
            raise NotFound(f"no image with id {image_id}")
        raise NotReady(f"image {image_id} has no vector for the active model yet (is a worker running?)")
    return row[0].to_numpy()


def similar(conn: psycopg.Connection, image_id: int, params: SearchParams) -> Page:
    """"More like this": search with an image's own vector, excluding the image (``pgclip.similar``)."""
    return search(conn, params, similar_to=image_id)
