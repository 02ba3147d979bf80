"""Query composition as rclip does it: ``"2:golden retriever" + ./pool.jpg - fruit``.

* Terms are joined by ``+`` or ``-`` with whitespace on both sides, so hyphenated words
  ("t-shirt") stay inside one term; a leading ``-`` negates the first term.
* A term may start with a weight ``N:`` (``2:``, ``0.5:``); a negative weight subtracts.
* ``"..."`` is text taken literally: it may hold `` + ``, `` - ``, ``:`` or a path. A valid
  ``N:`` at the start inside the quotes is still the weight unless one stands outside them,
  so rclip's shell-quoted ``"2:golden retriever"`` means the same here; ``1:"3:10 to Yuma"``
  searches for the whole quoted text. There is no escape for ``"`` itself.
* ``#123`` or ``id:123`` is an image already stored.
* A term ending in an image extension, or starting with ``./ ../ / ~/``, is an image path.
* Anything else is text.

The parser never touches the filesystem: the caller decides whether a path may be read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pgclip.core.errors import InvalidInput

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
PATH_PREFIXES = ("./", "../", "/", "~/")
CANCEL_TOLERANCE = 1e-6  # times the summed |weights|: a shorter sum has no direction left
MAX_WEIGHT = 1000.0  # |weight|: a thousand times another term is already all of the query (1e308 overflowed)

# A quoted string (skipped whole, so its + and - stay text) or an operator: + or - with
# whitespace or the query's edge on both sides.
_OPERATOR = re.compile(r'"[^"]*"|(?:(?<=\s)|^)([+-])(?=\s|$)')
_WEIGHT = re.compile(r"([+-]?[\d.][^\s:]*):")  # anything that tries to be a weight
_ID = re.compile(r"(?:#|id:)(\d+)")


@dataclass(frozen=True)
class Term:
    """One operand of a query; a negative weight subtracts it."""

    kind: Literal["text", "image", "id"]
    value: str | int  # the text, the image path as written, or the image id
    weight: float


def parse_query(text: str) -> list[Term]:
    """The weighted terms of a query, in order; InvalidInput names the malformed part."""
    query = text.strip()
    if not query:
        raise InvalidInput("empty query")
    if query.count('"') % 2:
        raise InvalidInput(f"unterminated quote in {query!r}")
    sign, start, terms = 1.0, 0, []
    if query.startswith("-"):
        sign, query = -1.0, query[1:]
    for match in _OPERATOR.finditer(query):
        if match.group(1):
            terms.append(_term(query[start : match.start()], sign, text))
            sign, start = (1.0 if match.group(1) == "+" else -1.0), match.end()
    terms.append(_term(query[start:], sign, text))
    return terms


def _term(raw: str, sign: float, query: str) -> Term:
    raw = raw.strip()
    if not raw:
        raise InvalidInput(f"empty term in {query.strip()!r}: '+' and '-' need a term on each side")
    weight, raw = _split_weight(raw, strict=True)
    if len(raw) >= 2 and raw[0] == raw[-1] == '"' and raw.count('"') == 2:
        literal = raw[1:-1].strip()
        if weight is None:  # rclip's form, the weight inside the quotes
            weight, literal = _split_weight(literal, strict=False)
        if not literal:
            raise InvalidInput(f"empty quoted term in {query.strip()!r}")
        return Term("text", literal, sign * (weight or 1.0))
    weight = sign * (weight or 1.0)
    if match := _ID.fullmatch(raw):
        return Term("id", int(match.group(1)), weight)
    if raw.startswith("id:"):
        raise InvalidInput(f"image id must be a whole number: {raw!r}")
    if raw.lower().endswith(IMAGE_SUFFIXES) or raw.startswith(PATH_PREFIXES):
        return Term("image", raw, weight)
    return Term("text", raw, weight)


def _split_weight(raw: str, *, strict: bool) -> tuple[float | None, str]:
    """(weight, rest) when `raw` starts with ``N:``, else (None, raw). Not strict (inside
    quotes), anything but a usable weight is left to the text instead of raising."""
    match = _WEIGHT.match(raw)
    if not match:
        return None, raw
    prefix, rest = match.group(1), raw[match.end() :].strip()
    try:
        weight = float(prefix)
    except ValueError:
        weight = math.nan
    if not strict and (not math.isfinite(weight) or weight == 0 or abs(weight) > MAX_WEIGHT or not rest):
        return None, raw
    if not math.isfinite(weight):
        raise InvalidInput(f"weight {prefix!r} is not a number in {raw!r} (quote the text to search it literally)")
    if abs(weight) > MAX_WEIGHT:
        raise InvalidInput(f"weight {prefix} in {raw!r} is outside -{MAX_WEIGHT:g} to {MAX_WEIGHT:g}")
    if weight == 0:
        raise InvalidInput(f"weight 0 in {raw!r} would make the term do nothing")
    if not rest:
        raise InvalidInput(f"weight {prefix} has no term after it in {raw!r}")
    return weight, rest


def is_composite(text: str) -> bool:
    """False only when the query is one plain text term of weight 1, exactly as typed:
    the caller may then encode ``text.strip()`` directly (and cache it). Raises like parse_query."""
    terms = parse_query(text)
    return len(terms) > 1 or terms[0] != Term("text", text.strip(), 1.0)


def combine(terms: Sequence[Term], vectors: Sequence[np.ndarray]) -> np.ndarray:
    """The query's unit vector (float32): the weighted sum of the terms' vectors, each taken
    at unit length, re-normalised. ``vectors[i]`` belongs to ``terms[i]``."""
    if not terms or len(terms) != len(vectors):
        raise ValueError(f"need one vector per term: {len(vectors)} vectors for {len(terms)} terms")
    shapes = sorted({np.shape(v) for v in vectors})
    if len(shapes) != 1 or len(shapes[0]) != 1:
        raise ValueError(f"term vectors must be 1-D and of one dimension, got shapes {shapes}")
    matrix = np.stack(vectors).astype(np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if not np.all(norms > 0):
        raise ValueError("a term vector is all zeros")
    weights = np.array([term.weight for term in terms])
    total = weights @ (matrix / norms)
    norm = float(np.linalg.norm(total))
    if norm <= CANCEL_TOLERANCE * float(np.abs(weights).sum()):
        names = ", ".join(str(term.value) for term in terms)
        raise InvalidInput(f"the terms cancel out ({names}): nothing is left to search for")
    return (total / norm).astype(np.float32)
