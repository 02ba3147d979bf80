"""CLI commands for models: list, re-embed, activate, drop."""

from __future__ import annotations

import argparse
import dataclasses

from pgclip.cli_common import out
from pgclip.settings import Settings


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.bootstrap import ready_url
    from pgclip.db import models
    from pgclip.db.engine import connection

    with connection(ready_url(settings)) as conn:
        if args.action == "activate":
            model = models.find_model(conn, args.name, args.pretrained)
            previous = models.activate(conn, model, force=args.force)
            out(f"{model.label} is active" + (f" (was {previous.label})" if previous else " (already was)"))
            return 0
        if args.action == "drop":
            model = models.find_model(conn, args.name, args.pretrained)
            removed = models.drop(conn, model)
            out(f"dropped {model.label}: {removed} vectors and its index removed")
            return 0
        rows = models.coverage(conn)
    out(f"{'model':<20} {'pretrained':<28} {'dim':>5}  {'state':<9} vectors")
    for c in rows:
        mark = "  <- answers searches" if c.model.state == "active" else ""
        out(f"{c.model.name:<20} {c.model.pretrained[:28]:<28} {c.model.dimension:>5}  {c.model.state:<9} "
            f"{c.vectors}/{c.images} ({c.fraction:.0%}){mark}")
    return 0


def cmd_reembed(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.bootstrap import ready_url, register_configured_model
    from pgclip.db.engine import connection
    from pgclip.db.queue import enqueue_model

    pretrained = args.checkpoint or args.pretrained or settings.pretrained
    target = dataclasses.replace(settings, model=args.name, pretrained=pretrained)
    url = ready_url(settings)
    model = register_configured_model(url, target)  # the row and its vector index
    with connection(url) as conn, conn.transaction():
        queued = enqueue_model(conn, model.id)
    out(f"{model.label} registered ({model.state}); {queued} images queued for it")
    out(f"run workers for it: PGCLIP_PRETRAINED={pretrained} pgclip worker --model {args.name}; "
        f"then `pgclip models activate {args.name}`")
    return 0


def add_model_parsers(sub, positive) -> None:
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


def _checked_models(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.errors import InvalidInput

    if args.action in ("activate", "drop") and not args.name:
        raise InvalidInput(f"`pgclip models {args.action}` needs a model name (see `pgclip models`)")
    return cmd_models(args, settings)
