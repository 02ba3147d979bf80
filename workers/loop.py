"""The worker loop: claim a batch, decode, encode, write vectors and mark done.

Transactions are short and never span the model: the claim commits before any
decoding, and the results are written in a second transaction fenced on
ownership (``sql/queue.sql``). The worker keeps the ids of the jobs it holds
(claimed, not yet written); a lease keeper renews their leases every lease/3,
and whatever is still held when the worker stops is given back in one
statement, its attempt returned (``liveness.py`` has the keeper, the presence
connection that reaps dead workers' leases, and the watchdog).

Threads form a pipeline around the model, so that it never waits (what they
pass each other is in ``pipeline.py``): the decode thread claims, decodes,
makes thumbnails and runs the model's preprocessing ahead of the model
(``LOOKAHEAD_BATCHES``, so a stopping worker has little to give back); the
model threads (the main thread and ``model_threads - 1`` more: `pgclip worker`
runs as many as its encoder is set up for, two on a CPU) each take the next
decoded batch and run the model on it and nothing else; the write thread writes
finished batches meanwhile (torch, ONNX Runtime, Pillow and psycopg release the
GIL).

Failures: an image that cannot be decoded fails at once with its reason; an
exception from the model is retried (the batch split into single images first,
so one bad image fails alone) with backoff until its attempts run out. The
database going away is nobody's fault and costs no attempt: every connection
waits for it and reconnects (``reconnect.py``), the batch in hand is written
once it is back (the ownership fence makes that safe), and jobs whose claim or
completion was lost with a connection are given back.
"""

from __future__ import annotations

import dataclasses
import logging
import queue as threadqueue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psycopg

from pgclip.db import images as db_images
from pgclip.db import queue
from pgclip.db.engine import connect
from pgclip.db.models import ModelRow, model_exists
from pgclip.workers.decode import ImageRejected, decode, make_thumbnail, probe
from pgclip.workers.index_build import IndexBuilder
from pgclip.workers.ingest import new_image
from pgclip.workers.liveness import Held, LeaseKeeper, Presence, Watchdog, app_name, worker_id
from pgclip.workers.metrics import WorkerMetrics
from pgclip.workers.pipeline import Decoded, Encoded, ImageEncoder, WorkerStats
from pgclip.workers.reconnect import RETRYABLE, Abandoned, Outage, Reconnecting, reason
from pgclip.workers.text_requests import TextRequests

__all__ = ["Worker", "WorkerStats", "worker_id"]

log = logging.getLogger("pgclip.worker")

LOOKAHEAD_BATCHES = 1  # decoded batches waiting for the model; more only holds leases longer
POLL_SECONDS = 5.0  # fallback wake-up when a NOTIFY is lost (or the listener is reconnecting)
UNTIL_EMPTY_POLL_SECONDS = 0.5  # --until-empty: how often to look whether others' leased jobs ended
PRODUCER_JOIN_SECONDS = 10.0  # a stopping worker waits this long for a claim in flight
THUMBNAIL_SIDE = 256  # pixels, the longer side of the WebP thumbnail
# An image row without bytes (brought by `pgclip import`): nothing to embed until its file is ingested.
NO_BYTES = "the image has no stored bytes (it came from `pgclip import`): ingest its file, then `pgclip retry-failed`"
# How long a thread may hold the GIL while another waits for it (Python's default: 5 ms).
# The decode thread runs Pillow's Python code (JPEG markers, EXIF) between the C calls
# that release the GIL, and every operation the model threads dispatch waits for it: with
# the default, a worker on 2 cores ran 4 % slower.
GIL_SWITCH_SECONDS = 0.0005


class Worker:
    """One worker process's loop over the queue of one model.

    ``watchdog_seconds``: exit the process (status ``liveness.EXIT_HUNG``, with a thread
    dump) after that long without progress while holding jobs; 0 = no watchdog (the
    default for workers run inside another program). ``parent_pid``: stop when the
    process that started this one is gone. ``metrics``: where the loop counts jobs and
    times its stages (``pgclip worker --metrics-port`` serves them); by default nowhere.
    """

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
        watchdog_seconds: float = 0,
        parent_pid: int | None = None,
        metrics: WorkerMetrics | None = None,
        build_index: bool = True,
        revive: Callable[[], None] | None = None,
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
        self.watchdog_seconds = watchdog_seconds
        self.parent_pid = parent_pid
        self.id = worker_id()
        self.metrics = metrics or WorkerMetrics.private(model=model.name, pretrained=model.pretrained)
        self.stats = WorkerStats(listener=self.metrics.count)
        self.held = Held()  # claimed and not yet written or given back
        self.outage = Outage(revive)  # revive: a crashed embedded server is started again (db.engine.reviver)
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._closed = threading.Event()  # run() is over: the presence, keeper and watchdog threads end
        # The writer finishes the batch in hand even while stopping, waiting for a database
        # that went away, but not forever: once a lease has passed since the stop, the batch's
        # leases have expired and its writes would be refused anyway.
        self._abandon = threading.Event()
        self._main = self._connection(self._abandon)
        self.last_progress = time.monotonic()
        self.presence: Presence | None = None
        # The model's deferred index, built when its queue runs dry (index_build.py); False: never
        # (a benchmark's "before").
        self.build_index = build_index
        self.index_builder: IndexBuilder | None = None

    def _connection(self, cancel: threading.Event, **options: Any) -> Reconnecting:
        return Reconnecting(self.url, app_name=app_name(self.id), outage=self.outage, cancel=cancel,
                            progress=self._beat, **options)

    def _beat(self) -> None:
        """The loop moved (a claim, a batch decoded, encoded or written, a reconnection attempt)."""
        self.last_progress = time.monotonic()

    # --- the loop ----------------------------------------------------------------

    def run(self, *, until_empty: bool = False) -> WorkerStats:
        """Process jobs until stopped (or, with ``until_empty``, until no job is open)."""
        self.encoder.load()
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        self._beat()
        self.presence = Presence(self.url, worker=self.id, outage=self.outage, wake=self._wake, done=self._closed)
        services: list[threading.Thread] = [
            self.presence,
            LeaseKeeper(self.url, worker=self.id, held=self.held, lease_seconds=self.lease_seconds,
                        outage=self.outage, done=self._closed),
            Watchdog(seconds=self.watchdog_seconds, held=self.held, idle_for=lambda: time.monotonic() - self.last_progress,
                     done=self._closed, parent_pid=self.parent_pid, on_orphaned=self.stop),
        ]
        if self.build_index:
            self.index_builder = IndexBuilder(self.url, model=self.model, app_name=app_name(self.id), done=self._closed)
            services.append(self.index_builder)
        if hasattr(self.encoder, "encode_texts"):  # an image-only encoder (a test's) answers no texts
            services.append(TextRequests(self.url, worker=self.id, model_id=self.model.id,
                                         encode_texts=self.encoder.encode_texts, outage=self.outage, done=self._closed))
        for service in services:
            service.start()
        decoded: threadqueue.Queue[Decoded | None] = threadqueue.Queue(maxsize=LOOKAHEAD_BATCHES)
        producer = threading.Thread(target=self._produce, args=(decoded, until_empty), name="decode", daemon=True)
        producer.start()
        encoded: threadqueue.Queue[Encoded | None] = threadqueue.Queue(maxsize=1)
        writer = threading.Thread(target=self._write_loop, args=(encoded,), name="write", daemon=True)
        writer.start()
        helpers = [
            threading.Thread(target=self._model_loop, args=(decoded, encoded), name=f"model-{i}", daemon=True)
            for i in range(1, self.model_threads)
        ]
        for helper in helpers:
            helper.start()
        try:
            self._model_loop(decoded, encoded)
        finally:
            self.stopping.set()
            self._wake.set()
            for helper in helpers:  # each finishes the batch in hand
                helper.join()
            encoded.put(None)
            writer.join()
            producer.join(timeout=PRODUCER_JOIN_SECONDS)
            # Everything still held (decoded ahead, claimed by a stopping decode thread, a write
            # abandoned) goes back in one statement, without counting an attempt.
            self.give_back()
            self._closed.set()
            for service in services:
                service.join(timeout=3)
            self._main.close()
            sys.setswitchinterval(switch_interval)
        return self.stats

    def _model_loop(self, decoded: threadqueue.Queue, encoded: threadqueue.Queue) -> None:
        """Encode decoded batches until the decode thread ends (runs in every model thread)."""
        while (batch := decoded.get()) is not None:
            if self.stopping.is_set():
                continue  # not started: still held, given back when the worker ends
            with self.metrics.stage("encode"):
                vectors, errors = self._encode(batch)
            self._beat()
            encoded.put(Encoded(batch, vectors, errors | batch.errors))
        decoded.put(None)  # the decode thread's end, passed on to the other model threads

    def stop(self) -> None:
        """Stop claiming; the batches in hand are finished, the rest is given back."""
        if not self.stopping.is_set():
            timer = threading.Timer(self.lease_seconds, self._abandon.set)
            timer.daemon = True
            timer.start()
        self.stopping.set()
        self._wake.set()
        if self.index_builder is not None:
            self.index_builder.cancel()  # a half-built index is left INVALID: the next build redoes it

    def give_back(self) -> bool:
        """Release every job still held, in one statement on a fresh connection, one try.

        The attempt counted at claim is returned. True when nothing is left held. Safe at
        any moment, from any thread: a batch being written meanwhile is refused by the
        ownership fence or released, never both.
        """
        ids = self.held.snapshot()
        if not ids:
            return True
        try:
            with connect(self.url, role="worker", app_name=app_name(self.id)) as conn:
                released = queue.release(conn, ids, worker=self.id)
        except RETRYABLE as exc:
            log.warning("could not give back %d jobs (%s): others take them over once this worker is gone",
                        len(ids), reason(exc))
            return False
        self.held.discard(ids)
        self.stats.add(released=len(released))
        return True

    def _produce(self, out: threadqueue.Queue, until_empty: bool) -> None:
        """Claim and decode batches ahead of the model (runs in its own thread and connection)."""
        db = self._connection(self.stopping, on_connect=self._release_strays)
        try:
            while not self.stopping.is_set():
                with self.metrics.stage("claim"):
                    jobs = db.run(self._claim)
                self._beat()
                live = [j for j in jobs if j.state == "leased"]
                self.metrics.claimed(len(live))
                self.held.add(j.id for j in live)
                self.stats.add(failed=len(jobs) - len(live))
                if not live:
                    if not db.run(lambda c: model_exists(c, self.model.id)):
                        # Dropped under it: its jobs went with it, and a model registered again
                        # under the same name is another row, which this worker never claims for.
                        log.warning("model %s was dropped (`pgclip models drop`): nothing is left for this "
                                    "worker to embed; it stops", self.model.label)
                        break
                    if until_empty and db.run(lambda c: queue.open_jobs(c, self.model.id)[0]) == 0:
                        if self.index_builder is not None:
                            self.index_builder.build_now(recheck=False)  # the queue is empty: the index, if deferred
                        break
                    if self.index_builder is not None:
                        self.index_builder.poke()
                    # Jobs leased elsewhere end without a notification: an emptying worker looks again soon.
                    self._wake.wait(UNTIL_EMPTY_POLL_SECONDS if until_empty else POLL_SECONDS)
                    self._wake.clear()
                    continue
                with self.metrics.stage("fetch"):
                    stored = db.run(lambda c: _stored_bytes(c, [j.image_id for j in live]))
                with self.metrics.stage("decode"):
                    batch = self._decode(live, stored)
                self._beat()
                while not self.stopping.is_set():
                    try:
                        out.put(batch, timeout=0.5)
                        break
                    except threadqueue.Full:
                        continue
        except Abandoned:
            pass  # stopping: what this thread claimed is held, and given back when the worker ends
        except Exception:
            log.exception("worker's claim loop failed")
        finally:
            db.close()
            out.put(None)

    def _claim(self, conn: psycopg.Connection) -> list[queue.ClaimedJob]:
        return queue.claim(
            conn, model_id=self.model.id, worker=self.id, limit=self.batch_size,
            lease_seconds=self.lease_seconds, max_attempts=self.max_attempts,
        )

    def _release_strays(self, conn: psycopg.Connection) -> None:
        """On each new claiming connection: give back jobs leased to us that we do not hold
        (a claim whose answer was lost with the old connection, a completion that crash
        recovery undid). Only this thread claims, so no claim is in flight meanwhile."""
        strays = queue.release_strays(conn, model_id=self.model.id, worker=self.id, held=self.held.snapshot())
        if strays:
            log.info("gave back %d jobs whose claim or completion was lost with the connection", len(strays))

    def _decode(self, jobs: list[queue.ClaimedJob], stored: _Stored) -> Decoded:
        """Decode, thumbnail and prepare each job's image; ``unprobed`` images (added with SQL)
        are probed first, so that their rows get the size, format and EXIF facts ingest reads.
        An image that has its thumbnail already (a re-embed for another model) gets no new one."""
        batch = Decoded(jobs, {}, {}, {}, {})
        for job in jobs:
            data = stored.blobs.get(job.image_id)
            if data is None and job.image_id in stored.bare:
                batch.rejected[job.id] = NO_BYTES
                continue
            if data is None:
                continue  # image deleted since the claim: its job is gone too, nothing to write
            try:
                if job.image_id in stored.unprobed:
                    batch.probed[job.id] = new_image(data, probe(data), source=None, metadata={})
                image = decode(data)
                thumb = None if job.image_id in stored.thumbnailed else make_thumbnail(image, THUMBNAIL_SIDE)
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
            except Abandoned:
                pass  # stopping with the database away: the batch stays held, given back if it can be
            except Exception:
                # A bug, not the database: let the leases expire (counting the attempt) rather
                # than give the batch back, so that a batch that breaks the writer ends failed.
                self.held.discard(item.batch.job_ids)
                log.exception("writing a batch failed; its jobs return to the queue when their leases expire",
                              extra={"job_ids": item.batch.job_ids})

    def _write(self, batch: Decoded, vectors: dict[int, np.ndarray], errors: dict[int, str]) -> None:
        results = []
        for job_id, vector in vectors.items():
            thumb = batch.thumbs[job_id]
            if thumb is None:  # the image has its thumbnail
                results.append(queue.Finished(job_id, vector, probed=batch.probed.get(job_id)))
            else:
                results.append(queue.Finished(job_id, vector, thumb.data, thumb.width, thumb.height,
                                              batch.probed.get(job_id)))

        def write(conn: psycopg.Connection) -> tuple[set[int], set[int], dict[int, str]]:
            # One transaction: the batch's outcome is written whole or not at all.
            return (
                queue.complete(conn, results, worker=self.id),
                queue.fail(conn, batch.rejected, worker=self.id),
                queue.retry_later(conn, errors, worker=self.id, max_attempts=self.max_attempts),
            )

        # Waits for the database while it is away; raises Abandoned once a stopping worker gives up.
        with self.metrics.stage("write"):
            owned, failed, states = self._main.run(write)
        self.held.discard(batch.job_ids)
        self._beat()
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
            log.warning("encoding a batch of %d failed (%s); retrying image by image", len(ids), _reason(exc),
                        extra={"job_ids": ids})
        out: dict[int, np.ndarray] = {}
        errors: dict[int, str] = {}
        for job_id in ids:
            try:
                out[job_id] = self.encoder.encode_prepared([batch.inputs[job_id]])[0]
            except Exception as exc:
                errors[job_id] = _reason(exc)
        return out, errors


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")[:500]


@dataclasses.dataclass(frozen=True)
class _Stored:
    """What the database holds of a claimed batch's images."""

    blobs: dict[int, bytes]  # their bytes by id
    bare: set[int]  # images that exist without bytes (one deleted since the claim is in neither)
    unprobed: set[int]  # images added with SQL that no decoder has read yet
    thumbnailed: set[int]  # images that have their thumbnail (made when another model embedded them)


def _stored_bytes(conn: psycopg.Connection, image_ids: list[int]) -> _Stored:
    blobs = db_images.blobs(conn, image_ids)
    missing = [i for i in image_ids if i not in blobs]
    bare = db_images.known_ids(conn, missing) if missing else set()
    unprobed, thumbnailed = db_images.decode_state(conn, list(blobs))
    return _Stored(blobs, bare, unprobed, thumbnailed)
