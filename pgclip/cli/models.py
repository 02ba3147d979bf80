"""CLI commands for models: list, re-embed, activate, drop."""

from __future__ import annotations

import argparse
import dataclasses

from pgclip.cli.common import memory_size, out, positive
from pgclip.core.settings import Settings


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.application.bootstrap import ready_url
    from pgclip.db import indexes, models
    from pgclip.db.engine import connection

    url = ready_url(settings)
    with connection(url) as conn:
        if args.action == "activate":
            model = models.find_model(conn, args.name, args.pretrained)
            models.check_activation(conn, model, force=args.force)
            conn.commit()  # no snapshot held while the index builds: CONCURRENTLY waits for older ones
            # Searches switch to a model with its index: a deferred one is built first.
            report = indexes.build_deferred(url, model, wait=True)
            if report is not None:
                out(f"built the index of {model.label} first: {report.vectors} vectors in {report.seconds:.1f} s")
            previous = models.activate(conn, model, force=args.force)
            out(f"{model.label} is active" + (f" (was {previous.label})" if previous else " (already was)"))
            return 0
        if args.action == "drop":
            model = models.find_model(conn, args.name, args.pretrained)
            removed = models.drop(conn, model)
            out(f"dropped {model.label}: {removed} vectors and its index removed")
            return 0
        infos = indexes.describe_indexes(conn)
    out(f"{'model':<20} {'pretrained':<28} {'dim':>5}  {'state':<9} {'vectors':<20} index")
    for info in infos:
        c = info.coverage
        mark = "  <- answers searches" if c.model.state == "active" else ""
        out(f"{c.model.name:<20} {c.model.pretrained[:28]:<28} {c.model.dimension:>5}  {c.model.state:<9} "
            f"{f'{c.vectors}/{c.images} ({c.percent})':<20} {_short_state(info)}{mark}")
    return 0


def _short_state(info) -> str:
    if info.state == "building" and info.progress is not None:
        return f"building {info.progress:.0%} (exact search)"
    return info.state if info.state == "built" else f"{info.state} (exact search)"


def cmd_reembed(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.application.bootstrap import ready_url, register_configured_model
    from pgclip.db.engine import connection
    from pgclip.db.indexes import defer_index
    from pgclip.db.models import vector_count
    from pgclip.db.queue import bare_images, enqueue_model, failed_images
    from pgclip.workers.weights import check_weights, model_dimension

    pretrained = args.checkpoint or args.pretrained or settings.pretrained
    target = dataclasses.replace(settings, model=args.name, pretrained=pretrained)
    url = ready_url(settings)
    model_dimension(args.name)  # an unknown model name: one line, nothing registered
    check_weights(args.name, pretrained)  # weights no worker could load would leave jobs nobody takes
    model = register_configured_model(url, target)
    # Its vectors go in by plain inserts; the index is built once, when its queue has drained.
    defer_index(url, model, only_empty=True)
    with connection(url) as conn, conn.transaction():
        queued = enqueue_model(conn, model.id)
        failed = failed_images(conn, model.id)
        bare = bare_images(conn, model.id)
        counts = vector_count(conn, model)
    index = "its vector index is built once they are embedded" if model.index_kind != "none" and not counts else ""
    out(f"{model.label} ({model.state}): {queued} images queued for it" + (f"; {index}" if index else ""))
    if failed:
        out(f"{failed} images failed for it before and are not queued again: `pgclip retry-failed` retries them")
    if bare:
        out(f"{bare} images have no stored bytes (they came from `pgclip import`): its workers cannot embed them "
            "until their files are ingested (`pgclip ingest` them, then `pgclip retry-failed`)")
    if queued:
        encoder = f"PGCLIP_ENCODER={settings.encoder} " if settings.encoder == "onnx-int8" else ""
        then = "" if model.state == "active" else \
            f"; then `pgclip models activate {args.name} --pretrained {model.pretrained}`"
        out(f"run workers for it: {encoder}PGCLIP_PRETRAINED={pretrained} pgclip worker --model {args.name}{then}")
    return 0


def cmd_index(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.application.bootstrap import ready_url
    from pgclip.db import indexes, models
    from pgclip.db.engine import connection

    url = ready_url(settings)
    with connection(url) as conn:
        if args.action == "list":
            infos = indexes.describe_indexes(conn)
        else:
            model = models.find_model(conn, args.name, args.pretrained)
            before = indexes.current_choice(model, indexes.built_params(conn, model))
            choice = indexes.choose(
                model, indexes.vector_count(conn, model), kind=args.kind, halfvec=args.halfvec, m=args.m,
                ef_construction=args.ef_construction, by_size=args.by_size, ef_search=args.ef_search,
                lists=args.lists, probes=args.probes,
            )
    if args.action == "list":
        out(f"{'model':<20} {'pretrained':<28} {'vectors':>8} {'size':>9}  index")
        for info in infos:
            m = info.coverage.model
            size = "-" if info.size_bytes is None else f"{info.size_bytes / 2**20:.1f} MB"
            state = "" if m.index_kind == "none" else f"  [{info.describe_state()}]"
            if info.build:  # a deferred build's record
                state = (f"  [built in {info.build['seconds']} s with maintenance_work_mem "
                         f"{info.build['maintenance_work_mem']}, {info.build['vectors']} vectors]")
            out(f"{m.name:<20} {m.pretrained[:28]:<28} {info.coverage.vectors:>8} {size:>9}  "
                f"{info.choice.describe()}{state}")
            if grown := info.outgrown:
                graph = ", ".join(f"{k}={v}" for k, v in grown.items())
                out(f"{'':<20} the collection outgrew this graph: `pgclip index rebuild {m.name}` builds {graph}")
        return 0
    same = choice == before
    out(f"{model.label}: {before.describe()}" + ("" if same else f" -> {choice.describe()}"))
    report = indexes.rebuild(url, model, choice, build_memory=args.memory)
    if report.built:
        out(f"built in {report.seconds:.1f} s ({report.size_bytes / 2**20:.1f} MB); the old index is dropped")
    elif choice.kind == "none":
        out("index dropped: searches of this model now rank every vector exactly")
    elif same:
        out("nothing to change: the index is built as asked")
    else:
        out("query-time settings only: no rebuild needed, searches use them from now on")
    return 0


def add_model_parsers(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("models", help="list the CLIP models, activate one, or drop a retired one")
    m.add_argument("action", nargs="?", choices=["list", "activate", "drop"], default="list")
    m.add_argument("name", nargs="?", help="model name (for activate / drop)")
    m.add_argument("--pretrained", help="which weights, when several models share the name")
    m.add_argument("--force", action="store_true", help="activate even before every image has its vector")
    m.set_defaults(handler=_checked_models)

    r = sub.add_parser("reembed", help="register a model and queue every image for it (search keeps answering)")
    r.add_argument("name", help="open_clip model name, e.g. ViT-B-16")
    weights = r.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", metavar="TAG", help="open_clip pretrained tag")
    weights.add_argument("--checkpoint", metavar="PATH", help="local checkpoint file")
    r.set_defaults(handler=cmd_reembed)

    i = sub.add_parser(
        "index", help="list the vector indexes, or rebuild one with another kind, storage or parameters",
        description="`pgclip index` lists each model's index. `pgclip index rebuild MODEL` builds the new index "
                    "with CREATE INDEX CONCURRENTLY beside the old one (searches go on), switches searches to it "
                    "and drops the old one. Options left out keep their current values.",
    )
    i.add_argument("action", nargs="?", choices=["list", "rebuild"], default="list")
    i.add_argument("name", nargs="?", help="model name (for rebuild)")
    i.add_argument("--pretrained", help="which weights, when several models share the name")
    i.add_argument("--kind", choices=["hnsw", "ivfflat", "none"], help="hnsw, ivfflat, or none (exact search)")
    storage = i.add_mutually_exclusive_group()
    storage.add_argument("--halfvec", action="store_true", default=None,
                         help="index the vectors as halfvec: half the size (results are re-ranked at full precision)")
    storage.add_argument("--vector", dest="halfvec", action="store_false", help="index the vectors as vector")
    i.add_argument("--m", type=positive,
                   help="HNSW: graph degree, fixed from now on (default: by the collection's size, 16)")
    i.add_argument("--ef-construction", type=positive,
                   help="HNSW: build candidate list, fixed from now on (default: by the collection's size, 64 or 128)")
    i.add_argument("--by-size", action="store_true",
                   help="HNSW: m and ef_construction from the collection's size again, forgetting fixed ones")
    i.add_argument("--ef-search", type=positive, help="HNSW: query candidate list (default: the search's window)")
    i.add_argument("--lists", type=positive, help="IVFFlat: number of lists (default vectors / 1000)")
    i.add_argument("--probes", type=positive, help="IVFFlat: lists probed per query (default sqrt(lists))")
    i.add_argument("--memory", type=memory_size,
                   help="maintenance_work_mem for the build, such as 4GB (default: the server's, at least 1GB)")
    i.set_defaults(handler=_checked_index)


def _checked_index(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.core.errors import InvalidInput

    if args.action == "rebuild" and not args.name:
        raise InvalidInput("`pgclip index rebuild` needs a model name (see `pgclip models`)")
    return cmd_index(args, settings)


def _checked_models(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.core.errors import InvalidInput

    if args.action in ("activate", "drop") and not args.name:
        raise InvalidInput(f"`pgclip models {args.action}` needs a model name (see `pgclip models`)")
    return cmd_models(args, settings)
