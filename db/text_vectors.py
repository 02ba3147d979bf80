"""Query-text vectors kept in the database (``sql/text_vectors.sql``): the cache the API,
the CLI and ``pgclip.embed_text`` share, and the text requests the workers answer.

``pgclip.embed_text`` (``sql/text.sql``) asks the workers for a text's vector by
inserting a request and notifying ``NOTIFY_CHANNEL``; a worker of that model claims the
requests, embeds the texts and stores the vectors here, where the function finds them.
The cache is bounded per model: each store evicts the least recently used texts over
``CACHE_ROWS``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import psycopg

from pgclip.db.queries import load

TEXT = load("text_vectors.sql")
NOTIFY_CHANNEL = "pgclip_text"  # payload: the model id (pgclip.ask_workers sends it)
CACHE_ROWS = 10_000  # texts kept per model: ~2 kB each at 512 dimensions, 20 MB
CACHE_MAX_CHARS = 1000  # the longest text the cache holds (its CHECK); a longer one is encoded every time


@dataclasses.dataclass(frozen=True)
class TextRequest:
    id: int
    text: str


def cached(conn: psycopg.Connection, model_id: int, text: str) -> np.ndarray | None:
    """The cached vector of ``text`` under the model, or None."""
    row = conn.execute(TEXT["cached"], {"model_id": model_id, "text": text}).fetchone()
    return None if row is None else row[0].to_numpy()


def store(conn: psycopg.Connection, model_id: int, vectors: Mapping[str, np.ndarray], *,
          keep: int = CACHE_ROWS) -> None:
    """Cache texts' vectors, then evict the model's least recently used texts over ``keep``.
    Texts over ``CACHE_MAX_CHARS`` (a long caption for `pgclip eval`, a pasted paragraph) are
    left out: CLIP reads 77 tokens of them anyway, and they are rarely asked twice."""
    rows = [{"model_id": model_id, "text": text, "embedding": vector}
            for text, vector in vectors.items() if len(text) <= CACHE_MAX_CHARS]
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(TEXT["store"], rows)
    conn.execute(TEXT["evict"], {"model_id": model_id, "keep": keep})


def claim_requests(conn: psycopg.Connection, model_id: int, *, limit: int) -> list[TextRequest]:
    """Open text requests of the model, locked by this transaction (others skip them)."""
    rows = conn.execute(TEXT["claim_requests"], {"model_id": model_id, "limit": limit}).fetchall()
    return [TextRequest(*row) for row in rows]


def answer(conn: psycopg.Connection, model_id: int, requests: Sequence[TextRequest], vectors: np.ndarray, *,
           keep: int = CACHE_ROWS) -> None:
    """Store the requested texts' vectors (in request order) and close the requests."""
    store(conn, model_id, {r.text: v for r, v in zip(requests, vectors, strict=True)}, keep=keep)
    conn.execute(TEXT["answered"], {"ids": [r.id for r in requests]})


def refuse(conn: psycopg.Connection, requests: Sequence[TextRequest], error: str) -> None:
    """Tell the waiting callers why these texts have no vector."""
    conn.execute(TEXT["refuse"], {"ids": [r.id for r in requests], "error": error})
