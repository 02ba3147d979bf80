"""``create_app()``: the Litestar application (JSON API, OpenAPI schema at /schema)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import ResponseHeader
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.params import HeaderParameter
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from pgclip import __version__
from pgclip.api.errors import HANDLERS
from pgclip.api.metrics import ApiMetrics
from pgclip.api.pages import ROUTE_HANDLERS as PAGE_HANDLERS
from pgclip.api.routes import ImageController, ModelController, SearchController, SystemController
from pgclip.api.videos import VideoController
from pgclip.application.service import Service
from pgclip.core.errors import InvalidInput
from pgclip.core.logs import adopt
from pgclip.core.settings import Settings
from pgclip.db.replicas import parse_lsn, start_route

# Read-your-writes over HTTP (README "Read replicas"): a write answers with the primary's WAL
# position after its commit; a read that sends it back is answered by a replica that has
# replayed that far, or by the primary. Every answer that read the database names who did.
LSN_HEADER = b"x-pgclip-lsn"
MIN_LSN_HEADER = b"x-pgclip-min-lsn"
SERVED_BY_HEADER = b"x-pgclip-served-by"
# The three in the OpenAPI schema (route_reads below sets and reads them, outside the router).
READ_YOUR_WRITES_HEADERS = [
    ResponseHeader(name="X-Pgclip-Served-By", documentation_only=True,
                   description="On an answer that read the database: who answered, `primary` or `replica-N` "
                               "(N: its place in PGCLIP_READ_DATABASE_URLS)."),
    ResponseHeader(name="X-Pgclip-Lsn", documentation_only=True,
                   description="On an answer to a write: the primary's WAL position after its commit. Send it "
                               "back as X-Pgclip-Min-Lsn to read your own write from a replica."),
]
MIN_LSN_PARAMETER = {"x_pgclip_min_lsn": HeaderParameter(
    name="X-Pgclip-Min-Lsn", annotation=str, required=False,
    description="An X-Pgclip-Lsn answer of an earlier write: the read is answered by a replica that has "
                "replayed that far (waiting up to 0.5 s), else by the primary. Anything else is a 400.")}


def create_app(settings: Settings | None = None, *, service: Service | None = None) -> Litestar:
    """The application; with ``service`` given (``pgclip serve`` builds it first), start-up does no I/O."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        nonlocal service
        if service is None:
            import asyncio

            from pgclip.application.bootstrap import open_service

            service = await asyncio.to_thread(open_service, settings or Settings.from_env())
        app.state.service = service
        metrics.instrument(service)
        # uvicorn gave its loggers handlers of their own as it started: PGCLIP_LOG_FORMAT is for them too.
        adopt("uvicorn", "uvicorn.error", "uvicorn.access")
        try:
            yield
        finally:
            service.close()

    def provide_service() -> Service:
        assert service is not None
        return service

    upload_limit = (settings.upload_max_bytes if settings else None) or (
        service.settings.upload_max_bytes if service else Settings().upload_max_bytes
    )
    # POST /api/images takes videos too: the images' routes take bodies up to the video limit
    # (the upload holds an image to upload_limit itself); every other route keeps upload_limit.
    video_limit = (settings or (service.settings if service else Settings())).video_upload_max_bytes
    images = type("ImageController", (ImageController,), {"request_max_body_size": max(upload_limit, video_limit)})
    metrics = ApiMetrics(lambda: service)
    app = Litestar(
        route_handlers=[SearchController, images, VideoController, ModelController, SystemController, *PAGE_HANDLERS,
                        metrics.route()],
        dependencies={"service": Provide(provide_service, sync_to_thread=False)},
        exception_handlers=HANDLERS,
        lifespan=[lifespan],
        request_max_body_size=upload_limit,
        response_headers=READ_YOUR_WRITES_HEADERS,
        parameters=MIN_LSN_PARAMETER,
        openapi_config=OpenAPIConfig(
            title="pgclip", version=__version__, path="/schema",
            description="Semantic image search inside PostgreSQL: CLIP vectors, caption full-text, filters.",
        ),
        logging_config=None,  # the process's logging is pgclip's (core/logs.py), set up by its entry point
    )
    # Outside the router, so that 404s and the exception handlers' answers are counted too
    # (and a refused X-Pgclip-Min-Lsn: route_reads is inside).
    app.asgi_handler = metrics.wrap(route_reads(app.asgi_handler))
    return app


def route_reads(app: ASGIApp) -> ASGIApp:
    """Give each HTTP request a Route (``pgclip.db.replicas``) holding its X-Pgclip-Min-Lsn, and
    answer with X-Pgclip-Served-By and X-Pgclip-Lsn from what the service recorded in it."""

    async def routed(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        raw = next((value for name, value in scope["headers"] if name == MIN_LSN_HEADER), None)
        try:
            min_lsn = parse_lsn(raw.decode("latin-1")) if raw else None
        except InvalidInput as exc:
            await _refuse(send, 400, f"the header X-Pgclip-Min-Lsn is {exc} (send back an X-Pgclip-Lsn answer)")
            return
        route = start_route(min_lsn)

        async def send_routed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if route.served_by:
                    headers.append((SERVED_BY_HEADER, route.served_by.encode()))
                if route.lsn:
                    headers.append((LSN_HEADER, route.lsn.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_routed)

    return routed


async def _refuse(send: Send, status: int, detail: str) -> None:
    import json

    body = json.dumps({"status_code": status, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
