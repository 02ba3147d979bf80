"""What the API does, as plain synchronous functions over a connection pool.

Handlers stay two lines: they call these through ``asyncio.to_thread`` so that
neither the model nor the database ever blocks the event loop.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import psycopg

from pgclip.application import atlas
from pgclip.db import images as db_images
from pgclip.db import queue
from pgclip.db import replicas as db_replicas
from pgclip.db import search as db_search
from pgclip.db import tags as db_tags
from pgclip.db import text_vectors
from pgclip.db import videos as db_videos
from pgclip.db.engine import driver_errors, reviver
from pgclip.db.pool import Pool
from pgclip.db.indexes import IndexInfo, describe_indexes
from pgclip.db.models import ModelRow, require_active_model
from pgclip.core.errors import DatabaseUnavailable, InvalidInput, NotFound, NotReady
from pgclip.core.settings import Settings
from pgclip.workers.decode import ImageRejected, decode, probe
from pgclip.workers.encoder import ClipEncoder, backend_for_identity, is_test_model, weights_of

# Recent query texts kept as vectors in the process (Immich keeps an LRU of 100 too), in
# front of the database's shared cache (db/text_vectors.py), which SQL callers fill as well.
TEXT_CACHE_SIZE = 100
POOL_MAX = 8  # connections per API process
READY_WAIT_SECONDS = 2.0  # /readyz answers 503 after this long without a connection, well inside probes' timeouts
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class FoundPage(db_search.Page):
    """A page of hits and, for each hit that is a frame of a video, that video (by image id)."""

    videos: dict[int, db_videos.VideoFrame] = dataclasses.field(default_factory=dict)


def _with_videos(conn: psycopg.Connection, page: db_search.Page) -> FoundPage:
    frames = db_videos.frames_of(conn, [hit.image_id for hit in page.hits])
    return FoundPage(page.hits, page.next_cursor, page.model, frames)


def read_query_image(path: str) -> bytes:
    """A query image's bytes; InvalidInput for anything but a readable regular file (a FIFO
    named x.jpg is refused, not waited on for ever)."""
    import os
    from pathlib import Path

    from pgclip.workers.ingest_files import Unreadable, read_file

    file = Path(path).expanduser()
    try:
        if not os.path.lexists(file):
            raise InvalidInput(f"cannot read image {path}: no such file")
        return read_file(file)
    except Unreadable as exc:
        raise InvalidInput(f"cannot read image {path}: {exc}") from None
    except ValueError:  # a NUL in the name
        raise InvalidInput(f"cannot read image {path!r}: not a file name") from None


class VectorCache:
    """A small thread-safe LRU of query-text vectors, keyed by model id and text: a hit costs
    no round trip, where the shared cache in the database costs one."""

    def __init__(self, size: int = TEXT_CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, str]) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[int, str], value: np.ndarray) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class Service:
    """The API's state: settings, a pool, the warmed encoder and the query cache."""

    def __init__(self, settings: Settings, url: str, encoder: ClipEncoder) -> None:
        self.settings = settings
        self.url = url
        self.encoder = encoder  # the configured model's; others are loaded when they become active
        self._encoders: dict[tuple[str, str], ClipEncoder] = {(encoder.model_name, encoder.pretrained_identity): encoder}
        self._encoders_lock = threading.Lock()
        self.cache = VectorCache()
        self.pool = Pool(url, role="api", max_size=POOL_MAX, revive=reviver(settings))
        # Reads go to the replicas in use (db/replicas.py), writes always to this pool's primary.
        self.replicas = db_replicas.Replicas(settings.read_database_urls, self.pool, max_lag=settings.max_replica_lag) \
            if settings.read_database_urls else None

    def open(self) -> None:
        self.pool.open()
        if self.replicas is not None:
            self.replicas.open()
        # Load and warm the model that answers searches, the active one (a database may have moved
        # away from the configured model: `pgclip demo --test-model`, `pgclip models activate`), so
        # that the first query does not pay for it, and weights that cannot be loaded fail here,
        # before anything is served. Warming both towers spares the first query lazy initialisation.
        with self.pool.connection() as conn:
            _, encoder = self._current(conn)
        encoder.encode_texts(["warm-up"])

    def close(self) -> None:
        if self.replicas is not None:
            self.replicas.close()
        self.pool.close()

    # --- where reads and writes go -------------------------------------------------

    def read(self, work: Callable[[psycopg.Connection], T]) -> T:
        """``work(conn)`` on a read replica in use that has replayed the request's token (and
        its own writes so far), else on the primary."""
        if self.replicas is None:
            db_replicas.current_route().served_by = db_replicas.PRIMARY
            with self.pool.connection() as conn:
                return work(conn)
        return self.replicas.read(work)

    @contextmanager
    def _writing(self) -> Iterator[psycopg.Connection]:
        """A primary connection for a write; once the block has committed, the request's token
        (the API's X-Pgclip-Lsn) is the primary's WAL position, which later reads pass back."""
        with self.pool.connection() as conn:
            yield conn
            db_replicas.write_position(conn)

    def mark_written(self) -> None:
        """Make what is committed on the primary now (by any connection) the current request's
        token: the reads that follow see it, on a replica that has replayed it or on the primary."""
        with self._writing():
            pass

    # --- the model that answers ----------------------------------------------------

    def encoder_for(self, model: ModelRow) -> ClipEncoder:
        """The encoder of ``model``, loaded on first use: when `pgclip models activate` switches
        the active model, running API processes follow without a restart. It runs on the
        backend the model's identity implies: int8 for an int8 model, whatever PGCLIP_ENCODER says."""
        key = (model.name, model.pretrained)
        with self._encoders_lock:
            encoder = self._encoders.get(key)
            if encoder is None:
                encoder = ClipEncoder(model.name, self._pretrained_for(model), device=self.settings.device,
                                      torch_threads=self.settings.torch_threads,
                                      backend=backend_for_identity(model.pretrained, self.settings.encoder))
                encoder.load()
                self._encoders[key] = encoder
        return encoder

    def _pretrained_for(self, model: ModelRow) -> str:
        weights = weights_of(model.pretrained)
        if is_test_model(model.name) or not weights.startswith("sha256:"):
            return weights  # a tag (test models ignore it)
        configured = self.encoder
        if configured.model_name == model.name and configured.weights_identity == weights:
            return configured.pretrained
        if configured.model_name == model.name and configured.weights_identity.startswith("sha256:"):
            found = f"PGCLIP_PRETRAINED names {configured.pretrained}, whose contents are {configured.weights_identity}"
        else:
            found = f"this process runs {configured.model_name} ({configured.pretrained})"
        raise NotReady(
            f"the active model {model.label} uses a local checkpoint this process does not have ({found}): "
            f"set PGCLIP_MODEL={model.name} and PGCLIP_PRETRAINED to the checkpoint it was registered with "
            "(the file whose sha256 it names), then restart it"
        )

    def _current(self, conn: psycopg.Connection) -> tuple[ModelRow, ClipEncoder]:
        with conn.transaction():
            model = require_active_model(conn)
        return model, self.encoder_for(model)

    # --- query vectors ----------------------------------------------------------

    def text_vector(self, conn: psycopg.Connection, model: ModelRow, encoder: ClipEncoder, text: str) -> np.ndarray:
        """The text's vector: from this process's LRU, else the database's shared cache (which
        ``pgclip.embed_text`` fills too), else the model, filling both."""
        key = (model.id, text)
        vector = self.cache.get(key)
        if vector is None:
            if db_replicas.is_replica(conn):  # read-only there: a lookup that leaves recency alone
                vector = db_replicas.cached_text_vector(conn, model.id, text)
            else:
                with conn.transaction():
                    vector = text_vectors.cached(conn, model.id, text)
            if vector is None:
                vector = encoder.encode_texts([text])[0]
                self._store_text_vector(conn, model, text, vector)
            self.cache.put(key, vector)
        return vector

    def _store_text_vector(self, conn: psycopg.Connection, model: ModelRow, text: str, vector: np.ndarray) -> None:
        """Into the shared cache, which lives on the primary: a search answered by a replica
        stores there, and not at all while the primary is down (the search still answers)."""
        if not db_replicas.is_replica(conn):
            with conn.transaction():
                text_vectors.store(conn, model.id, {text: vector})
            return
        try:
            with self.pool.connection(timeout=READY_WAIT_SECONDS) as primary, primary.transaction():
                text_vectors.store(primary, model.id, {text: vector})
        except DatabaseUnavailable:
            pass

    def image_vector(self, encoder: ClipEncoder, data: bytes) -> np.ndarray:
        image = decode(data)  # raises ImageRejected (a 400) for anything that is not a usable image
        return encoder.encode_images([image])[0]

    def query_vector(self, conn: psycopg.Connection, model: ModelRow, encoder: ClipEncoder | None, text: str | None,
                     raw: list[float] | None, image: bytes | None = None, *,
                     local_files: bool = False) -> np.ndarray | None:
        """The query's vector from text (plain or composed), an uploaded image and/or a raw vector.

        Image paths inside a composed query are read only with ``local_files`` (the CLI);
        over HTTP they would expose the server's files.
        """
        from pgclip.workers.compose import combine, is_composite, parse_query

        parts: list[np.ndarray] = []
        if text and text.strip():
            if is_composite(text):
                terms = parse_query(text)
                vectors = []
                for term in terms:
                    if term.kind == "text":
                        vectors.append(self.text_vector(conn, model, encoder, str(term.value)))
                    elif term.kind == "id":
                        vectors.append(db_search.stored_vector(conn, model, int(term.value)))
                    elif local_files:
                        vectors.append(self.image_vector(encoder, read_query_image(str(term.value))))
                    else:
                        raise InvalidInput(
                            f"image paths ({term.value}) work in the CLI only; upload the image to /api/search/image"
                        )
                parts.append(combine(terms, vectors))
            else:
                parts.append(self.text_vector(conn, model, encoder, text.strip()))
        if image is not None:
            parts.append(self.image_vector(encoder, image))
        if raw is not None:
            # float64: the norm of float32 values near their limit (1e38) would overflow to inf.
            v = np.asarray(raw, dtype=np.float64)
            fits = v.ndim == 1 and bool(np.all(np.abs(v) <= np.finfo(np.float32).max))  # NaN fails too
            norm = float(np.linalg.norm(v)) if fits else 0.0
            if norm == 0.0:
                raise InvalidInput("vector must be a non-zero list of finite numbers (within float32's range)")
            if len(v) != model.dimension:
                raise InvalidInput(f"vector has {len(v)} dimensions, the model {model.name} has {model.dimension}")
            parts.append((v / norm).astype(np.float32))
        if not parts:
            return None
        total = np.sum(parts, axis=0)
        norm = float(np.linalg.norm(total))
        if norm < 1e-6:
            raise InvalidInput("the query's parts cancel out")
        return (total / norm).astype(np.float32)

    # --- search ------------------------------------------------------------------

    def search(self, *, text: str | None, raw: list[float] | None, image: bytes | None,
               options: dict[str, Any], local_files: bool = False) -> db_search.Page:
        def run(conn: psycopg.Connection) -> db_search.Page:
            if (text and text.strip()) or image is not None:
                model, encoder = self._current(conn)
            else:  # a caption query or a raw vector: no model to load (nor to fail to load)
                with conn.transaction():
                    model, encoder = require_active_model(conn), None
            vector = self.query_vector(conn, model, encoder, text, raw, image, local_files=local_files)
            params = db_search.SearchParams(vector=vector, ts_config=self.settings.text_search_config, **options)
            return _with_videos(conn, db_search.search(conn, params, model=model))

        return self.read(run)

    def similar(self, image_id: int, options: dict[str, Any]) -> db_search.Page:
        params = db_search.SearchParams(ts_config=self.settings.text_search_config, **options)
        return self.read(lambda conn: _with_videos(conn, db_search.similar(conn, image_id, params)))

    # --- images ------------------------------------------------------------------

    def image(self, image_id: int) -> dict[str, Any]:
        """The image as the active model sees it, with its captions and that model's name."""
        def run(conn: psycopg.Connection) -> tuple:
            with conn.transaction():
                model = require_active_model(conn)
                detail = db_images.image_detail(conn, image_id, model.id)
                captions = db_images.captions(conn, image_id)
                video = db_videos.frames_of(conn, [image_id]).get(image_id)
            return model, detail, captions, video

        model, detail, captions, video = self.read(run)
        return {**dataclasses.asdict(detail), "captions": [dataclasses.asdict(c) for c in captions],
                "model": model.name, "video": video}

    def blob(self, image_id: int, table: str) -> db_images.Blob:
        """The original bytes (``image_blobs``, with their sha256) or the thumbnail (``thumbnails``),
        with the MIME type (application/octet-stream for an image added with SQL, not yet probed)."""
        read = {"image_blobs": db_images.original, "thumbnails": db_images.thumbnail}[table]
        blob = self.read(lambda conn: read(conn, image_id))
        return dataclasses.replace(blob, mime=blob.mime or "application/octet-stream")

    def add_image(self, data: bytes, *, filename: str | None, captions: list[str],
                  metadata: dict[str, Any]) -> tuple[int, bool, str | None]:
        """Store an uploaded image (or find it by its bytes) and queue it; (id, created, queue state).
        (A video goes to :meth:`add_video`.)"""
        from pgclip.workers.ingest import new_image
        from pgclip.workers.manifest import clean_caption

        try:
            info = probe(data)
        except ImageRejected as exc:
            raise InvalidInput(f"the upload is not a usable image: {exc}") from exc
        texts = [t for t in (clean_caption(c) for c in captions) if t]
        image = new_image(data, info, source=filename, metadata=metadata)
        with self._writing() as conn, conn.transaction():
            model = require_active_model(conn)
            added, existing = db_images.insert_images(conn, [image])
            image_id = (added or existing)[info.sha256]
            if existing:
                db_images.merge_metadata(conn, {image_id: metadata})
            db_images.add_captions(conn, [(image_id, t) for t in texts], ts_config=self.settings.text_search_config)
            queue.enqueue(conn, list(added.values()), model.id)
            state = queue.latest_state(conn, image_id, model.id)
        return image_id, bool(added), state

    def add_video(self, data: bytes, *, filename: str | None, captions: list[str],
                  metadata: dict[str, Any]) -> tuple[int, bool, list[int]]:
        """Store an uploaded video with its sampled frames, queued; (video id, created, frame image ids).

        Given captions and metadata go to each of its frames. A damaged video is an
        InvalidInput with its reason, and nothing of it is stored."""
        from pgclip.workers.manifest import clean_caption
        from pgclip.workers.video import VideoOptions, VideoRejected, store_video

        texts = [t for t in (clean_caption(c) for c in captions) if t]
        try:
            with self._writing() as conn, conn.transaction():
                model = require_active_model(conn)
                stored = store_video(conn, data, source=filename, model_id=model.id,
                                     options=VideoOptions.from_settings(self.settings))
                # Not the images it shares with another video or a picture: theirs stay as they were.
                described = stored.own
                db_images.merge_metadata(conn, {i: metadata for i in described})
                db_images.add_captions(conn, [(i, t) for i in described for t in texts],
                                       ts_config=self.settings.text_search_config)
        except VideoRejected as exc:
            raise InvalidInput(f"the upload is not a usable video: {exc}") from exc
        return stored.video_id, stored.created, stored.frame_ids

    def video(self, video_id: int) -> db_videos.Video:
        return self.read(lambda conn: db_videos.video(conn, video_id))

    def video_size(self, video_id: int) -> tuple[int, str]:
        """(length of the video's stored bytes, its MIME type); NotFound without such a video."""
        return self.read(lambda conn: db_videos.stored_size(conn, video_id))

    def video_bytes(self, video_id: int, start: int, length: int) -> bytes:
        """A piece of the video's bytes (a Range request's, or one chunk of a whole answer)."""
        return self.read(lambda conn: db_videos.read_range(conn, video_id, start, length))

    def delete_video(self, video_id: int) -> None:
        with self._writing() as conn, conn.transaction():
            if not db_videos.delete_videos(conn, [video_id]):
                raise NotFound(f"no video with id {video_id}")

    def edit_image(self, image_id: int, *, metadata: dict[str, Any] | None, replace: bool, unset: list[str],
                   taken_at: Any, add: list[str], remove: list[int]) -> None:
        from pgclip.workers.manifest import clean_caption

        texts = [t for t in (clean_caption(c) for c in add) if t]
        with self._writing() as conn, conn.transaction():
            db_images.edit_image(
                conn, image_id, metadata=metadata, replace_metadata=replace, unset_keys=unset, taken_at=taken_at,
                new_captions=texts, remove_caption_ids=remove, ts_config=self.settings.text_search_config,
            )

    def delete_image(self, image_id: int) -> None:
        with self._writing() as conn, conn.transaction():
            if not db_images.delete_images(conn, [image_id]):
                raise NotFound(f"no image with id {image_id}")

    # --- the page's figures (application/atlas.py) ------------------------------------

    def projection(self, projection: str = "pca") -> Future[atlas.Projection]:
        """The map: the active model's vectors in 2-D ("pca" or "umap"), kept until they change.
        A future: done at once when kept (or PCA); UMAP runs on its own thread, to be awaited."""
        return atlas.start_projection(self, projection)

    def map_details(self, ids: list[int], color: str | None) -> atlas.MapDetails:
        """The map's metadata keys and, with ``color``, each point's value for that key and the legend."""
        return atlas.details(self, ids, color)

    def similarity_matrix(self, ids: list[int], texts: list[str] | None = None, *,
                          captions: bool = False) -> atlas.Similarity:
        """Images x images; with ``texts`` (or ``captions``: each image's first) images x texts."""
        return atlas.similarity(self, ids, texts, captions=captions)

    def duplicates(self, threshold: float) -> dict[str, Any]:
        from pgclip.db.duplicates import near_duplicates

        model, groups = self.read(lambda conn: near_duplicates(conn, threshold))
        return {"threshold": threshold, "model": model.name, "groups": [dataclasses.asdict(g) for g in groups]}

    def tag(self, labels: list[str], *, prompt: str, key: str, min_score: float | None,
            dry_run: bool, overwrite: bool = False) -> tuple[ModelRow, db_tags.TagRun]:
        """Zero-shot tags (``pgclip tag``, ``POST /api/tags``): the labels' prompts encoded once by
        the active model's text tower, then every stored vector scored in SQL (db/tags.py)."""
        labels = db_tags.check_labels(labels)
        db_tags.check_key(key, "key")
        texts = db_tags.prompts(labels, prompt, "prompt")
        with self._writing() as conn:
            model, encoder = self._current(conn)
            vectors = encoder.encode_texts(texts)
            run = db_tags.tag_images(conn, model, labels, vectors, key=key, min_score=min_score, write=not dry_run,
                                     overwrite=overwrite)
        return model, run

    # --- models and their indexes ------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """Every model with its coverage and its index as it exists."""
        with self.pool.connection() as conn:
            infos = describe_indexes(conn)
        return [_model_info(info) for info in infos]

    def model_info(self, model_id: int) -> dict[str, Any]:
        found = next((m for m in self.models() if m["id"] == model_id), None)
        if found is None:
            raise NotFound(f"no model with id {model_id}")
        return found

    def activate(self, model_id: int, *, force: bool) -> tuple[dict[str, Any], str | None]:
        """Switch searches to the model (see `pgclip models activate`); returns it and the one it replaced."""
        from pgclip.db import indexes, models

        with self.pool.connection() as conn:
            model = models.model_by_id(conn, model_id)
            models.check_activation(conn, model, force=force)
        with driver_errors():  # a deferred index is built first, on a connection of its own
            indexes.build_deferred(self.url, model, wait=True)
        with self._writing() as conn:
            previous = models.activate(conn, model, force=force)
        return self.model_info(model_id), previous.label if previous else None

    def rebuild_index(self, model_id: int, options: dict[str, Any]) -> tuple[dict[str, Any], bool, float]:
        """`pgclip index rebuild` for one model: searches keep answering while it builds."""
        from pgclip.db import indexes, models

        with self.pool.connection() as conn:
            model = models.model_by_id(conn, model_id)
            choice = indexes.choose(model, models.vector_count(conn, model), **options)
        with driver_errors():  # the rebuild opens its own connections
            report = indexes.rebuild(self.url, model, choice)
        self.mark_written()  # what the rebuild committed on its own connections
        return self.model_info(model_id), report.built, report.seconds

    def status(self) -> dict[str, Any]:
        """The queue's figures (from a replica when one is in use) and each read replica's state."""
        st = self.read(queue.status)
        data = dataclasses.asdict(st)
        for m, model in zip(data["models"], st.models, strict=True):
            m["eta_seconds"] = model.eta_seconds
        data["replicas"] = [dataclasses.asdict(r) for r in self.replicas.states()] if self.replicas else []
        return data

    def ready(self) -> None:
        from pgclip.db.migrate import require_head

        with self.pool.connection(timeout=READY_WAIT_SECONDS) as conn:
            require_head(conn)


def _model_info(info: IndexInfo) -> dict[str, Any]:
    m = info.coverage.model
    return {
        "id": m.id, "name": m.name, "pretrained": m.pretrained, "dimension": m.dimension, "state": m.state,
        "vectors": info.coverage.vectors, "images": info.coverage.images,
        "index": {"kind": m.index_kind, "storage": m.storage, "params": info.choice.params,
                  "by_size": list(info.choice.sized), "outgrown": info.outgrown,
                  "size_bytes": info.size_bytes, "valid": info.valid, "state": info.state,
                  "exact_search": info.exact, "progress": info.progress, "build": info.build},
    }
