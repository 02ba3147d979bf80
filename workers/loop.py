"""The worker loop: claim a batch, decode, encode, write vectors and mark done.

Transactions are short and never span the model: the claim commits before any
decoding, and the results are written in a second transaction fenced on
ownership (``sql/queue.sql``). While a batch is in hand a background thread
renews its lease every lease/3, so a slow batch is not taken by another worker.

Threads form a pipeline around the model, so that it never waits: the
decode thread claims, decodes, makes thumbnails and runs the model's
preprocessing ahead of the model (``LOOKAHEAD_BATCHES``, so a stopping worker
has little to give back); the model threads (the main thread and
``model_threads - 1`` more: `pgclip worker` runs as many as its encoder is set up
for, two on a CPU) each take the next decoded batch and run the model on it and
nothing else; the write thread writes finished batches
meanwhile (torch, Pillow and psycopg release the GIL).

Failures: an image that cannot be decoded fails at once with its reason; an
exception from the model is retried (the batch split into single images first,
so one bad image fails alone) with backoff until its attempts run out; a lost
database connection is re-established and the batch in hand written again
(the ownership fence makes that safe).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue as threadqueue
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import psycopg

from pgclip.db import queue
from pgclip.db.engine import connect
from pgclip.db.models import ModelRow
from pgclip.errors import DatabaseUnavailable
from pgclip.workers.decode import ImageRejected, Thumbnail, decode, make_thumbnail

log = logging.getLogger("pgclip.worker")

LOOKAHEAD_BATCHES = 1  # decoded batches waiting for the model; more only holds leases longer
POLL_SECONDS = 5.0  # fallback wake-up when a NOTIFY is lost (or the listener is reconnecting)
LISTEN_TICK_SECONDS = 0.2  # the listener looks at the stop flag this often
LISTEN_HEALTH_CHECK_SECONDS = 2.0  # and pings its connection this often
UNTIL_EMPTY_POLL_SECONDS = 0.5  # --until-empty: how often to look whether others' leased jobs ended
RECONNECT_MAX_SECONDS = 10.0  # longest wait between reconnection attempts
THUMBNAIL_SIDE = 256  # pixels, the longer side of the WebP thumbnail
# How long a thread may hold the GIL while another waits for it (Python's default: 5 ms).
# The decode thread runs Pillow's Python code (JPEG markers, EXIF) between the C calls
# that release the GIL, and every operation the model threads dispatch waits for it: with
# the default, a worker on 2 cores ran 4 % slower.
GIL_SWITCH_SECONDS = 0.0005


class ImageEncoder(Protocol):
    """What the loop needs of an encoder (``ClipEncoder`` is the real one)."""

    def load(self) -> None: ...

    def prepare(self, image: Any) -> Any:
        """Model input for one decoded RGB image (runs in the decode thread)."""

    def encode_prepared(self, prepared: Sequence[Any]) -> np.ndarray:
        """Unit vectors for a batch of prepared inputs (runs in the main thread)."""


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclasses.dataclass
class Decoded:
    """One claimed batch after decoding: what the model will see, and what already failed."""

    jobs: list[queue.ClaimedJob]
    inputs: dict[int, Any]  # job id -> the encoder's prepared input
    thumbs: dict[int, Thumbnail]
    rejected: dict[int, str]  # job id -> permanent failure reason
    errors: dict[int, str]  # job id -> transient failure while preparing (retried later)

    @property
    def job_ids(self) -> list[int]:
        return [j.id for j in self.jobs]


@dataclasses.dataclass
class Encoded:
    """A batch after the model, on its way to the writer."""

    batch: Decoded
    keeper: LeaseKeeper  # renews the batch's leases until it is written
    vectors: dict[int, np.ndarray]
    errors: dict[int, str]  # job id -> transient failure (retried later)


@dataclasses.dataclass
class WorkerStats:
    done: int = 0
    failed: int = 0
    retried: int = 0
    lost: int = 0
    released: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Count from any thread (the decode, main and write threads all do)."""
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)


class Worker:
    """One worker process's loop over the queue of one model."""

    def __init__(
        self,
        url: str,
        *,
        encoder: ImageEncoder,
        model: ModelRow,
        batch_size: int,
        lease_seconds: float,
        max_attempts: int,
        model_threads: int = 1,
        on_done: Callable[[int], None] | None = None,
    ) -> None:
        self.url = url
        self.model_threads = model_threads  # threads running the model, each on its own batch
        self.encoder = encoder
        self.model = model
        # Each model thread encodes its own batch, so a batch is its share of batch_size: the
        # worker still has batch_size images in the model at once, and the first vectors (and
        # the last) take no longer to come than with one model thread on all the cores.
        self.batch_size = max(1, batch_size // model_threads)
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.on_done = on_done
        self.id = worker_id()
        self.stats = WorkerStats()
        self.stopping = threading.Event()
        self._wake = threading.Event()
        # The main thread finishes the batch in hand even while stopping, waiting for a
        # database that went away, but not forever: once a lease has passed since the
        # stop, the batch's leases have expired and its writes would be refused anyway.
        self._abandon = threading.Event()
        self._main = _Reconnecting(url, self._abandon)

    def _with_db(self, fn: Callable[[psycopg.Connection], object]):
        """Run ``fn(conn)`` in a transaction on the writer's connection, reconnecting
        while the database is away (the batch in hand is written once it is back)."""
        return self._main.run(fn)

    # --- the loop ----------------------------------------------------------------

    def run(self, *, until_empty: bool = False) -> WorkerStats:
        """Process jobs until stopped (or, with ``until_empty``, until no job is open)."""
        self.encoder.load()
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        listener = Listener(self.url, self._wake, self.stopping)
        listener.start()
        decoded: threadqueue.Queue[Decoded | None] = threadqueue.Queue(maxsize=LOOKAHEAD_BATCHES)
        producer = threading.Thread(target=self._produce, args=(decoded, until_empty), name="decode", daemon=True)
        producer.start()
        encoded: threadqueue.Queue[Encoded | None] = threadqueue.Queue(maxsize=1)
        writer = threading.Thread(target=self._write_loop, args=(encoded,), name="write", daemon=True)
        writer.start()
        unstarted: list[Decoded] = []  # decoded ahead but not started: given back once the writer is done
        helpers = [
            threading.Thread(target=self._model_loop, args=(decoded, encoded, unstarted), name=f"model-{i}", daemon=True)
            for i in range(1, self.model_threads)
        ]
        for helper in helpers:
            helper.start()
        try:
            self._model_loop(decoded, encoded, unstarted)
        finally:
            self.stopping.set()
            self._wake.set()
            for helper in helpers:  # each finishes the batch in hand
                helper.join()
            encoded.put(None)
            writer.join()
            while True:
                try:
                    batch = decoded.get_nowait()
                except threadqueue.Empty:
                    break
                if batch is not None:
                    unstarted.append(batch)
            # Given back without counting an attempt.
            for batch in unstarted:
                self._release(batch)
            producer.join(timeout=5)
            listener.stop()
            self._main.close()
            sys.setswitchinterval(switch_interval)
        return self.stats

    def _model_loop(self, decoded: threadqueue.Queue, encoded: threadqueue.Queue, unstarted: list[Decoded]) -> None:
        """Encode decoded batches until the decode thread ends (runs in every model thread)."""
        while (batch := decoded.get()) is not None:
            if self.stopping.is_set():
                unstarted.append(batch)
                continue
            keeper = LeaseKeeper(self, batch.job_ids)
            keeper.start()
            vectors, errors = self._encode(batch)
            encoded.put(Encoded(batch, keeper, vectors, errors | batch.errors))
        decoded.put(None)  # the decode thread's end, passed on to the other model threads

    def stop(self) -> None:
        """Stop claiming; the batches in hand are finished, batches decoded ahead are released."""
        if not self.stopping.is_set():
            timer = threading.Timer(self.lease_seconds, self._abandon.set)
            timer.daemon = True
            timer.start()
        self.stopping.set()
        self._wake.set()

    def _produce(self, out: threadqueue.Queue, until_empty: bool) -> None:
        """Claim and decode batches ahead of the model (runs in its own thread and connection)."""
        conn_holder = _Reconnecting(self.url, self.stopping)
        try:
            while not self.stopping.is_set():
                jobs = conn_holder.run(self._claim)
                if jobs is None:
                    break
                live = [j for j in jobs if j.state == "leased"]
                self.stats.add(failed=len(jobs) - len(live))
                if not live:
                    if until_empty and conn_holder.run(lambda c: queue.open_jobs(c, self.model.id)[0]) == 0:
                        break
                    # Jobs leased elsewhere end without a notification: an emptying worker looks again soon.
                    self._wake.wait(UNTIL_EMPTY_POLL_SECONDS if until_empty else POLL_SECONDS)
                    self._wake.clear()
                    continue
                blobs = conn_holder.run(lambda c: _fetch_blobs(c, [j.image_id for j in live]))
                if blobs is None:
                    break
                batch = self._decode(live, blobs)
                while not self.stopping.is_set():
                    try:
                        out.put(batch, timeout=0.5)
                        break
                    except threadqueue.Full:
                        continue
                else:
                    self._release(batch, _Reconnecting(self.url, threading.Event()))
        except Exception:
            log.exception("worker's claim loop failed")
        finally:
            conn_holder.close()
            out.put(None)

    def _claim(self, conn: psycopg.Connection) -> list[queue.ClaimedJob]:
        return queue.claim(
            conn, model_id=self.model.id, worker=self.id, limit=self.batch_size,
            lease_seconds=self.lease_seconds, max_attempts=self.max_attempts,
        )

    def _decode(self, jobs: list[queue.ClaimedJob], blobs: dict[int, bytes]) -> Decoded:
        batch = Decoded(jobs, {}, {}, {}, {})
        for job in jobs:
            data = blobs.get(job.image_id)
            if data is None:
                continue  # image deleted since the claim: its job is gone too, nothing to write
            try:
                image = decode(data)
                thumb = make_thumbnail(image, THUMBNAIL_SIDE)
                batch.inputs[job.id] = self.encoder.prepare(image)
            except ImageRejected as exc:
                batch.rejected[job.id] = str(exc)
                continue
            except Exception as exc:  # the model's preprocessing: out of memory, say
                batch.errors[job.id] = _reason(exc)
                continue
            batch.thumbs[job.id] = thumb
        return batch

    def _write_loop(self, encoded: threadqueue.Queue) -> None:
        """Write encoded batches (runs in its own thread, so the model goes on to the next batch
        while the vectors go into the index: the HNSW insert costs ~3 ms of server CPU a row)."""
        while (item := encoded.get()) is not None:
            try:
                self._write(item.batch, item.vectors, item.errors)
            except Exception:
                log.exception("writing a batch failed; its jobs return to the queue when their leases expire")
            finally:
                item.keeper.stop()

    def _write(self, batch: Decoded, vectors: dict[int, np.ndarray], errors: dict[int, str]) -> None:
        results = []
        for job_id, vector in vectors.items():
            thumb = batch.thumbs[job_id]
            results.append(queue.Finished(job_id, vector, thumb.data, thumb.width, thumb.height))
        # Each returns None only when abandoned (stopping, database gone for a whole lease).
        owned = (self._with_db(lambda c: queue.complete(c, results, worker=self.id)) if results else None) or set()
        failed = (self._with_db(lambda c: queue.fail(c, batch.rejected, worker=self.id))
                  if batch.rejected else None) or set()
        states = (
            self._with_db(lambda c: queue.retry_later(c, errors, worker=self.id, max_attempts=self.max_attempts))
            if errors else None
        ) or {}
        sent = len(results) + len(batch.rejected) + len(errors)
        self.stats.add(
            done=len(owned),
            failed=len(failed) + sum(1 for s in states.values() if s == "failed"),
            retried=sum(1 for s in states.values() if s == "pending"),
            lost=sent - len(owned) - len(failed) - len(states),
        )
        if self.on_done:
            self.on_done(len(owned) + len(failed))
        self._wake.set()  # the claimer may be waiting for this batch to leave the queue

    def _encode(self, batch: Decoded) -> tuple[dict[int, np.ndarray], dict[int, str]]:
        """Encode the batch; on an exception, encode image by image so one bad image fails alone."""
        ids = list(batch.inputs)
        if not ids:
            return {}, {}
        try:
            vectors = self.encoder.encode_prepared([batch.inputs[i] for i in ids])
            return dict(zip(ids, vectors, strict=True)), {}
        except Exception as exc:
            if len(ids) == 1:
                return {}, {ids[0]: _reason(exc)}
            log.warning("encoding a batch of %d failed (%s); retrying image by image", len(ids), _reason(exc))
        out: dict[int, np.ndarray] = {}
        errors: dict[int, str] = {}
        for job_id in ids:
            try:
                out[job_id] = self.encoder.encode_prepared([batch.inputs[job_id]])[0]
            except Exception as exc:
                errors[job_id] = _reason(exc)
        return out, errors

    def _release(self, batch: Decoded, db: _Reconnecting | None = None) -> None:
        """Give back claimed jobs without counting the attempt (the thread's own connection)."""
        db = db or self._main
        try:
            released = db.run(lambda c: queue.release(c, batch.job_ids, worker=self.id))
            self.stats.add(released=len(released or ()))
        except Exception as exc:
            log.warning("could not release %d jobs (%s); their leases will expire", len(batch.jobs), exc)
        finally:
            if db is not self._main:
                db.close()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")[:500]


def _fetch_blobs(conn: psycopg.Connection, image_ids: list[int]) -> dict[int, bytes]:
    rows = conn.execute(
        "SELECT image_id, data FROM pgclip.image_blobs WHERE image_id = ANY(%s)", [image_ids]
    ).fetchall()
    return {image_id: bytes(data) for image_id, data in rows}


class _Reconnecting:
    """A connection for the claiming thread that survives server restarts."""

    def __init__(self, url: str, stopping: threading.Event) -> None:
        self.url = url
        self.stopping = stopping
        self.conn: psycopg.Connection | None = None

    def run(self, fn):
        delay = 0.5
        while not self.stopping.is_set():
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = connect(self.url, role="worker")
                with self.conn.transaction():
                    return fn(self.conn)
            except (psycopg.OperationalError, DatabaseUnavailable) as exc:
                log.warning("database unavailable (%s); retrying in %.1fs", exc, delay)
                self.close()
                self.stopping.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
        return None

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
        self.conn = None


class LeaseKeeper:
    """Renews a batch's lease every lease/3 while the batch is being processed."""

    def __init__(self, worker: Worker, job_ids: list[int]) -> None:
        self.worker = worker
        self.job_ids = job_ids
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lease", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        interval = self.worker.lease_seconds / 3
        conn = None
        while not self.done.wait(interval):
            try:
                if conn is None or conn.closed:
                    conn = connect(self.worker.url, role="worker-lease")
                with conn.transaction():
                    kept = queue.renew(conn, self.job_ids, worker=self.worker.id, lease_seconds=self.worker.lease_seconds)
                if len(kept) < len(self.job_ids):
                    log.warning("lost the lease of %d jobs", len(self.job_ids) - len(kept))
            except Exception as exc:
                log.warning("could not renew leases (%s)", exc)
                conn = None
        if conn is not None:
            conn.close()


class Listener(threading.Thread):
    """LISTENs for enqueue notifications and wakes the worker; reconnects when the connection dies."""

    def __init__(self, url: str, wake: threading.Event, stopping: threading.Event) -> None:
        super().__init__(name="listen", daemon=True)
        self.url = url
        self.wake = wake
        self.stopping = stopping

    def run(self) -> None:
        delay = 0.5
        while not self.stopping.is_set():
            try:
                with connect(self.url, role="worker-listen", autocommit=True, vector=False) as conn:
                    conn.execute(f"LISTEN {queue.NOTIFY_CHANNEL}")
                    delay = 0.5
                    checked = time.monotonic()
                    while not self.stopping.is_set():
                        # A short wait, so that a stopping worker need not wait for its listener.
                        for _ in conn.notifies(timeout=LISTEN_TICK_SECONDS, stop_after=1):
                            self.wake.set()
                        if time.monotonic() - checked >= LISTEN_HEALTH_CHECK_SECONDS:
                            conn.execute("SELECT 1")  # raises on a connection the server dropped
                            checked = time.monotonic()
            except Exception as exc:
                if self.stopping.is_set():
                    return
                log.info("listener reconnecting (%s)", exc)
                self.wake.set()  # poll once while we are deaf
                self.stopping.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=3)
