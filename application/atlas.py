"""The page's figures: a 2-D map of the active model's vectors, and the similarity of a few images.

The map is a PCA projection (fast) or a UMAP embedding (slower, keeps neighbourhoods),
computed once per projection and kept until the model's vectors change (see
:func:`start_projection`); its colours, read from metadata per request (:func:`details`),
never force a new projection. The heat-map is a cosine similarity matrix.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import re
import threading
import warnings
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
PROJECTIONS = ("pca", "umap")  # the first is the default
UMAP_NEIGHBOURS = 15  # umap-learn's default; clamped to n - 1 for tiny collections
UMAP_MIN_POINTS = 3  # below this UMAP has no neighbourhood to keep: the map falls back to PCA
UMAP_SEED = 42  # fixed: the same collection gives the same picture (and umap-learn runs single-threaded)
UMAP_PCA_DIMENSIONS = 50  # UMAP runs on this many principal components: ~10x less distance work than 512-d
COLOR_KEY_MAX_CHARS = 200  # a metadata key to colour by (as unset_metadata's keys in the edit API)
COLOR_VALUE_MAX_CHARS = 100  # characters of one point's value in the answer (20k points stay ~1-2 MB)
LEGEND_MAX = 12  # values named in the legend, commonest first; the rest count as "other"
MAP_MAX_KEYS = 100  # metadata keys suggested for colouring
SIMILARITY_MAX_IDS = 25  # images in one heat-map: 625 cells still read as a picture
SIMILARITY_MAX_TEXTS = 25  # texts in one images x texts heat-map (its columns)
SIMILARITY_MAX_TEXT_CHARS = 500  # one text's length

_ODD_KEY_CHARS = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


@dataclasses.dataclass(frozen=True)
class MapPoint:
    id: int
    x: float  # PCA: along the vectors' widest spread; UMAP: no meaning beyond nearness
    y: float


@dataclasses.dataclass(frozen=True)
class Projection:
    """One computed map: what was asked, what was drawn (they differ where UMAP fell back), the points."""

    projection: str  # asked: "pca" or "umap"
    method: str  # computed: "umap", or "pca" where UMAP could not run (``note`` says why)
    model: str
    total: int  # the model's vectors; ``points`` holds a fixed sample of MAP_MAX_POINTS beyond
    points: list[MapPoint]
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class LegendEntry:
    value: str | None  # None: the images without that key
    count: int


@dataclasses.dataclass(frozen=True)
class Colours:
    key: str
    values: list[str | None]  # one per point, in the points' order
    legend: list[LegendEntry]  # the LEGEND_MAX commonest values, commonest first
    other: int  # points whose value is not in the legend


@dataclasses.dataclass(frozen=True)
class MapDetails:
    keys: list[str]  # top-level metadata keys of the points, commonest first
    colours: Colours | None


@dataclasses.dataclass(frozen=True)
class Similarity:
    ids: list[int]  # in the order asked
    model: str
    matrix: list[list[float]]  # cosine similarity, rounded to 6 decimals
    texts: list[str] | None = None  # the columns of an images x texts matrix; None: images x images
    caption_of: list[int] | None = None  # with captions: the image whose first caption each column is


@dataclasses.dataclass
class _Cached:
    """The last map of one projection for one service, and the compute under way (if any)."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    key: tuple[Any, ...] | None = None
    result: Projection | None = None
    running: concurrent.futures.Future[Projection] | None = None
    running_key: tuple[Any, ...] | None = None


# One cache per Service (an app's lifetime) and projection; it goes when the service does.
_projections: weakref.WeakKeyDictionary[Service, dict[str, _Cached]] = weakref.WeakKeyDictionary()
_projections_lock = threading.Lock()
# UMAP is CPU-bound: one at a time in this process.
_umap_slot = threading.Lock()


def _in_background(work: Any) -> concurrent.futures.Future[Projection]:
    """Run ``work`` on a thread of its own and return its future, so that a request waiting for
    UMAP (a minute at 20k points) awaits it instead of holding a thread of the API's pool while
    searches queue behind it. A daemon thread: a server told to stop does not wait for it."""
    future: concurrent.futures.Future[Projection] = concurrent.futures.Future()

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            with _umap_slot:
                result = work()
        except BaseException as exc:  # noqa: BLE001  (handed to whoever awaits the future)
            future.set_exception(exc)
        else:
            future.set_result(result)

    threading.Thread(target=target, name="pgclip-umap", daemon=True).start()
    return future


def check_projection(projection: str) -> str:
    """``projection`` if it is one pgclip computes; InvalidInput naming the choices otherwise."""
    if projection not in PROJECTIONS:
        raise InvalidInput(f"projection must be {' or '.join(PROJECTIONS)}, got {projection[:40]!r}")
    return projection


def check_color_key(key: str) -> str:
    """A top-level metadata key to colour by: 1 to COLOR_KEY_MAX_CHARS characters, no control
    characters, NULs or lone surrogates (PostgreSQL cannot hold them; no stored key has them)."""
    if not key.strip():
        raise InvalidInput("color: give a metadata key (e.g. color=tag), or leave color out")
    if len(key) > COLOR_KEY_MAX_CHARS:
        raise InvalidInput(f"color: a metadata key has at most {COLOR_KEY_MAX_CHARS} characters, got {len(key)}")
    if _ODD_KEY_CHARS.search(key):
        raise InvalidInput("color: control characters, NULs and lone surrogates are not allowed in a metadata key")
    return key


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """The first two principal components of each row (n x 2), with a deterministic sign."""
    return pca(vectors, 2)


def pca(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """The first ``dimensions`` principal components of each row, each axis with a deterministic sign.

    SVD of the d x d scatter matrix rather than of the n x d data: the same axes, but one
    float32 matrix product instead of an n x d decomposition (20k x 512: ~0.2 s against ~1.4 s
    here); float32 is ample for a picture.
    """
    n = len(vectors)
    if n < 2:
        return np.zeros((n, dimensions), dtype=np.float64)
    centred = vectors.astype(np.float32) - vectors.mean(axis=0, dtype=np.float32)
    axes, _, _ = np.linalg.svd((centred.T @ centred).astype(np.float64))
    axes = axes[:, :dimensions]
    # SVD may return either sign of an axis; pin it so the picture does not flip between runs.
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(axes.shape[1])])
    signs[signs == 0] = 1.0
    coords = centred.astype(np.float64) @ (axes * signs)
    if coords.shape[1] < dimensions:  # fewer dimensions in the data than asked (d == 1)
        coords = np.pad(coords, ((0, 0), (0, dimensions - coords.shape[1])))
    return coords


def umap_2d(vectors: np.ndarray) -> np.ndarray:
    """UMAP of the rows into 2-D, deterministic for given rows (fixed seed, PCA start).

    Needs at least UMAP_MIN_POINTS rows (ValueError below). Runs on the first
    UMAP_PCA_DIMENSIONS principal components, and starts from the first two, so the layout
    is the PCA picture pulled into neighbourhoods rather than a fresh random draw. umap-learn
    is imported here: its import and numba's compilation take seconds, paid only when asked.
    """
    n = len(vectors)
    if n < UMAP_MIN_POINTS:
        raise ValueError(f"UMAP needs at least {UMAP_MIN_POINTS} points, got {n}")
    import umap  # noqa: PLC0415  (slow import, on demand)

    reduced = pca(vectors, min(UMAP_PCA_DIMENSIONS, vectors.shape[1]))
    start = reduced[:, :2]
    spread = np.abs(start).max()
    start = start / spread * 10 if spread > 0 else np.zeros_like(start)
    # Identical rows would start on one spot; UMAP's layout needs them apart to begin with.
    start = start + np.random.default_rng(UMAP_SEED).normal(0, 1e-4, start.shape)
    reducer = umap.UMAP(n_neighbors=max(2, min(UMAP_NEIGHBOURS, n - 1)), n_components=2, init=start,
                        random_state=UMAP_SEED, n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state", small-n spectral notes
        return np.asarray(reducer.fit_transform(reduced.astype(np.float32)), dtype=np.float64)


def _compute(service: Service, projection: str) -> tuple[tuple[Any, ...], Projection]:
    """Read the vectors (one transaction, so the key matches them; on a read replica when there
    is one) and project them."""

    def read(conn: Any) -> tuple[Any, Any, Any]:
        with conn.transaction():
            model = require_active_model(conn)
            stamp = db_vectors.stamp(conn, model)
            limit = MAP_MAX_POINTS if stamp.count > MAP_MAX_POINTS else None
            return model, stamp, db_vectors.read_vectors(conn, model, limit=limit)

    model, stamp, vectors = service.read(read)
    key = (projection, model.id, stamp.count, stamp.newest)
    method, note = projection, None
    if projection == "umap":
        try:
            coords = umap_2d(vectors.matrix)
        except ImportError:
            method, note = "pca", "UMAP needs the umap-learn package (pip install umap-learn): showing PCA"
        except ValueError as exc:  # too few points
            method, note = "pca", f"{exc}: showing PCA"
    if method == "pca":
        coords = pca_2d(vectors.matrix)
    rounded = np.round(coords, 5).tolist()
    points = [MapPoint(id=i, x=x, y=y) for i, (x, y) in zip(vectors.ids, rounded, strict=True)]
    return key, Projection(projection=projection, method=method, model=model.name, total=stamp.count,
                           points=points, note=note)


def _cache(service: Service, projection: str) -> _Cached:
    with _projections_lock:
        return _projections.setdefault(service, {}).setdefault(projection, _Cached())


def _done(result: Projection) -> concurrent.futures.Future[Projection]:
    future: concurrent.futures.Future[Projection] = concurrent.futures.Future()
    future.set_result(result)
    return future


def start_projection(service: Service, projection: str = "pca") -> concurrent.futures.Future[Projection]:
    """The map of the active model's vectors (at most MAP_MAX_POINTS, a fixed sample beyond), as a future.

    Kept per projection until (active model, vector count, newest vector) changes: an
    activation, an image embedded or deleted; a metadata edit keeps the picture. A kept map,
    and PCA (a fraction of a second), come back done. UMAP is computed on its own thread and
    the future is shared by every request that asks while it runs; a failed run is not kept.
    """
    check_projection(projection)
    cache = _cache(service, projection)

    def read(conn: Any) -> tuple[Any, Any]:
        with conn.transaction():
            model = require_active_model(conn)
            return model, db_vectors.stamp(conn, model)

    model, stamp = service.read(read)
    key = (projection, model.id, stamp.count, stamp.newest)
    with cache.lock:
        if cache.key == key and cache.result is not None:
            return _done(cache.result)
        if cache.running is not None and cache.running_key == key:
            return cache.running
        if projection == "pca":
            cache.key, cache.result = _compute(service, projection)
            return _done(cache.result)

        def run() -> Projection:
            computed_key, result = _compute(service, projection)
            with cache.lock:
                cache.key, cache.result = computed_key, result
            return result

        future = _in_background(run)
        cache.running, cache.running_key = future, key

        def finished(done: concurrent.futures.Future[Projection]) -> None:
            with cache.lock:
                if cache.running is done:
                    cache.running = cache.running_key = None

        future.add_done_callback(finished)
        return future


def projection(service: Service, projection: str = "pca") -> Projection:
    """:func:`start_projection`, waited for (for callers that may block a thread)."""
    return start_projection(service, projection).result()


def legend_of(values: list[str | None]) -> tuple[list[LegendEntry], int]:
    """The LEGEND_MAX commonest values (ties by value, None last), and how many points the rest hold."""
    counts = collections.Counter(values)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0] is None, item[0] or ""))
    legend = [LegendEntry(value=v, count=c) for v, c in ranked[:LEGEND_MAX]]
    return legend, sum(c for _, c in ranked[LEGEND_MAX:])


def details(service: Service, ids: list[int], color: str | None) -> MapDetails:
    """What the map shows beside the coordinates, read fresh: the metadata keys of its points,
    and with ``color`` each point's value for that key and the legend."""
    if color is not None:
        check_color_key(color)

    def read(conn: Any) -> tuple[list[str], list[str | None] | None]:
        with conn.transaction():
            keys = db_vectors.metadata_keys(conn, ids, limit=MAP_MAX_KEYS)
            if color is None:
                return keys, None
            return keys, db_vectors.metadata_values(conn, ids, color, max_chars=COLOR_VALUE_MAX_CHARS)

    keys, values = service.read(read)
    if values is None:
        return MapDetails(keys=keys, colours=None)
    legend, other = legend_of(values)
    return MapDetails(keys=keys, colours=Colours(key=color, values=values, legend=legend, other=other))


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


def _first_captions(conn: Any, ids: list[int]) -> tuple[list[str], list[int]]:
    """The first caption of each image that has one, and those images' ids (an image without a
    caption is a row with no column of its own); InvalidInput when none has a caption."""
    texts, owners = [], []
    for i in ids:
        found = db_images.captions(conn, i)
        if found:
            texts.append(found[0].text[:SIMILARITY_MAX_TEXT_CHARS])
            owners.append(i)
    if not texts and len(ids) == 1:
        raise InvalidInput(f"captions: image {ids[0]} has no caption; give texts instead")
    if not texts:
        raise InvalidInput(f"captions: none of the images {', '.join(map(str, ids))} has a caption; give texts instead")
    return texts, owners


def similarity(service: Service, ids: list[int], texts: list[str] | None = None, *,
               captions: bool = False) -> Similarity:
    """Cosine similarity of each pair of the images (1 to SIMILARITY_MAX_IDS, distinct), by the active model.

    With ``texts`` (or ``captions``: the first caption of each image that has one), the images x
    texts matrix instead: rows the images, columns the texts, each text encoded once by the active
    model's text tower (through the service's cache). NotFound names ids that are no image; NotReady
    those whose vector is not made yet.
    """
    if not 1 <= len(ids) <= SIMILARITY_MAX_IDS or len(set(ids)) != len(ids):
        raise InvalidInput(f"ids: give 1 to {SIMILARITY_MAX_IDS} distinct image ids, got {len(ids)}")
    if captions and texts is not None:
        raise InvalidInput("give texts or captions, not both")
    if texts is not None:
        texts = check_texts(texts)
    cross = captions or texts is not None

    def read(conn: Any) -> tuple[Any, np.ndarray, list[str] | None, list[int] | None, dict[str, np.ndarray]]:
        if cross:
            model, encoder = service._current(conn)
        else:
            with conn.transaction():
                model = require_active_model(conn)
        owners = None
        with conn.transaction():
            vectors = _stored_vectors(conn, model, ids)
            if captions:
                columns, owners = _first_captions(conn, ids)
            else:
                columns = texts
        if not cross:
            return model, vectors, None, None, {}
        unique = list(dict.fromkeys(columns))  # a caption shared by two images is encoded once
        return model, vectors, columns, owners, {t: service.text_vector(conn, model, encoder, t) for t in unique}

    model, vectors, texts, owners, encoded = service.read(read)
    if not cross:
        matrix = np.clip(np.round(vectors @ vectors.T, 6), -1.0, 1.0)
        return Similarity(ids=ids, model=model.name, matrix=matrix.tolist())
    assert texts is not None
    columns = np.stack([encoded[t] for t in texts]).astype(np.float64)
    columns /= np.linalg.norm(columns, axis=1, keepdims=True)
    matrix = np.clip(np.round(vectors @ columns.T, 6), -1.0, 1.0)
    return Similarity(ids=ids, model=model.name, matrix=matrix.tolist(), texts=texts, caption_of=owners)
