"""The ``pgclip eval captions|classes`` sub-commands: argument parsing, setup and printing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pgclip.cli.common import nonnegative
from pgclip.core.errors import InvalidInput, NotFound
from pgclip.core.settings import Settings
from pgclip.evaluate.captions import CaptionResult, eval_captions, set_name_for
from pgclip.evaluate.classes import ClassResult, eval_classes
from pgclip.evaluate.common import CIFAR10, DEFAULT_SIZE, DIGITS, MNIST
from pgclip.evaluate.datasets import load_dataset
from pgclip.evaluate.report import caption_table, class_table, write_report


def _bar(total: int | None, unit: str, desc: str):
    from pgclip.cli.common import progress

    return progress(total, unit, desc)


def _setup(settings: Settings):
    """The database URL, the active model (which must be the configured one) and the configured encoder."""
    from pgclip.application.bootstrap import ready_url, register_configured_model
    from pgclip.db.engine import connection
    from pgclip.db.models import require_active_model
    from pgclip.workers.encoder import ClipEncoder

    url = ready_url(settings)
    configured = register_configured_model(url, settings)
    with connection(url, role="eval") as conn:
        active = require_active_model(conn)
    if active.id != configured.id:
        raise InvalidInput(
            f"the configured model {configured.label} is not the active one ({active.label}); eval measures the "
            "active model's search: set PGCLIP_MODEL/PGCLIP_PRETRAINED to it"
        )
    encoder = ClipEncoder.from_settings(settings)
    encoder.load()  # fail fast, in one line, before any work
    return url, encoder


def _emit(args: argparse.Namespace, result: CaptionResult | ClassResult, table: list[str]) -> None:
    from pgclip.cli.common import out

    paths = write_report(result, Path(args.report)) if args.report else None
    if args.json:
        data = result.as_dict()
        if paths:
            data["report"] = {"markdown": str(paths[0]), "plot": str(paths[1])}
        out(json.dumps(data, indent=2, default=str))
        return
    for line in table:
        out(line)
    if paths:
        out(f"report: {paths[0]} ({paths[1].name})")


def cmd_eval_captions(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.cli.search import parse_filters
    from pgclip.db.engine import connection
    from pgclip.workers.manifest import load_manifest

    path = Path(args.manifest).expanduser()
    if not path.is_file():
        raise NotFound(f"no captions manifest at {path}")
    manifest = load_manifest(path)
    filters = parse_filters(args.filter)
    set_name = set_name_for(path, args.set)
    images = Path(args.images).expanduser() if args.images else None
    if images is not None and not images.is_dir():
        raise NotFound(f"no images folder at {images}")
    url, encoder = _setup(settings)
    with connection(url, role="eval") as conn:
        result = eval_captions(conn, encoder, manifest, n=args.n, seed=args.seed, k=args.k, caption=args.caption,
                               filters=filters, set_name=set_name, images=images, url=url,
                               worker_options={"batch_size": settings.batch_size,
                                               "lease_seconds": settings.lease_seconds,
                                               "max_attempts": settings.max_attempts},
                               ts_config=settings.text_search_config, progress=_bar)
    _emit(args, result, caption_table(result))
    return 0


def _cache_dir(args: argparse.Namespace) -> Path:
    if args.cache_dir:
        return Path(args.cache_dir).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("pgclip")) / "eval"


def cmd_eval_classes(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.db.engine import connection

    dataset = load_dataset(args.dataset, cache_dir=_cache_dir(args), name=args.name, size=args.size,
                           resample=args.resample, invert=args.invert, max_images=args.max_images, seed=args.seed,
                           data=Path(args.data).expanduser() if args.data else None, split=args.split)
    url, encoder = _setup(settings)
    with connection(url, role="eval") as conn:
        result = eval_classes(conn, url, encoder, dataset, limit=args.limit, seed=args.seed,
                              batch_size=settings.batch_size, lease_seconds=settings.lease_seconds,
                              max_attempts=settings.max_attempts, ts_config=settings.text_search_config,
                              progress=_bar)
    _emit(args, result, class_table(result))
    return 0


def add_eval_parser(subparsers: Any) -> None:
    """Add ``pgclip eval captions|classes`` to the CLI's sub-command parsers."""
    from pgclip.cli.common import positive

    ev = subparsers.add_parser(
        "eval", help="measure retrieval quality through the API's search (the papers' protocols)",
        description="Measure retrieval through pgclip's own search (SQL in PostgreSQL, vectors from the configured "
                    "encoder) and show the papers' figures beside ours.",
    )
    protocols = ev.add_subparsers(dest="eval_protocol", metavar="PROTOCOL", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seed", type=nonnegative, default=0, help="sampling seed (default 0)")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.add_argument("--report", metavar="DIR", help="write report.md and a PNG plot into DIR")

    cap = protocols.add_parser(
        "captions", help="caption -> image and image -> caption top-K accuracy on a set of a manifest's images "
                         "(seed 000, Flickr30k)",
        description="Sample N embedded images of MANIFEST as an evaluation set (metadata eval_set = --set), query "
                    "with one caption each as text among the set's images, rank every caption of the set for each "
                    "image, and report how often the right answer is in the top 1/3/5/10. The images must be stored "
                    "and embedded (`pgclip ingest DIR --captions MANIFEST`, `pgclip worker --until-empty`), or give "
                    "--images DIR to ingest and embed the sample alone.",
    )
    cap.add_argument("manifest", metavar="MANIFEST", help="Flickr30k results.csv or JSON Lines manifest")
    cap.add_argument("--images", metavar="DIR",
                     help="the folder holding the manifest's images: sample among the files there, then ingest and "
                          "embed the sample in this process (default: sample among images stored and embedded already)")
    cap.add_argument("--set", metavar="NAME",
                     help="the evaluation set's name, stored as metadata eval_set (default: the manifest's file name "
                          "without extension, e.g. results); its earlier members are untagged")
    cap.add_argument("--n", type=positive, default=500, help="images to sample (default 500, as in the paper)")
    cap.add_argument("--k", type=positive, default=10, help="results per query (default 10, at most 100)")
    cap.add_argument("--caption", choices=["first", "random"], default="first",
                     help="which of an image's captions queries: its first in the manifest (default), or a seeded "
                          "random one")
    cap.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                     help="restrict the searched images, as in `pgclip search` (e.g. metadata.collection=flickr30k)")
    common(cap)
    cap.set_defaults(handler=cmd_eval_captions)

    cls = protocols.add_parser(
        "classes", help="leave-one-out nearest-neighbour class accuracy (seed 003, CLIP-DB)",
        description="Ingest a labeled dataset (metadata eval_dataset/class), embed it in-process, let each image "
                    "query the rest of its dataset, and report top-1/top-5 class accuracy.",
    )
    cls.add_argument("dataset", metavar="DATASET",
                     help=f"a folder with one sub-folder per class, '{DIGITS}' (scikit-learn's handwritten digits), "
                          f"'{MNIST}' or '{CIFAR10}' (the files in --data DIR)")
    cls.add_argument("--data", metavar="DIR",
                     help=f"{MNIST}: the folder with t10k-/train-images-idx3-ubyte[.gz] and the labels; {CIFAR10}: "
                          "the folder with test_batch, data_batch_1..5 (cifar-10-batches-py). Nothing is downloaded")
    cls.add_argument("--split", choices=["test", "train"], default="test",
                     help=f"{MNIST}/{CIFAR10}: which split is the searched set (default test)")
    cls.add_argument("--limit", type=positive, default=None, metavar="N",
                     help="query with N images drawn with --seed (default: every image)")
    cls.add_argument("--max-images", type=positive, default=None, metavar="N",
                     help="use only N of the dataset's images, drawn with --seed (default: all)")
    cls.add_argument("--name", help="dataset name stored as eval_dataset (default: the folder's name, or digits)")
    cls.add_argument("--size", type=positive, default=DEFAULT_SIZE, help="digits: side in pixels (default 224)")
    cls.add_argument("--resample", choices=["bicubic", "nearest"], default="bicubic",
                     help="digits: upscaling filter (default bicubic)")
    cls.add_argument("--invert", action=argparse.BooleanOptionalAction, default=False,
                     help="digits: dark ink on white (default: white ink on black, like MNIST)")
    cls.add_argument("--cache-dir", metavar="DIR",
                     help="digits, mnist, cifar10: where the PNG files go (default: the user cache dir)")
    common(cls)
    cls.set_defaults(handler=cmd_eval_classes)
