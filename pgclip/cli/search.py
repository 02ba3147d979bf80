"""CLI commands of the read path: serve, search, demo."""

from __future__ import annotations

import argparse

from pgclip.cli.common import out as _out
from pgclip.core.errors import InvalidInput
from pgclip.workers.ingest_files import one_line
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


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from pgclip.api.app import build_service, create_app

    host, port = listen_address(args, settings)
    service = build_service(settings)  # fails here, in one line, if the database or model is not usable
    _out(f"pgclip serving on http://{host}:{port}/ (API schema: http://{host}:{port}/schema), model {service.encoder.model_name}")
    uvicorn.run(create_app(settings, service=service), host=host, port=port, log_level="warning")
    return 0


FILTER_TYPES = {"min_width": int, "min_height": int, "has_caption": "bool", "exclude_ids": "ids", "format": "list"}


def parse_filters(items: list[str]) -> dict:
    """``key=value`` pairs into a filters object; ``metadata.KEY=VALUE`` for metadata containment."""
    import json

    filters: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidInput(f"--filter expects key=value, got {item!r}")
        if key.startswith("metadata."):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = value
            filters.setdefault("metadata", {})[key.removeprefix("metadata.")] = parsed
            continue
        kind = FILTER_TYPES.get(key)
        try:
            if kind is int:
                filters[key] = int(value)
            elif kind == "bool":
                filters[key] = {"true": True, "false": False, "yes": True, "no": False}[value.lower()]
            elif kind == "ids":
                filters[key] = [int(v) for v in value.split(",") if v.strip()]
            elif kind == "list":
                filters[key] = [v.strip() for v in value.split(",") if v.strip()]
            else:
                filters[key] = value
        except (ValueError, KeyError):
            raise InvalidInput(f"--filter {key}: cannot read {value!r}") from None
    return filters


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    import json
    from pathlib import Path

    from pgclip.api.app import build_service

    image = None
    if args.image:
        try:
            image = Path(args.image).expanduser().read_bytes()
        except OSError as exc:
            raise InvalidInput(f"cannot read image {args.image}: {exc.strerror or exc}") from None
    options = {"caption_query": args.caption, "filters": parse_filters(args.filter), "k": args.k,
               "fusion": args.fusion, "min_similarity": args.min_similarity, "order": args.order}
    service = build_service(settings)
    try:
        page = service.search(text=args.text, raw=None, image=image, options=options, local_files=True)
    finally:
        service.close()
    if args.json:
        import dataclasses

        _out(json.dumps({"model": page.model, "results": [dataclasses.asdict(h) for h in page.hits]}, default=str, indent=2))
        return 0
    if not page.hits:
        _out("no results")
    for n, h in enumerate(page.hits, start=1):
        sim = "" if h.similarity is None else f" similarity {h.similarity:.3f}"
        _out(f"{n:>3}. #{h.image_id} score {h.score:.4f}{sim}  {one_line(h.source or '')}")
        if h.caption:
            _out(f"      {h.caption}")
    return 0




def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Database, demo collection, embeddings, then the API and page on a printed URL."""
    import dataclasses

    from pgclip.api.app import build_service, create_app
    from pgclip.application.bootstrap import migrate
    from pgclip.cli.common import progress
    from pgclip.db.engine import connection
    from pgclip.db.models import activate_if_unused
    from pgclip.db.queue import open_jobs
    from pgclip.demo import materialize_demo
    from pgclip.core.errors import ModelLoadError
    from pgclip.workers.encoder import ClipEncoder, is_test_model
    from pgclip.workers.ingest import ingest
    from pgclip.workers.loop import Worker
    from pgclip.workers.manifest import load_manifest

    if args.test_model:
        settings = dataclasses.replace(settings, model="test-tiny", pretrained="random")
    url, model = migrate(settings)
    _out(f"database ready: {url}")
    encoder = ClipEncoder.from_settings(settings)
    try:
        encoder.load()
    except ModelLoadError as exc:
        raise ModelLoadError(
            f"{exc}. To see the pipeline without real weights: `pgclip demo --test-model` "
            "(random weights: its search results mean nothing)"
        ) from exc
    if is_test_model(settings.model):
        _out("note: the test model has random weights; the demo's search results mean nothing")
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
    service = build_service(settings)
    host, port = settings.host, settings.port
    _out(f"pgclip demo is running: open http://{host}:{port}/ (Ctrl+C to stop)")
    import uvicorn

    uvicorn.run(create_app(settings, service=service), host=host, port=port, log_level="warning")
    return 0


def cmd_duplicates(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses
    import json

    from pgclip.application.bootstrap import ready_url
    from pgclip.db.duplicates import near_duplicates
    from pgclip.db.engine import connection

    with connection(ready_url(settings)) as conn:
        model, groups = near_duplicates(conn, args.threshold)
        sources = dict(conn.execute(
            "SELECT id, source FROM pgclip.images WHERE id = ANY(%s)", [[i for g in groups for i in g.ids]]
        ).fetchall()) if groups else {}
    if args.json:
        _out(json.dumps({"threshold": args.threshold, "model": model.name,
                         "groups": [dataclasses.asdict(g) for g in groups]}, indent=2))
        return 0
    if not groups:
        _out(f"no near-duplicates at similarity >= {args.threshold} ({model.name})")
    for n, g in enumerate(groups, start=1):
        _out(f"group {n}: {len(g.ids)} images, similarity {g.min_similarity:.3f}-{g.max_similarity:.3f}")
        for image_id in g.ids:
            _out(f"  #{image_id} {one_line(sources.get(image_id) or '')}")
    return 0
