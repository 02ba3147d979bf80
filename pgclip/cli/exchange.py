"""CLI commands `pgclip export` and `pgclip import`: one model's vectors, with the images'
captions and metadata, to and from files in clip-retrieval's layout (parquet + numpy).

Exit status: 0 done; 1 a one-line error (model or dimension mismatch, a corrupt or
truncated file, no database), nothing written; 2 a usage error (a folder that is not
there, or not empty for an export), nothing done.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pgclip.cli.common import out, positive, progress, usage_error
from pgclip.core.settings import Settings


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.application.bootstrap import ready_url
    from pgclip.application.exchange import export_parquet

    directory = Path(args.dir).expanduser()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        return usage_error(f"{directory} is not an empty folder: export into a new or empty one")
    url = ready_url(settings)
    with progress(None, "row", "export") as bar:
        report = export_parquet(
            url, directory, model_name=args.model, pretrained=args.pretrained, rows_per_file=args.rows_per_file,
            dtype="float16" if args.float16 else "float32", thumbnails=not args.no_thumbnails,
            progress=bar.update, on_total=lambda n: setattr(bar, "total", n),
        )
    left_out = report.images - report.rows
    out(f"exported {report.rows} vectors of {report.model.label} ({report.model.dimension} dimensions) "
        f"with their images' captions and metadata to {report.directory} ({report.parts} part"
        f"{'' if report.parts == 1 else 's'})")
    if left_out:
        out(f"{left_out} images have no vector for this model yet and were left out (`pgclip status`)")
    return 0


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.application.bootstrap import ready_url
    from pgclip.application.exchange import import_parquet

    directory = Path(args.dir).expanduser()
    if not directory.is_dir():
        return usage_error(f"no such folder: {directory}")
    url = ready_url(settings)
    with progress(None, "row", "import") as bar:
        report = import_parquet(
            url, directory, settings, model_name=args.model, pretrained=args.pretrained,
            progress=bar.update, on_total=lambda n: setattr(bar, "total", n),
        )
    c = report.counts
    out(f"imported {c.rows} rows for {report.model.label}: {c.images_added} images added, "
        f"{c.images_present} already present; {c.vectors_added} vectors added ({c.vectors_kept} kept as they were), "
        f"{c.captions_added} captions added, {c.thumbnails_added} thumbnails")
    if c.frames_linked or c.frames_shared or c.videos_added:
        videos = f"{c.videos_added} video{'' if c.videos_added == 1 else 's'}"
        shared = f", {c.frames_shared} shared with other videos" if c.frames_shared else ""
        out(f"{c.frames_linked} frames linked to their videos{shared} ({videos} added, without their bytes)")
    if report.activated:
        out(f"{report.model.label} now answers searches (the active model had no vectors)")
    elif report.model.state != "active":
        out(f"{report.model.label} is {report.model.state}: `pgclip models activate {report.model.name}` "
            "makes it answer searches")
    return 0


def add_exchange_parsers(sub) -> None:
    ex = sub.add_parser(
        "export", help="write a model's vectors with captions and metadata (clip-retrieval layout: npy + parquet)",
        description="Write one model's vectors (the active model's unless --model), with every image's sha256, "
                    "source, size, date, metadata and captions, into DIR as img_emb/*.npy + metadata/*.parquet "
                    "(+ thumbnails/*.parquet) and a manifest. Image bytes are not exported.",
    )
    ex.add_argument("dir", metavar="DIR", help="a new or empty folder")
    ex.add_argument("--format", choices=["parquet"], default="parquet", help="the only format: parquet + npy")
    ex.add_argument("--model", metavar="NAME", help="export this model's vectors (default: the active model)")
    ex.add_argument("--pretrained", metavar="TAG", help="which weights, when several models share the name")
    ex.add_argument("--rows-per-file", type=positive, default=100_000, metavar="N",
                    help="rows per part file (default 100000)")
    ex.add_argument("--float16", action="store_true", help="write the vectors as float16 (half the size, not exact)")
    ex.add_argument("--no-thumbnails", action="store_true", help="leave the WebP thumbnails out")
    ex.set_defaults(handler=cmd_export)

    im = sub.add_parser(
        "import", help="read a set written by `pgclip export` (no re-embedding)",
        description="Read a set written by `pgclip export` into the configured database in one transaction: "
                    "images are matched by sha256 and gain only what they lack; the vectors are stored as they "
                    "are and the model's jobs for them marked done. A model or dimension mismatch, or a file "
                    "that does not match the manifest, is refused in one line with nothing written.",
    )
    im.add_argument("dir", metavar="DIR", help="a folder written by `pgclip export`")
    im.add_argument("--format", choices=["parquet"], default="parquet", help="the only format: parquet + npy")
    im.add_argument("--model", metavar="NAME", help="refuse the set unless it holds this model's vectors")
    im.add_argument("--pretrained", metavar="TAG_OR_PATH",
                    help="store the vectors under these weights (the same weights by another name, e.g. a local "
                         "checkpoint file) instead of the manifest's")
    im.set_defaults(handler=cmd_import)
