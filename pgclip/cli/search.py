"""`pgclip search` and `pgclip duplicates`: the read path from the command line."""

from __future__ import annotations

import argparse

from pgclip.cli.common import out as _out
from pgclip.core.errors import InvalidInput
from pgclip.core.search_request import FILTER_KEYS, FILTERS, OPTIONS, PARAMS, QUERY, Param
from pgclip.core.settings import Settings
from pgclip.workers.ingest_files import one_line

# How `pgclip search` spells a parameter of the search request, where not --NAME-WITH-DASHES.
_FLAGS = {"k": "-k", "caption_query": "--caption"}
# The request's options the CLI takes as flags (the query text is the positional argument).
_OPTIONS = tuple(p for p in (*QUERY, *OPTIONS) if p.cli and p.name != "text")
_EXAMPLE_FILTERS = "orientation=landscape, min_width=800, taken_after=2020-01-01, metadata.tag=animal"


def add_search_parsers(sub: argparse._SubParsersAction) -> None:
    """`pgclip search`: a flag for each option of the search request the CLI offers, with the
    defaults, limits and help of ``pgclip.core.search_request``; and `pgclip duplicates`."""
    se = sub.add_parser("search", help="search from the command line (same search as the API)")
    se.add_argument("text", nargs="?", help=PARAMS["text"].help)
    se.add_argument("--image", metavar="PATH", help="search by an image file (added to the text, if any)")
    for p in _OPTIONS:
        flag = _FLAGS.get(p.name, "--" + p.name.replace("_", "-"))
        se.add_argument(flag, dest=p.name, type=_parser(p), default=p.default, choices=p.choices or None,
                        metavar=None if p.choices else "N" if p.kind == "int" else p.kind.upper(), help=_help(p))
    keys = ", ".join(f.name for f in FILTERS)
    se.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                    help=f"narrow the search (repeatable); KEY is one of {keys}, or metadata.KEY for metadata "
                         f"containment; e.g. {_EXAMPLE_FILTERS}")
    se.add_argument("--json", action="store_true", help="print the results as JSON")
    se.add_argument("--in", dest="in_folder", metavar="DIR",
                    help="search only the images of DIR, brought up to date first (as `pgclip sync DIR`: new and "
                         "changed files stored and embedded in this process, deleted ones removed)")
    se.set_defaults(handler=cmd_search)

    dup = sub.add_parser("duplicates", help="groups of near-identical images (resized, re-encoded copies)")
    dup.add_argument("--threshold", type=float, default=0.95, help="cosine similarity, 0.5-1 (default 0.95)")
    dup.add_argument("--json", action="store_true")
    dup.set_defaults(handler=cmd_duplicates)


def _help(p: Param) -> str:
    notes = [note for note in (p.bounds, "" if p.default is None else f"default {p.default}") if note]
    return f"{p.help} ({'; '.join(notes)})" if notes else p.help


def _parser(p: Param):
    """argparse type for a parameter: converted, then held to its bounds (argparse's one-line error)."""
    convert = {"int": int, "number": float}.get(p.kind, str)

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if convert is int else 'a number'}, "
                                             f"got {text!r}") from None
        try:
            p.check(value)
        except InvalidInput as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return parse


def parse_filters(items: list[str]) -> dict:
    """``key=value`` pairs into a filters object, each value read as its filter's kind says;
    ``metadata.KEY=VALUE`` for metadata containment. A list filter takes ``a,b`` or a JSON list,
    and repeated it adds to its list; another filter given twice is refused. A ``folder`` that
    exists here is named as sync stores it (symlinks resolved), as ``--in`` names it."""
    import json
    import os
    from pathlib import Path

    from pgclip.application.sync import folder_filter

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
        kind = PARAMS[key].kind if key in FILTER_KEYS else "text"  # an unknown key is refused by the search
        if key in filters and kind not in ("ids", "texts"):
            raise InvalidInput(f"--filter {key} is given twice ({filters[key]} and {value}): give it once")
        try:
            if kind == "int":
                filters[key] = int(value)
            elif kind == "bool":
                filters[key] = {"true": True, "false": False, "yes": True, "no": False}[value.lower()]
            elif kind in ("ids", "texts"):
                listed = json.loads(value) if value.lstrip().startswith("[") else value.split(",")
                if not isinstance(listed, list) or any(isinstance(v, bool) or not isinstance(v, (int, str))
                                                       for v in listed):
                    raise ValueError
                texts = [str(v).strip() for v in listed if str(v).strip()]
                filters[key] = [*filters.get(key, []), *(map(int, texts) if kind == "ids" else texts)]
            elif key == "folder" and os.path.isdir(value):
                filters[key] = folder_filter(Path(os.path.realpath(value)))
            else:
                filters[key] = value
        except (ValueError, KeyError, TypeError):
            raise InvalidInput(f"--filter {key}: cannot read {value!r}") from None
    return filters


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from pgclip.application.bootstrap import open_service
    from pgclip.db.replicas import start_route
    from pgclip.db.videos import clock

    image = None
    if args.image:
        from pgclip.application.service import read_query_image

        image = read_query_image(args.image)
    options = {p.name: getattr(args, p.name) for p in _OPTIONS}
    options["filters"] = parse_filters(args.filter)
    encoder = None
    if args.in_folder is not None:
        # The folder first (its new images embedded with the encoder that then encodes the query).
        from pgclip.cli.sync import synced_folder

        options["filters"]["folder"], encoder = synced_folder(args.in_folder, settings)
    start_route()  # this command's one read: on a replica only once it has what the sync just wrote
    service = open_service(settings, encoder)
    try:
        if args.in_folder is not None:
            service.mark_written()
        page = service.search(text=args.text, raw=None, image=image, options=options, local_files=True)
    finally:
        service.close()
    if args.json:
        import dataclasses

        videos = getattr(page, "videos", {})
        results = [{**dataclasses.asdict(h), "video": _video_json(videos.get(h.image_id))} for h in page.hits]
        _out(json.dumps({"model": page.model, "results": results}, default=str, indent=2))
        return 0
    if not page.hits:
        _out("no results")
    for n, h in enumerate(page.hits, start=1):
        sim = "" if h.similarity is None else f" similarity {h.similarity:.3f}"
        frame = getattr(page, "videos", {}).get(h.image_id)
        at = f" @ {clock(frame.ts)}" if frame else ""  # a frame of a video: where in it
        _out(f"{n:>3}. #{h.image_id} score {h.score:.4f}{sim}  {one_line(h.source or '')}{at}")
        if h.caption:
            _out(f"      {h.caption}")
    return 0


def _video_json(frame) -> dict | None:  # noqa: ANN001 (a db.videos.VideoFrame or None)
    if frame is None:
        return None
    return {"id": frame.video_id, "timestamp": frame.ts, "source": frame.source, "mime": frame.mime,
            "duration_s": frame.duration_s}


def cmd_duplicates(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses
    import json

    from pgclip.application.bootstrap import ready_url
    from pgclip.db.duplicates import near_duplicates
    from pgclip.db.engine import connection
    from pgclip.db.images import sources

    with connection(ready_url(settings)) as conn:
        model, groups = near_duplicates(conn, args.threshold)
        named = sources(conn, [i for g in groups for i in g.ids])
    if args.json:
        _out(json.dumps({"threshold": args.threshold, "model": model.name,
                         "groups": [dataclasses.asdict(g) for g in groups]}, indent=2))
        return 0
    if not groups:
        _out(f"no near-duplicates at similarity >= {args.threshold} ({model.name})")
    for n, g in enumerate(groups, start=1):
        _out(f"group {n}: {len(g.ids)} images, similarity {g.min_similarity:.3f}-{g.max_similarity:.3f}")
        for image_id in g.ids:
            _out(f"  #{image_id} {one_line(named.get(image_id) or '')}")
    return 0
