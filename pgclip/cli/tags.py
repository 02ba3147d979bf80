"""`pgclip tag`: zero-shot tags from the stored vectors, written into each image's metadata.

Exit status: 0 done; 1 a one-line error (no database, no active model); 2 a usage error
(bad --labels, --key, --prompt or --min-score), nothing written.
"""

from __future__ import annotations

import argparse

from pgclip.cli.common import out, usage_error
from pgclip.core.settings import Settings

DEFAULT_PROMPT = "a photo of a {}"


def add_tag_parsers(sub: argparse._SubParsersAction) -> None:
    tg = sub.add_parser(
        "tag", help="tag every embedded image with its nearest label (zero-shot, from the stored vectors)",
        description="Score every image of the active model against the labels (the labels' text vectors once, "
                    "then SQL over the stored vectors: no image is re-encoded) and write the best label and its "
                    "score into each image's metadata, as KEY and KEY_score. Images under --min-score lose both "
                    "keys. A KEY that holds values pgclip tag did not write (a manifest's) is refused unless "
                    "--overwrite. Search them with `pgclip search ... --filter metadata.KEY=LABEL`.")
    tg.add_argument("--labels", required=True, metavar="A,B,C",
                    help="comma-separated labels (at most 1000, each at most 200 characters)")
    tg.add_argument("--prompt", default=DEFAULT_PROMPT,
                    help=f"text each label is put into at its {{}} before encoding (default {DEFAULT_PROMPT!r})")
    tg.add_argument("--min-score", type=float, default=None, metavar="X",
                    help="cosine similarity an image's best label must reach to be written (default: none, "
                         "every embedded image gets its best label)")
    tg.add_argument("--key", default="tag", help="the metadata key to write (default 'tag'; its score goes "
                                                 "under KEY_score)")
    tg.add_argument("--overwrite", action="store_true",
                    help="replace (or, under --min-score, remove) values under KEY that pgclip tag did not write "
                         "(a manifest's, an edit's); without it such values make the run refuse")
    tg.add_argument("--dry-run", action="store_true", help="print the counts and write nothing")
    tg.set_defaults(handler=cmd_tag)


def cmd_tag(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.core.errors import InvalidInput
    from pgclip.db import tags

    try:
        labels = tags.parse_labels(args.labels)
        key = tags.check_key(args.key)
        tags.prompts(labels, args.prompt)  # checked here for the usage error; the service fills it in
        if args.min_score is not None and not -1.0 <= args.min_score <= 1.0:
            raise InvalidInput(f"--min-score must be between -1 and 1 (cosine similarity), got {args.min_score}")
    except InvalidInput as exc:
        return usage_error(str(exc))

    from pgclip.application.bootstrap import open_service

    service = open_service(settings)
    try:
        model, run = service.tag(labels, prompt=args.prompt, key=key, min_score=args.min_score, dry_run=args.dry_run,
                                 overwrite=args.overwrite)
    finally:
        service.close()
    width = max(len(label) for label in labels)
    for count in run.counts:
        out(f"{count.label:<{width}}  {count.images}")
    below = f"; {run.below} under --min-score {args.min_score} left untagged" if args.min_score is not None else ""
    if args.dry_run:
        out(f"dry run: nothing written ({model.label}{below})")
    else:
        out(f"{run.changed} images changed under metadata.{key} ({model.label}{below})")
    return 0
