"""The page's figures: a 2-D map of the active model's vectors, and the similarity of a few images.

The map is a PCA projection, computed once and kept until the model's vectors
change (see :func:`projection`); the heat-map is a cosine similarity matrix.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from pgclip.core.errors import InvalidInput, NotFound, NotReady
from pgclip.db import images as db_images
from pgclip.db import vectors as db_vectors
from pgclip.db.models import require_active_model

if TYPE_CHECKING:
    from pgclip.application.service import Service

MAP_MAX_POINTS = 20_000  # points in the map; a larger collection is sampled (deterministically)
SIMILARITY_MAX_IDS = 25  # images in one heat-map: 625 cells still read as a picture
SIMILARITY_MAX_TEXTS = 25  # texts in one images x texts heat-map (its columns)
SIMILARITY_MAX_TEXT_CHARS = 500  # one text's length


@dataclasses.dataclass(frozen=True)
class MapPoint:
    id: int
    x: float  # along the vectors' widest spread
    y: float


@dataclasses.dataclass(frozen=True)
class Similarity:
    ids: list[int]  # in the order asked
    model: str
    matrix: list[list[float]]  # cosine similarity, rounded to 6 decimals
    texts: list[str] | None = None  # the columns of an images x texts matrix; None: images x images


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


def projection(service: Service) -> list[MapPoint]:
    """The map of the active model's vectors (at most MAP_MAX_POINTS, a fixed sample beyond).

    Recomputed only when (active model, vector count, newest vector) changes: an
    activation, an image embedded or deleted; a metadata edit keeps the picture.
    """
    with _projections_lock:
        cache = _projections.setdefault(service, _Projection())
    with service.pool.connection() as conn, conn.transaction():
        model = require_active_model(conn)
        stamp = db_vectors.stamp(conn, model)
        key = (model.id, stamp.count, stamp.newest)
        with cache.lock:
            if cache.key == key:
                return cache.points
            limit = MAP_MAX_POINTS if stamp.count > MAP_MAX_POINTS else None
            vectors = db_vectors.read_vectors(conn, model, limit=limit)
            coords = np.round(pca_2d(vectors.matrix), 5).tolist()
            cache.points = [MapPoint(id=i, x=x, y=y) for i, (x, y) in zip(vectors.ids, coords, strict=True)]
            cache.key = key
            return cache.points


def check_texts(texts: list[str]) -> list[str]:
    """1 to SIMILARITY_MAX_TEXTS non-empty texts of at most SIMILARITY_MAX_TEXT_CHARS, stripped."""
    if not 1 <= len(texts) <= SIMILARITY_MAX_TEXTS:
        raise InvalidInput(f"texts: give 1 to {SIMILARITY_MAX_TEXTS} texts, got {len(texts)}")
    cleaned = []
    for n, text in enumerate(texts, 1):
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput(f"texts: text {n} is empty (each text must be a non-empty string)")
        if len(text) > SIMILARITY_MAX_TEXT_CHARS:
            raise InvalidInput(f"texts: text {n} has {len(text)} characters, at most {SIMILARITY_MAX_TEXT_CHARS}")
        cleaned.append(text.strip())
    return cleaned


def _stored_vectors(conn: Any, model: Any, ids: list[int]) -> np.ndarray:
    """The images' vectors (unit rows, in the order of ``ids``); NotFound / NotReady name the missing."""
    found = db_vectors.vectors_of(conn, model, ids)
    missing = [i for i in ids if i not in found]
    if missing:
        known = db_images.known_ids(conn, missing)
        unknown = [i for i in missing if i not in known]
        if unknown:
            raise NotFound(f"no image with id {', '.join(map(str, unknown))}")
        raise NotReady(
            f"image {', '.join(map(str, missing))} has no vector yet (its job is pending or failed: see /status)"
        )
    vectors = np.stack([found[i] for i in ids]).astype(np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _first_captions(conn: Any, ids: list[int]) -> list[str]:
    texts, without = [], []
    for i in ids:
        found = db_images.captions(conn, i)
        if found:
            texts.append(found[0].text[:SIMILARITY_MAX_TEXT_CHARS])
        else:
            without.append(i)
    if without:
        raise InvalidInput(f"captions: image {', '.join(map(str, without))} has no caption; give texts instead")
    return texts


def similarity(service: Service, ids: list[int], texts: list[str] | None = None, *,
               captions: bool = False) -> Similarity:
    """Cosine similarity of each pair of the images (1 to SIMILARITY_MAX_IDS, distinct), by the active model.

    With ``texts`` (or ``captions``: the first caption of each image), the images x texts matrix
    instead: rows the images, columns the texts, each text encoded once by the active model's
    text tower (through the service's cache). NotFound names ids that are no image; NotReady
    those whose vector is not made yet.
    """
    if not 1 <= len(ids) <= SIMILARITY_MAX_IDS or len(set(ids)) != len(ids):
        raise InvalidInput(f"ids: give 1 to {SIMILARITY_MAX_IDS} distinct image ids, got {len(ids)}")
    if captions and texts is not None:
        raise InvalidInput("give texts or captions, not both")
    if texts is not None:
        texts = check_texts(texts)
    cross = captions or texts is not None
    with service.pool.connection() as conn:
        if cross:
            model, encoder = service._current(conn)
        else:
            with conn.transaction():
                model = require_active_model(conn)
        with conn.transaction():
            vectors = _stored_vectors(conn, model, ids)
            if captions:
                texts = _first_captions(conn, ids)
        if not cross:
            matrix = np.clip(np.round(vectors @ vectors.T, 6), -1.0, 1.0)
            return Similarity(ids=ids, model=model.name, matrix=matrix.tolist())
        assert texts is not None
        unique = list(dict.fromkeys(texts))  # a caption shared by two images is encoded once
        encoded = {t: service.text_vector(conn, model, encoder, t) for t in unique}
    columns = np.stack([encoded[t] for t in texts]).astype(np.float64)
    columns /= np.linalg.norm(columns, axis=1, keepdims=True)
    matrix = np.clip(np.round(vectors @ columns.T, 6), -1.0, 1.0)
    return Similarity(ids=ids, model=model.name, matrix=matrix.tolist(), texts=texts)
