"""The API's Prometheus metrics, at ``GET /metrics`` (left out of the OpenAPI schema).

- every request: count and latency by method, route and status. The route is the
  template that matched (``/api/images/{image_id}``), never the raw path, and every path
  that matched no route is the one label ``unmatched``, so clients cannot grow the series;
- searches: latency by kind (text, image, vector, caption, hybrid, similar);
- the encoder: latency of query texts and query images through the model;
- the process's text cache: hits and misses;
- the connection pool and the queue's depth, read at scrape time (``pgclip.db.metrics``):
  when the database is down the scrape still answers 200 at once, with
  ``pgclip_database_up 0``.

Each app has a registry of its own, so two apps in one process (tests) never collide.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from litestar import Request, Response, get
from litestar.handlers import HTTPRouteHandler
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Histogram
from prometheus_client.exposition import choose_encoder

from pgclip.application.service import Service, VectorCache
from pgclip.core.errors import DatabaseUnavailable
from pgclip.db.metrics import DatabaseCollector, PoolCollector
from pgclip.workers.metrics import process_registry

PATH = "/metrics"
UNMATCHED = "unmatched"  # the route label of every path no route matched (404s, scanners)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others: "other"
SCRAPE_WAIT_SECONDS = 1.0  # longest a scrape waits for a pooled connection (0.5 s once an outage is known)
# Seconds: a cached text query answers in a few ms, an upload or a cold model in seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ApiMetrics:
    """The registry behind ``/metrics`` and the instruments the API reports to.

    ``service()`` is the app's service, or None while the app is starting: the pool's
    figures and the queue's appear once it is there.
    """

    def __init__(self, service: Callable[[], Service | None]) -> None:
        self.service = service
        self.registry = registry = process_registry()
        self.requests = Counter("pgclip_http_requests", "HTTP requests answered, by method, route template and status",
                                ["method", "route", "status"], registry=registry)
        self.latency = Histogram("pgclip_http_request_duration_seconds",
                                 "Seconds from a request's arrival to its answer, by method, route template and status",
                                 ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=registry)
        self.searches = Histogram("pgclip_search_duration_seconds",
                                  "Seconds per answered search, query encoding included, by kind (text, image, "
                                  "vector, caption, hybrid: a vector and a caption query, similar: more like this)",
                                  ["kind"], buckets=LATENCY_BUCKETS, registry=registry)
        self.encoder = Histogram("pgclip_encoder_duration_seconds",
                                 "Seconds the model took to encode a query, by tower (text, image)",
                                 ["tower"], buckets=LATENCY_BUCKETS, registry=registry)
        self.text_cache = Counter("pgclip_text_cache_requests", "Query texts looked up in the process's vector "
                                  "cache, by result (hit, miss: asked of the database's cache, then the model)",
                                  ["result"], registry=registry)
        for result in ("hit", "miss"):
            self.text_cache.labels(result=result)
        registry.register(PoolCollector(lambda: service.pool if (service := self.service()) else None))
        registry.register(DatabaseCollector(self._pooled))

    @contextmanager
    def _pooled(self) -> Iterator[psycopg.Connection]:
        service = self.service()
        if service is None:
            raise DatabaseUnavailable("the API has not opened its database pool yet")
        with service.pool.connection(timeout=SCRAPE_WAIT_SECONDS) as conn:
            yield conn

    # --- requests -------------------------------------------------------------------

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """An ASGI app that times ``app``'s HTTP requests: around Litestar's router, so that it
        sees 404s and the answers of exception handlers too."""

        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            status = 500  # unless a response starts: an exception that escaped every handler

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_status)
            finally:
                method = scope["method"] if scope["method"] in METHODS else "other"
                # Litestar sets the template once a route matched (not for a 404 or a 405).
                labels = (method, scope.get("path_template") or UNMATCHED, str(status))
                self.requests.labels(*labels).inc()
                self.latency.labels(*labels).observe(time.perf_counter() - start)

        return timed

    def route(self) -> HTTPRouteHandler:
        """``GET /metrics``: Prometheus's text format (or OpenMetrics, as the scraper asks)."""
        registry = self.registry

        @get(PATH, include_in_schema=False, sync_to_thread=True)
        def metrics(request: Request) -> Response[bytes]:
            # Off the event loop: the queue's figures are a database query.
            encoder, content_type = choose_encoder(request.headers.get("accept", ""))
            # As a header: Litestar would append its own charset to the one the type carries.
            return Response(encoder(registry), media_type=content_type, headers={"content-type": content_type})

        return metrics

    # --- the service ------------------------------------------------------------------

    def instrument(self, service: Service) -> None:
        """Time ``service``'s searches and its encoders, and count its text cache's hits.

        The application layer knows nothing of Prometheus: its searches, its encoders and its
        cache are wrapped here, once, as the API takes the service into use.
        """
        if isinstance(service.cache, _CountingCache):
            return
        service.cache = _CountingCache(service.cache.size, self.text_cache)
        encoder_for, search, similar = service.encoder_for, service.search, service.similar

        def timed_encoder_for(model: Any) -> Any:
            return _TimedEncoder(encoder_for(model), self.encoder)

        def timed_search(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            page = search(*args, **kwargs)
            self.searches.labels(search_kind(**kwargs)).observe(time.perf_counter() - start)
            return page

        def timed_similar(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            page = similar(*args, **kwargs)
            self.searches.labels("similar").observe(time.perf_counter() - start)
            return page

        service.encoder_for = timed_encoder_for  # type: ignore[method-assign]
        service.search = timed_search  # type: ignore[method-assign]
        service.similar = timed_similar  # type: ignore[method-assign]


def search_kind(*, text: str | None = None, raw: Any = None, image: bytes | None = None,
                options: dict[str, Any] | None = None, **_: Any) -> str:
    """The kind label of a search: what its vector came from, hybrid with a caption query too."""
    vector = "image" if image is not None else "text" if text and text.strip() else "vector" if raw is not None else None
    caption = bool((options or {}).get("caption_query"))
    if vector and caption:
        return "hybrid"
    return vector or "caption"


class _CountingCache(VectorCache):
    def __init__(self, size: int, counter: Counter) -> None:
        super().__init__(size)
        self._hits, self._misses = counter.labels(result="hit"), counter.labels(result="miss")

    def get(self, key: tuple[int, str]) -> Any:
        value = super().get(key)
        (self._misses if value is None else self._hits).inc()
        return value


class _TimedEncoder:
    """An encoder whose query encodings are timed; everything else is the encoder's own."""

    def __init__(self, encoder: Any, histogram: Histogram) -> None:
        self._encoder = encoder
        self._texts, self._images = histogram.labels(tower="text"), histogram.labels(tower="image")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def encode_texts(self, texts: Any) -> Any:
        with self._texts.time():
            return self._encoder.encode_texts(texts)

    def encode_images(self, images: Any) -> Any:
        with self._images.time():
            return self._encoder.encode_images(images)
