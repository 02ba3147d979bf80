"""CLI commands of the read path: serve, search, demo."""

from __future__ import annotations

import argparse

from pgclip.cli_common import out as _out
from pgclip.errors import InvalidInput
from pgclip.settings import Settings


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from pgclip.api.app import build_service, create_app

    host = args.host or settings.host
    port = args.port or settings.port
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
        _out(f"{n:>3}. #{h.image_id} score {h.score:.4f}{sim}  {h.source or ''}")
        if h.caption:
            _out(f"      {h.caption}")
    return 0


