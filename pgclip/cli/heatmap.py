"""`pgclip heatmap`: a PNG of the cosine similarities of images x texts (seed 001's figure).

The images run down the rows as thumbnails, the texts along the columns, each cell coloured
by similarity with its value written in it. The matrix is the one ``GET /api/similarity``
answers (application/atlas.py); this module only draws it, with matplotlib's Agg backend.

Exit status: 0 written (its path printed); 1 a one-line error (an unknown image, one without
a vector yet, none with a caption with --captions, no database); 2 a usage error (bad --ids or --texts).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from pgclip.cli.common import out, usage_error
from pgclip.core.settings import Settings

MAX_LABEL = 40  # characters of a text shown under its column; longer ones end in "..."


def add_heatmap_parsers(sub: argparse._SubParsersAction) -> None:
    hm = sub.add_parser(
        "heatmap", help="draw a PNG heat-map of cosine similarities between images and texts",
        description="Encode each text once with the active model and draw the cosine similarity of each "
                    "image's stored vector to each text: images as thumbnails down the rows, texts along the "
                    "columns, the value in each cell. Give --texts, or --captions to use the first caption "
                    "of each image that has one, labelled with its image's id (when all have one, the "
                    "diagonal is each image against its own caption).")
    hm.add_argument("--ids", required=True, metavar="1,2,3", help="image ids, comma-separated (1 to 25)")
    texts = hm.add_mutually_exclusive_group(required=True)
    texts.add_argument("--texts", nargs="+", metavar="TEXT", help="the texts (1 to 25, each at most 500 characters)")
    texts.add_argument("--captions", action="store_true", help="use the first caption of each image (that has one) as the texts")
    hm.add_argument("-o", "--output", type=Path, default=Path("heatmap.png"), help="the PNG to write "
                                                                                   "(default heatmap.png)")
    hm.set_defaults(handler=cmd_heatmap)


def parse_ids(raw: str) -> list[int]:
    """``"3,1,2"`` -> ``[3, 1, 2]``: 1 to 25 distinct positive integers, in the order given."""
    from pgclip.application.atlas import SIMILARITY_MAX_IDS
    from pgclip.core.errors import InvalidInput

    ids: list[int] = []
    for part in (p.strip() for p in raw.split(",") if p.strip()):
        if not part.isdigit() or int(part) < 1:
            raise InvalidInput(f"--ids: {part[:40]!r} is not an image id (a positive integer)")
        if int(part) not in ids:
            ids.append(int(part))
    if not 1 <= len(ids) <= SIMILARITY_MAX_IDS:
        raise InvalidInput(f"--ids: give 1 to {SIMILARITY_MAX_IDS} image ids, comma-separated, got {len(ids)}")
    return ids


def _short(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 3] + "..."


def draw(matrix: list[list[float]], texts: list[str], thumbnails: list[bytes | None], ids: list[int],
         title: str) -> bytes:
    """The figure as PNG bytes: seed 001's layout (thumbnails left of the rows, texts under the columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    values = np.asarray(matrix, dtype=float)
    rows, cols = values.shape
    cell = 0.9  # inches
    fig, ax = plt.subplots(figsize=(2.2 + cell * (cols + 1.3), 1.8 + cell * rows + 0.08 * MAX_LABEL), dpi=100)
    # Columns 0..cols-1 are the texts; the thumbnails sit in the column at -1.5..-0.5.
    ax.imshow(values, cmap="viridis", vmin=values.min(), vmax=max(values.max(), values.min() + 1e-6),
              extent=(-0.5, cols - 0.5, rows - 0.5, -0.5))
    middle = (values.min() + values.max()) / 2
    for r in range(rows):
        for c in range(cols):
            ax.text(c, r, f"{values[r, c]:.2f}", ha="center", va="center", fontsize=10,
                    color="black" if values[r, c] > middle else "white")
    for r, data in enumerate(thumbnails):
        if data is None:
            ax.text(-1, r, f"#{ids[r]}", ha="center", va="center", fontsize=9)
            continue
        with Image.open(io.BytesIO(data)) as image:
            picture = np.asarray(image.convert("RGB"))
        h, w = picture.shape[:2]
        half_w, half_h = (0.45, 0.45 * h / w) if w >= h else (0.45 * w / h, 0.45)
        ax.imshow(picture, extent=(-1 - half_w, -1 + half_w, r + half_h, r - half_h))
    ax.set_xlim(-1.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_xticks(range(cols), [_short(t) for t in texts], rotation=45, ha="right", fontsize=10)
    ax.set_yticks(range(rows), [f"#{i}" for i in ids], fontsize=9)
    for side in ("left", "top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=12)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def cmd_heatmap(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.application.atlas import check_texts
    from pgclip.core.errors import InvalidInput, NotFound

    try:
        ids = parse_ids(args.ids)
        texts = None if args.captions else check_texts(args.texts)
        if args.output.suffix.lower() != ".png":
            raise InvalidInput(f"-o: {args.output} is not a .png file")
        if not args.output.parent.is_dir():
            raise InvalidInput(f"-o: the folder {args.output.parent} does not exist")
    except InvalidInput as exc:
        return usage_error(str(exc).replace("texts:", "--texts:", 1))

    from pgclip.application.bootstrap import open_service

    service = open_service(settings)
    try:
        found = service.similarity_matrix(ids, texts, captions=args.captions)
        thumbnails: list[bytes | None] = []
        for image_id in ids:
            try:
                thumbnails.append(service.blob(image_id, "thumbnails").data)
            except NotFound:  # no thumbnail (an image added with SQL): the row shows its id instead
                thumbnails.append(None)
    finally:
        service.close()
    assert found.texts is not None
    labels = found.texts if found.caption_of is None else [f"#{i}: {t}" for i, t in zip(found.caption_of, found.texts)]
    png = draw(found.matrix, labels, thumbnails, found.ids,
               f"Cosine similarity between images and texts ({found.model})")
    try:
        args.output.write_bytes(png)
    except OSError as exc:
        return usage_error(f"-o: cannot write {args.output}: {exc.strerror or exc}")
    out(str(args.output))
    return 0
