"""Answering ``pgclip.embed_text``: a worker embeds the texts SQL callers ask for.

An analyst's ``SELECT * FROM pgclip.search_text('a cat')`` needs the text tower of the
model, which only the workers hold. The function inserts a request row and notifies
``pgclip_text`` (``db/sql/text.sql``); :class:`TextRequests`, one thread of each worker,
LISTENs on its own connection, claims its model's open requests, embeds them and
stores the vectors in the shared cache, where the waiting function reads them. It runs
beside the model threads, so a text is answered ahead of the image batches in hand, not
after them; a text costs the model milliseconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import psycopg

from pgclip.db import text_vectors
from pgclip.workers.liveness import app_name
from pgclip.workers.reconnect import RETRYABLE, Abandoned, Outage, Reconnecting

log = logging.getLogger("pgclip.worker")

BATCH = 32  # texts embedded at once: requests arrive one per waiting caller, rarely more
POLL_SECONDS = 5.0  # fallback when a notification is lost (or the listener is reconnecting)
LISTEN_TICK_SECONDS = 0.2  # how often the thread looks at its stop flag while listening


class TextRequests(threading.Thread):
    """Answers the text requests of one model until ``done`` is set."""

    def __init__(self, url: str, *, worker: str, model_id: int, encode_texts: Callable[[Sequence[str]], np.ndarray],
                 outage: Outage, done: threading.Event) -> None:
        super().__init__(name="text-requests", daemon=True)
        self.model_id = model_id
        self.encode_texts = encode_texts
        self.done = done
        self.answered = 0  # texts embedded for SQL callers
        self._pending = threading.Event()
        self.db = Reconnecting(url, app_name=app_name(worker), outage=outage, cancel=done, autocommit=True,
                               on_connect=self._listen)

    def _listen(self, conn: psycopg.Connection) -> None:
        conn.execute(f"LISTEN {text_vectors.NOTIFY_CHANNEL}")
        self._pending.set()  # requests may have come while we were away

    def run(self) -> None:
        self._pending.set()  # answer what waits from before this worker started
        while not self.done.is_set():
            try:
                while self._pending.is_set() and not self.done.is_set():
                    self._pending.clear()
                    if self.db.run(self._answer) == BATCH:
                        self._pending.set()  # maybe more
            except Abandoned:
                break
            except Exception:
                log.exception("answering text requests failed; trying again on the next request")
            self._wait()
        self.db.close()

    def _wait(self) -> None:
        """Until a request for this model is notified, or POLL_SECONDS pass."""
        deadline = time.monotonic() + POLL_SECONDS
        try:
            while not self.done.is_set() and time.monotonic() < deadline and not self._pending.is_set():
                conn = self.db.ensure()
                for note in conn.notifies(timeout=LISTEN_TICK_SECONDS, stop_after=1):
                    if note.payload == str(self.model_id):
                        self._pending.set()
        except RETRYABLE as exc:
            self.db.broken(exc)
            self.db.close()
            self.done.wait(LISTEN_TICK_SECONDS)
            self._pending.set()  # look once reconnected: notifications were lost meanwhile

    def _answer(self, conn: psycopg.Connection) -> int:
        """Embed one batch of the model's open requests; how many it held."""
        requests = text_vectors.claim_requests(conn, self.model_id, limit=BATCH)
        if not requests:
            return 0
        try:
            vectors = self.encode_texts([r.text for r in requests])
        except Exception as exc:  # the model failed on these texts: the callers learn why at once
            text_vectors.refuse(conn, requests, f"{type(exc).__name__}: {exc}"[:500])
            return len(requests)
        text_vectors.answer(conn, self.model_id, requests, vectors)
        self.answered += len(requests)
        return len(requests)
