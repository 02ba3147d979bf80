"""Zero-shot tags: each image's nearest label, written into its metadata.

The labels' text vectors are computed once by the caller (the model's text tower); the
scoring is SQL over the vectors already stored (``db/sql/tags.sql``), so no image is
decoded again, and only ``images.metadata`` is written: the vectors' HNSW index is never
touched. The result is an ordinary metadata key, so the search's metadata filter finds
it (``pgclip search ... --filter metadata.tag=cat``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence

import numpy as np
import psycopg

from pgclip.core.errors import InvalidInput
from pgclip.db.models import ModelRow
from pgclip.db.queries import load

TAGS = load("tags.sql")

MAX_LABELS = 1000  # the statement compares every vector with every label
MAX_LABEL_CHARS = 200
# A plain identifier: the key shows up in `--filter metadata.KEY=...` and in JSON paths.
KEY_PATTERN = "^[A-Za-z_][A-Za-z0-9_]{0,62}$"
_KEY = re.compile(KEY_PATTERN)
PLACEHOLDER = "{}"


@dataclasses.dataclass(frozen=True)
class TagCount:
    label: str
    images: int  # images tagged with this label


@dataclasses.dataclass(frozen=True)
class TagRun:
    counts: list[TagCount]
    below: int  # embedded images whose best label scored under min_score: left untagged
    changed: int  # images whose metadata this run changed (0 for a dry run)


def parse_labels(text: str) -> list[str]:
    """Comma-separated labels (the CLI's ``--labels``), checked as :func:`check_labels`."""
    return check_labels(text.split(","), "--labels")


def check_labels(labels: Sequence[str], name: str = "labels") -> list[str]:
    """The labels, each trimmed, non-empty and at most 200 characters; no duplicates; at most
    1000. ``name`` names them in the error."""
    if len(labels) > MAX_LABELS:
        raise InvalidInput(f"{name}: {len(labels)} labels, at most {MAX_LABELS}")
    labels = [label.strip() for label in labels]
    if not labels:
        raise InvalidInput(f"{name}: give at least one label")
    for n, label in enumerate(labels, start=1):
        if not label:
            raise InvalidInput(f"{name}: label {n} is empty")
        if len(label) > MAX_LABEL_CHARS:
            raise InvalidInput(f"{name}: label {n} has {len(label)} characters, at most {MAX_LABEL_CHARS}")
    seen: set[str] = set()
    for label in labels:
        if label in seen:
            raise InvalidInput(f"{name}: {label[:40]!r} is given twice")
        seen.add(label)
    return labels


def check_key(key: str, name: str = "--key") -> str:
    """The metadata key: letters, digits and underscores, not starting with a digit."""
    if not _KEY.fullmatch(key):
        raise InvalidInput(f"{name} must be letters, digits and underscores (not starting with a digit, "
                           f"at most 63 characters), got {key[:80]!r}")
    return key


def prompts(labels: Sequence[str], template: str, name: str = "--prompt") -> list[str]:
    """Each label put into the prompt template at its one ``{}``."""
    if template.count(PLACEHOLDER) != 1:
        raise InvalidInput(f"{name} must hold exactly one {{}} where the label goes, got {template[:80]!r}")
    before, after = template.split(PLACEHOLDER)
    return [f"{before}{label}{after}" for label in labels]


def tag_images(conn: psycopg.Connection, model: ModelRow, labels: Sequence[str], vectors: np.ndarray, *,
               key: str = "tag", min_score: float | None = None, write: bool = True,
               overwrite: bool = False) -> TagRun:
    """Tag every image embedded under ``model`` with its nearest label, in one transaction.

    ``vectors`` holds one unit text vector per label (row i for ``labels[i]``). Images whose
    best score is under ``min_score`` (None: no minimum) lose ``key`` and ``key_score``, as do
    images without a vector under ``model``; with ``write=False`` nothing is written and the
    counts say what a run would do. Values under ``key`` that no run wrote (no ``key_score``
    beside them: a manifest's, a user's edit) are replaced or removed only with ``overwrite``;
    otherwise the run is refused (InvalidInput) and nothing is written.
    """
    check_key(key)
    if not labels or len(labels) != len(set(labels)) or len(labels) > MAX_LABELS:
        raise InvalidInput(f"give 1 to {MAX_LABELS} distinct labels")
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape != (len(labels), model.dimension):
        raise InvalidInput(f"label vectors have shape {vectors.shape}, expected ({len(labels)}, {model.dimension})")
    if not np.all(np.isfinite(vectors)):
        raise InvalidInput("a label vector has non-finite values")
    if min_score is not None and not -1.0 <= min_score <= 1.0:
        raise InvalidInput(f"min_score must be between -1 and 1 (cosine similarity), got {min_score}")
    with conn.transaction():
        if not overwrite:
            _refuse_foreign_values(conn, key)
        rows = conn.execute(TAGS["tag"], {
            "labels": list(labels), "vectors": list(vectors), "model_id": model.id,
            "key": key, "score_key": f"{key}_score",
            "min_score": -2.0 if min_score is None else float(min_score), "write": write,
        }).fetchall()
    return TagRun([TagCount(label, int(n)) for label, n, _, _ in rows],
                  below=int(rows[0][2]) if rows else 0, changed=int(rows[0][3]) if rows else 0)


def _refuse_foreign_values(conn: psycopg.Connection, key: str) -> None:
    count, image_id, value = conn.execute(TAGS["foreign_values"], {"key": key, "score_key": f"{key}_score"}).fetchone()
    if count:
        shown = json.dumps(value, ensure_ascii=False)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise InvalidInput(
            f"{count} image{'s' if count != 1 else ''} hold{'s' if count == 1 else ''} a metadata.{key} value that "
            f"pgclip tag did not write (image {image_id}: {shown}); a run would replace or remove "
            f"{'them' if count != 1 else 'it'}: choose another key, or overwrite them (`pgclip tag --overwrite`, "
            f"\"overwrite\": true over HTTP)")
