"""`pgclip serve` and `pgclip demo`: the API and the page, on a printed address."""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading

from pgclip.cli.common import out as _out
from pgclip.cli.common import port_number
from pgclip.core.errors import InvalidInput
from pgclip.core.settings import Settings


def listen_address(args: argparse.Namespace, settings: Settings) -> tuple[str, int]:
    """Where ``pgclip serve`` listens: ``--host``/``--port``, else PGCLIP_HOST/PGCLIP_PORT.

    Raises :class:`InvalidInput` for an address off loopback without PGCLIP_API_KEYS, before
    anything else starts (tests/unit/test_compose.py runs it on the environment compose gives).
    """
    from pgclip.api.auth import is_loopback

    host = args.host or settings.host
    port = args.port or settings.port
    if not settings.write_keys and not is_loopback(host):
        raise InvalidInput(
            f"refusing to listen on {host} without PGCLIP_API_KEYS: anyone who reaches it could upload and "
            "delete images; set PGCLIP_API_KEYS or listen on 127.0.0.1"
        )
    return host, port


def listening_socket(host: str, port: int):  # noqa: ANN201 - a socket.socket
    """The socket the server will answer on, bound now: a port already taken or an address this
    machine does not have is one line (ConfigError) before the model loads, not a log line after
    "serving on" was printed."""
    import socket

    from pgclip.core.errors import ConfigError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


# On SIGTERM (or Ctrl-C), requests in flight get this long to finish before they are cancelled:
# without a bound, one client that stalls (a request body never sent whole, a download it
# stopped reading) kept the server from ever exiting.
SHUTDOWN_GRACE_SECONDS = 10


def run_server(app, sock) -> None:  # noqa: ANN001
    import uvicorn

    # uvicorn says in one line that it cancels what is left; the traceback of each cancelled
    # request that follows ("Exception in ASGI application") is that same news, not a fault.
    logging.getLogger("uvicorn.error").addFilter(_not_cancelled_at_shutdown)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS)
    uvicorn.Server(config).run(sockets=[sock])


def _not_cancelled_at_shutdown(record: logging.LogRecord) -> bool:
    return not (record.exc_info and record.exc_info[0] is asyncio.CancelledError)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.api.app import create_app
    from pgclip.application.bootstrap import open_service

    host, port = listen_address(args, settings)
    sock = listening_socket(host, port)
    service = open_service(settings)  # fails here, in one line, if the database or model is not usable
    _out(f"pgclip serving on http://{host}:{port}/ (API schema: http://{host}:{port}/schema), model {service.encoder.model_name}")
    run_server(create_app(settings, service=service), sock)
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Database, demo collection, embeddings, then the API and page on a printed URL."""
    import dataclasses

    from pgclip.api.app import create_app
    from pgclip.application.bootstrap import migrate, open_service
    from pgclip.cli.common import progress
    from pgclip.core.errors import ModelLoadError
    from pgclip.db.engine import connection
    from pgclip.db.models import activate_if_unused
    from pgclip.db.queue import open_jobs
    from pgclip.demo import materialize_demo
    from pgclip.workers.encoder import ClipEncoder, is_test_model
    from pgclip.workers.ingest import ingest
    from pgclip.workers.loop import Worker
    from pgclip.workers.manifest import load_manifest

    if args.test_model:
        settings = dataclasses.replace(settings, model="test-tiny", pretrained="random")
    # The model first: without its weights the demo stops before it registers (and activates) a
    # model that could never embed, which `pgclip demo --test-model` would then leave "building".
    encoder = ClipEncoder.from_settings(settings)
    try:
        encoder.load()
    except ModelLoadError as exc:
        raise ModelLoadError(
            f"{exc}. To see the pipeline without real weights: `pgclip demo --test-model` "
            "(random weights: its search results mean nothing)"
        ) from exc
    url, model = migrate(settings)
    _out(f"database ready: {url}")
    if is_test_model(settings.model):
        _out("note: the test model has random weights; the demo's search results mean nothing")
    if args.test_model:  # ingest and workers embed for the configured model (ViT-B-32 by default), not this one
        _out("`pgclip search` and `pgclip serve` answer with it while it is the active model; to add images to "
             "it, give ingest and workers the same model: PGCLIP_MODEL=test-tiny PGCLIP_PRETRAINED=random "
             "pgclip ingest DIR, then PGCLIP_MODEL=test-tiny PGCLIP_PRETRAINED=random pgclip worker")
    with connection(url) as conn:
        if activate_if_unused(conn, model):
            _out(f"model {model.label} is now the active model (the previous one had no vectors)")
    manifest = load_manifest(materialize_demo(settings.data_dir / "demo"))
    with connection(url, role="ingest") as conn, progress(len(manifest.entries), "file", "ingest") as bar:
        report = ingest(conn, [], model_id=model.id, manifest=manifest, ts_config=settings.text_search_config,
                        progress=bar.update)
    _out(f"demo collection: {report.added} added, {report.present} already present, "
         f"{report.captions_added} captions added")
    with connection(url) as conn:
        pending = open_jobs(conn, model.id)[0]
    with progress(pending, "img", "embed") as bar:
        worker = Worker(url, encoder=encoder, model=model, batch_size=settings.batch_size,
                        lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts, on_done=bar.update)
        stats = worker.run(until_empty=True)
    _out(f"embedded {stats.done} images ({stats.failed} failed) with {model.label}")
    if args.no_serve:
        return 0
    host, port = settings.host, settings.port
    sock = listening_socket(host, port)
    service = open_service(settings, encoder)
    # A worker goes on beside the page: uploads get embedded, and `pgclip.search_text` in psql
    # gets its text vectors (the demo is the one process holding the model).
    worker = Worker(url, encoder=encoder, model=model, batch_size=settings.batch_size,
                    lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts)
    background = threading.Thread(target=worker.run, name="demo-worker", daemon=True)
    background.start()
    _out(f"pgclip demo is running: open http://{host}:{port}/ (Ctrl+C to stop)")
    try:
        run_server(create_app(settings, service=service), sock)
    finally:
        worker.stop()
        background.join(timeout=settings.lease_seconds)
    return 0


def add_serve_parsers(sub: argparse._SubParsersAction) -> None:
    srv = sub.add_parser("serve", help="serve the HTTP API and web page")
    srv.add_argument("--host", help="address to listen on (default PGCLIP_HOST, 127.0.0.1)")
    srv.add_argument("--port", type=port_number, help="port (default PGCLIP_PORT, 8000)")
    srv.set_defaults(handler=cmd_serve)

    demo = sub.add_parser("demo", help="database + demo collection + embeddings, then serve the page")
    demo.add_argument("--test-model", action="store_true",
                      help="use the random-weight test model (when real CLIP weights cannot be loaded)")
    demo.add_argument("--no-serve", action="store_true", help="stop once every demo image is embedded")
    demo.set_defaults(handler=cmd_demo)
