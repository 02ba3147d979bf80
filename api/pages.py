"""The web page: HTML shells, their static JS/CSS, and the two JSON endpoints only the page needs.

Every page is a static HTML shell (``static/pages/*.html``) whose script calls the
JSON API; nothing is fetched from the internet. The map and the similarity
heat-map need figures the search API does not give, so this module adds:

* ``GET /api/map``: a 2-D PCA projection of the active model's vectors,
  ``[{"id", "x", "y"}]``, cached until the vectors change;
* ``GET /api/similarity?ids=1,2,3``: the cosine similarity matrix of up to 25 images.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import weakref
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np
import psycopg
from litestar import Controller, MediaType, Response, get
from litestar.params import FromPath, Parameter
from litestar.static_files import create_static_files_router

from pgclip.api.routes import ApiController, ServiceDep
from pgclip.application.service import Service
from pgclip.db.models import ModelRow, require_active_model
from pgclip.core.errors import NotReady
from pgclip.core.errors import InvalidInput, NotFound

STATIC = Path(__file__).parent / "static"
MAP_MAX_POINTS = 20_000  # points in the map; a larger collection is sampled (deterministically)
SIMILARITY_MAX_IDS = 25  # images in one heat-map: 625 cells still read as a picture
MAX_ID = 2**62

NAV = (("/", "Search"), ("/map", "Map"), ("/duplicates", "Duplicates"), ("/status", "Status"), ("/upload", "Upload"))


# --- JSON: the map -----------------------------------------------------------------


class MapPoint(msgspec.Struct):
    id: int
    x: float
    y: float


class SimilarityMatrix(msgspec.Struct):
    ids: list[int]
    model: str
    matrix: list[list[float]]


@dataclasses.dataclass
class _Projection:
    """The last projection computed for one service, and the lock that makes it computed once."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    key: tuple[Any, ...] | None = None
    points: list[MapPoint] = dataclasses.field(default_factory=list)


# One projection per Service (an app's lifetime); it goes when the service does.
_projections: weakref.WeakKeyDictionary[Service, _Projection] = weakref.WeakKeyDictionary()
_projections_lock = threading.Lock()


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """The first two principal components of each row (n x 2), with a deterministic sign.

    SVD of the d x d scatter matrix rather than of the n x d data: the same axes, but one
    float32 matrix product instead of an n x d decomposition (20k x 512: ~0.2 s against ~1.4 s
    here); float32 is ample for a picture.
    """
    n = len(vectors)
    if n < 2:
        return np.zeros((n, 2), dtype=np.float64)
    centred = vectors.astype(np.float32) - vectors.mean(axis=0, dtype=np.float32)
    axes, _, _ = np.linalg.svd((centred.T @ centred).astype(np.float64))
    axes = axes[:, :2]
    # SVD may return either sign of an axis; pin it so the picture does not flip between runs.
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), [0, 1]])
    signs[signs == 0] = 1.0
    coords = centred.astype(np.float64) @ (axes * signs)
    if coords.shape[1] < 2:  # one-dimensional data (d == 1)
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords


def _read_vectors(conn: psycopg.Connection, model: ModelRow, count: int) -> tuple[list[int], np.ndarray]:
    # Sampling by a hash of the id keeps the same images in the map from one request to the next.
    order = "ORDER BY hashint8(image_id), image_id LIMIT %(cap)s" if count > MAP_MAX_POINTS else ""
    with conn.cursor(binary=True) as cur:
        rows = cur.execute(
            f"SELECT image_id, embedding FROM pgclip.embeddings WHERE model_id = %(m)s {order}",
            {"m": model.id, "cap": MAP_MAX_POINTS},
        ).fetchall()
    rows.sort(key=lambda r: r[0])
    ids = [r[0] for r in rows]
    if not rows:
        return ids, np.zeros((0, model.dimension), dtype=np.float32)
    return ids, np.stack([r[1].to_numpy() for r in rows])


def projection(service: Service) -> list[MapPoint]:
    """The map of the active model's vectors; recomputed only when (model, count, newest vector) changes."""
    with _projections_lock:
        cache = _projections.setdefault(service, _Projection())
    with service.pool.connection() as conn, conn.transaction():
        model = require_active_model(conn)
        count, newest = conn.execute(
            "SELECT count(*), max(created_at) FROM pgclip.embeddings WHERE model_id = %s", [model.id]
        ).fetchone()
        key = (model.id, count, newest)
        with cache.lock:
            if cache.key == key:
                return cache.points
            ids, vectors = _read_vectors(conn, model, count)
            coords = np.round(pca_2d(vectors), 5)
            cache.points = [MapPoint(id=i, x=float(x), y=float(y)) for i, (x, y) in zip(ids, coords, strict=True)]
            cache.key = key
            return cache.points


# --- JSON: the similarity matrix ------------------------------------------------------


def parse_ids(raw: str) -> list[int]:
    """``"3, 1,2"`` -> ``[3, 1, 2]``: 1 to 25 positive integers; repeats are dropped, order kept."""
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    if not parts:
        raise InvalidInput(f"ids: give 1 to {SIMILARITY_MAX_IDS} image ids, comma-separated (e.g. ids=1,2,3)")
    ids: list[int] = []
    for part in parts:
        if not part.isdigit() or not 1 <= int(part) <= MAX_ID:
            raise InvalidInput(f"ids: {part[:40]!r} is not an image id (a positive integer)")
        if int(part) not in ids:
            ids.append(int(part))
    if len(ids) > SIMILARITY_MAX_IDS:
        raise InvalidInput(f"ids: at most {SIMILARITY_MAX_IDS} images, got {len(ids)}")
    return ids


def similarity(service: Service, ids: list[int]) -> SimilarityMatrix:
    with service.pool.connection() as conn, conn.transaction():
        model = require_active_model(conn)
        with conn.cursor(binary=True) as cur:
            rows = cur.execute(
                "SELECT image_id, embedding FROM pgclip.embeddings WHERE model_id = %s AND image_id = ANY(%s)",
                [model.id, ids],
            ).fetchall()
        found = {r[0]: r[1].to_numpy() for r in rows}
        missing = [i for i in ids if i not in found]
        if missing:
            known = {r[0] for r in conn.execute("SELECT id FROM pgclip.images WHERE id = ANY(%s)", [missing])}
            unknown = [i for i in missing if i not in known]
            if unknown:
                raise NotFound(f"no image with id {', '.join(map(str, unknown))}")
            raise NotReady(
                f"image {', '.join(map(str, missing))} has no vector yet (its job is pending or failed: see /status)"
            )
    vectors = np.stack([found[i] for i in ids]).astype(np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    matrix = np.clip(np.round(vectors @ vectors.T, 6), -1.0, 1.0)
    return SimilarityMatrix(ids=ids, model=model.name, matrix=matrix.tolist())


class VisualsController(ApiController):
    """Figures for the page's map and heat-map (JSON: checked like the rest of the API)."""

    tags = ["visuals"]

    @get("/api/map", summary="2-D PCA projection of the active model's vectors (at most 20000, sampled)")
    async def map(self, service: ServiceDep) -> list[MapPoint]:
        return await asyncio.to_thread(projection, service)

    @get("/api/similarity", summary="Cosine similarity matrix of up to 25 images")
    async def similarity(
        self,
        service: ServiceDep,
        ids: Annotated[str, Parameter(description="image ids, comma-separated (1 to 25)", max_length=2000)],
    ) -> SimilarityMatrix:
        return await asyncio.to_thread(similarity, service, parse_ids(ids))


# --- HTML ------------------------------------------------------------------------------


@functools.cache
def _shell(name: str) -> str:
    return (STATIC / "pages" / f"{name}.html").read_text(encoding="utf-8")


def _html(name: str, current: str | None) -> Response[str]:
    current_attr = ' aria-current="page"'
    nav = "".join(f'<a href="{href}"{current_attr if href == current else ""}>{label}</a>' for href, label in NAV)
    body = _shell(name).replace("{{nav}}", nav)
    return Response(body, media_type=MediaType.HTML, headers={"Cache-Control": "no-cache"})


class PageController(Controller):
    """The HTML pages (their data comes from the JSON API)."""

    include_in_schema = False

    @get("/", sync_to_thread=False)
    def search(self) -> Response[str]:
        return _html("search", "/")

    @get("/images/{image_id:int}", sync_to_thread=False)
    def image(self, image_id: FromPath[int]) -> Response[str]:
        return _html("image", None)

    @get("/status", sync_to_thread=False)
    def status(self) -> Response[str]:
        return _html("status", "/status")

    @get("/map", sync_to_thread=False)
    def map(self) -> Response[str]:
        return _html("map", "/map")

    @get("/similarity", sync_to_thread=False)
    def similarity(self) -> Response[str]:
        return _html("similarity", None)

    @get("/duplicates", sync_to_thread=False)
    def duplicates(self) -> Response[str]:
        return _html("duplicates", "/duplicates")

    @get("/upload", sync_to_thread=False)
    def upload(self) -> Response[str]:
        return _html("upload", "/upload")


static_files = create_static_files_router(path="/static", directories=[STATIC], name="static")

ROUTE_HANDLERS = [VisualsController, PageController, static_files]
