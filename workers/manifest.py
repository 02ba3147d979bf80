"""Caption and metadata manifests: Flickr30k's ``results.csv`` and JSON Lines.

* Flickr30k: ``image_name| comment_number| comment`` with a header line,
  pipe-separated, several rows (captions) per image.
* JSON Lines: ``{"path": "cats/1.jpg", "captions": ["..."], "metadata": {...}}``
  per line; ``path`` is relative to the manifest's folder or absolute.

A malformed row is reported and skipped, never fatal: one bad line in a
158,915-row file must not stop an ingest.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from pgclip.core.errors import InvalidInput
from pgclip.workers.ingest_files import Unreadable, read_file

MAX_CAPTION_CHARS = 10_000  # a caption, not a document; keeps to_tsvector far below its 1 MB limit
MAX_PROBLEMS_KEPT = 50  # per manifest; the count of the rest is still reported
_SURROGATES = re.compile("[\ud800-\udfff]")


@dataclasses.dataclass
class Entry:
    captions: list[str] = dataclasses.field(default_factory=list)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Manifest:
    """Entries keyed by the path as written in the manifest."""

    path: Path
    entries: dict[str, Entry] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)
    problem_count: int = 0

    def problem(self, message: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append(message)

    def entry(self, key: str) -> Entry:
        return self.entries.setdefault(key, Entry())

    def resolve(self, key: str) -> Path:
        p = Path(key).expanduser()
        return p if p.is_absolute() else self.path.parent / p


def clean_caption(text: Any) -> str | None:
    """A caption as stored, or None when it cannot be one (raises for a caption too long)."""
    if not isinstance(text, str):
        return None
    text = " ".join(_storable(text).split())
    if not text:
        return None
    if len(text) > MAX_CAPTION_CHARS:
        raise InvalidInput(f"caption of {len(text)} characters is longer than {MAX_CAPTION_CHARS}")
    return text


def _storable(text: str) -> str:
    """Text PostgreSQL can hold: no NUL, and each undecodable byte (a lone surrogate) as U+FFFD."""
    return _SURROGATES.sub("\ufffd", text.replace("\x00", ""))


def _storable_json(value: Any) -> Any:
    """Manifest metadata with every key and string made :func:`_storable` (jsonb refuses NUL too)."""
    if isinstance(value, str):
        return _storable(value)
    if isinstance(value, dict):
        return {_storable(str(k)): _storable_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable_json(v) for v in value]
    return value


def load_manifest(path: Path) -> Manifest:
    """Parse either format (JSON Lines when the first non-blank character is ``{``)."""
    path = Path(path)
    try:
        raw = read_file(path)  # a regular file only: a FIFO is refused, not waited on for ever
    except Unreadable as exc:
        raise InvalidInput(f"cannot read captions file {path}: {exc}") from None
    # Bytes that are not UTF-8 (a latin-1 results.csv from an old archive) stay as Python keeps
    # file names (lone surrogates), so such a name finds the file of the same bytes.
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    manifest = Manifest(path)
    if text.lstrip().startswith("{"):
        _parse_jsonl(text, manifest)
    else:
        _parse_flickr(text, manifest)
    if not manifest.entries and manifest.problem_count:
        raise InvalidInput(f"{path}: no usable rows ({manifest.problems[0]})")
    return manifest


def _add_caption(manifest: Manifest, key: str, caption: Any, where: str) -> None:
    try:
        text = clean_caption(caption)
    except InvalidInput as exc:
        manifest.problem(f"{where}: {exc}")
        return
    if text is None:
        manifest.problem(f"{where}: empty or non-text caption")
        return
    entry = manifest.entry(key)
    if text not in entry.captions:
        entry.captions.append(text)


def _parse_flickr(text: str, manifest: Manifest) -> None:
    lines = text.splitlines()
    if not lines:
        raise InvalidInput(f"{manifest.path}: empty captions file")
    header = [h.strip().lower() for h in lines[0].split("|")]
    if header[:1] != ["image_name"]:
        raise InvalidInput(
            f"{manifest.path}: not a captions manifest (expected a JSON Lines file or a "
            "'image_name| comment_number| comment' header)"
        )
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("|", 2)
        if len(parts) != 3 or not parts[0].strip():
            manifest.problem(f"line {number}: expected 'image_name| comment_number| comment'")
            continue
        _add_caption(manifest, parts[0].strip(), parts[2], f"line {number}")


def _parse_jsonl(text: str, manifest: Manifest) -> None:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            manifest.problem(f"{where}: not JSON ({exc.msg})")
            continue
        if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not row["path"].strip():
            manifest.problem(f'{where}: expected an object with a "path"')
            continue
        key = row["path"].strip()
        captions = row.get("captions", [])
        if isinstance(captions, str):
            captions = [captions]
        if not isinstance(captions, list):
            manifest.problem(f'{where}: "captions" must be a list of strings')
            captions = []
        metadata = row.get("metadata", {})
        if not isinstance(metadata, dict):
            manifest.problem(f'{where}: "metadata" must be an object')
            metadata = {}
        entry = manifest.entry(key)
        entry.metadata.update(_storable_json(metadata))
        for caption in captions:
            _add_caption(manifest, key, caption, where)
