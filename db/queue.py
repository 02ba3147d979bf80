"""The embedding queue's round-trips (the statements themselves are in ``sql/queue.sql``).

Each function is one statement in the caller's transaction unless it says it
commits; the caller decides the transaction boundaries (claim, commit, encode,
then complete in a second short transaction: no row lock is held while the
model runs).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

import numpy as np
import psycopg
from psycopg.rows import class_row, dict_row

from psycopg.types.json import Jsonb

from pgclip.db.images import NewImage
from pgclip.db.queries import QUEUE

NOTIFY_CHANNEL = "pgclip_jobs"
BACKOFF_BASE = 2.0  # seconds before the first retry of a transient failure; doubles per attempt
BACKOFF_CAP = 300.0  # seconds; the longest a transient failure waits


@dataclasses.dataclass(frozen=True)
class ClaimedJob:
    id: int
    image_id: int
    model_id: int
    attempts: int
    state: str  # 'leased', or 'failed' when it had no attempts left


@dataclasses.dataclass(frozen=True)
class Finished:
    """A job's result to write: its vector and (optionally) a thumbnail.

    ``probed``: for an image added with SQL, what decoding it told (size, format, mime,
    taken_at, EXIF facts in ``metadata``), written into its row if that is still unfilled.
    """

    job_id: int
    vector: np.ndarray
    thumbnail: bytes | None = None
    thumb_width: int | None = None
    thumb_height: int | None = None
    probed: NewImage | None = None


def enqueue(conn: psycopg.Connection, image_ids: Sequence[int], model_id: int, *, only_unqueued: bool = False) -> int:
    """Queue images for a model, and for the active model and every model being built when
    those are others (an image added while `pgclip reembed` runs, or by a process configured
    with a retired model, must reach the models searches use); notify their workers (delivered
    at commit). Returns how many of the images got a new job, for one model or several (what
    an ingest reports as queued: 12 images during a re-embed are 12, not 24 jobs).

    ``only_unqueued``: skip, per model, images that ever had a job for it (done or failed too).
    """
    if not image_ids:
        return 0
    statement = QUEUE["enqueue_unqueued" if only_unqueued else "enqueue"]
    added = conn.execute(statement, {"image_ids": list(image_ids), "model_id": model_id}).fetchall()
    for woken in sorted({model for model, _ in added}):
        conn.execute(QUEUE["notify"], {"model_id": woken})
    return len({image for _, image in added})


def bare_images(conn: psycopg.Connection, model_id: int) -> int:
    """How many images have no stored bytes (imported) and no vector for the model."""
    return conn.execute(QUEUE["bare_images"], {"model_id": model_id}).fetchone()[0]


def failed_images(conn: psycopg.Connection, model_id: int) -> int:
    """How many images have a failed job for the model and no vector for it."""
    return conn.execute(QUEUE["failed_images"], {"model_id": model_id}).fetchone()[0]


def enqueue_model(conn: psycopg.Connection, model_id: int) -> int:
    """Queue every image without a vector, an open job or a failed job for the model (a re-embed); notifies."""
    added = conn.execute(QUEUE["enqueue_model"], {"model_id": model_id}).fetchall()
    if added:
        conn.execute(QUEUE["notify"], {"model_id": model_id})
    return len(added)


RESTART_GRACE = 10.0  # seconds after a server start before expired leases are claimable (workers renew first)


def claim(
    conn: psycopg.Connection, *, model_id: int, worker: str, limit: int, lease_seconds: float, max_attempts: int,
    restart_grace: float = RESTART_GRACE,
) -> list[ClaimedJob]:
    with conn.cursor(row_factory=class_row(ClaimedJob)) as cur:
        return cur.execute(
            QUEUE["claim"],
            {"model_id": model_id, "worker": worker, "limit": limit, "lease_seconds": lease_seconds,
             "max_attempts": max_attempts, "restart_grace": restart_grace},
        ).fetchall()


def renew(conn: psycopg.Connection, job_ids: Sequence[int], *, worker: str, lease_seconds: float) -> set[int]:
    rows = conn.execute(
        QUEUE["renew"], {"job_ids": list(job_ids), "worker": worker, "lease_seconds": lease_seconds}
    ).fetchall()
    return {r[0] for r in rows}


def complete(conn: psycopg.Connection, results: Sequence[Finished], *, worker: str) -> set[int]:
    """Write vectors + thumbnails and mark done; returns the job ids this worker still owned."""
    if not results:
        return set()
    rows = conn.execute(
        QUEUE["complete"],
        {
            "job_ids": [r.job_id for r in results],
            "vectors": [np.asarray(r.vector, dtype=np.float32) for r in results],
            "thumbs": [r.thumbnail for r in results],
            "thumb_widths": [r.thumb_width for r in results],
            "thumb_heights": [r.thumb_height for r in results],
            **_probed_columns([r.probed for r in results]),
            "worker": worker,
        },
    ).fetchall()
    return {r[0] for r in rows}


def _probed_columns(probed: Sequence[NewImage | None]) -> dict[str, list]:
    """complete's fill-in arrays, one entry per result (null where the row is filled already)."""
    return {
        "widths": [p and p.width for p in probed],
        "heights": [p and p.height for p in probed],
        "formats": [p and p.format for p in probed],
        "mimes": [p and p.mime for p in probed],
        "taken_at": [p and p.taken_at for p in probed],
        "exif": [p and Jsonb(p.metadata) for p in probed],
    }


def fail(conn: psycopg.Connection, errors: dict[int, str], *, worker: str) -> set[int]:
    """Fail jobs permanently with their reasons."""
    if not errors:
        return set()
    rows = conn.execute(
        QUEUE["fail"], {"job_ids": list(errors), "errors": list(errors.values()), "worker": worker}
    ).fetchall()
    return {r[0] for r in rows}


def retry_later(conn: psycopg.Connection, errors: dict[int, str], *, worker: str, max_attempts: int) -> dict[int, str]:
    """Send jobs with transient errors back to pending (with backoff) or to failed; returns id -> new state."""
    if not errors:
        return {}
    rows = conn.execute(
        QUEUE["retry_later"],
        {"job_ids": list(errors), "errors": list(errors.values()), "worker": worker,
         "max_attempts": max_attempts, "backoff_base": BACKOFF_BASE, "backoff_cap": BACKOFF_CAP},
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def release(conn: psycopg.Connection, job_ids: Sequence[int], *, worker: str) -> set[int]:
    if not job_ids:
        return set()
    rows = conn.execute(QUEUE["release"], {"job_ids": list(job_ids), "worker": worker}).fetchall()
    return {r[0] for r in rows}


def release_strays(conn: psycopg.Connection, *, model_id: int, worker: str, held: Sequence[int]) -> set[int]:
    """Give back jobs leased to ``worker`` other than ``held`` (lost with a connection); returns their ids."""
    rows = conn.execute(
        QUEUE["release_strays"], {"model_id": model_id, "worker": worker, "held": list(held)}
    ).fetchall()
    return {r[0] for r in rows}


def orphaned_workers(conn: psycopg.Connection) -> set[str]:
    """Worker ids holding unexpired leases with no session open (dead, or reconnecting)."""
    return {r[0] for r in conn.execute(QUEUE["orphaned_workers"]).fetchall()}


def server_uptime(conn: psycopg.Connection) -> float:
    """Seconds since the PostgreSQL server started (or restarted after a crash)."""
    return float(conn.execute(QUEUE["server_uptime"]).fetchone()[0])


def reap(conn: psycopg.Connection, workers: Sequence[str]) -> dict[str, int]:
    """Expire the leases of ``workers`` that still have no session, and wake idle workers.

    Returns worker id -> jobs made claimable (nothing for a worker that came back).
    """
    if not workers:
        return {}
    rows = conn.execute(QUEUE["reap"], {"workers": list(workers)}).fetchall()
    reaped: dict[str, int] = {}
    for _, model_id, worker in rows:
        reaped[worker] = reaped.get(worker, 0) + 1
    for model_id in {r[1] for r in rows}:
        conn.execute(QUEUE["notify"], {"model_id": model_id})
    return reaped


def retry_failed(conn: psycopg.Connection, model_id: int | None = None) -> int:
    rows = conn.execute(QUEUE["retry_failed"], {"model_id": model_id}).fetchall()
    if rows:
        conn.execute(QUEUE["notify"], {"model_id": model_id or 0})
    return len(rows)


def open_jobs(conn: psycopg.Connection, model_id: int) -> tuple[int, int]:
    """(pending or leased, of which leased) for one model."""
    row = conn.execute(QUEUE["pending_count"], {"model_id": model_id}).fetchone()
    return int(row[0]), int(row[1])


def latest_state(conn: psycopg.Connection, image_id: int, model_id: int) -> str | None:
    """The state of the image's newest job for the model; None if it was never queued for it."""
    row = conn.execute(QUEUE["latest_state"], {"image_id": image_id, "model_id": model_id}).fetchone()
    return row[0] if row else None


@dataclasses.dataclass(frozen=True)
class Failure:
    job_id: int
    image_id: int
    source: str | None
    model: str
    attempts: int
    last_error: str | None
    updated_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class ModelQueue:
    model: str
    pretrained: str
    model_state: str
    counts: dict[str, int]
    oldest_pending: dt.datetime | None
    done_last_minute: int

    @property
    def eta_seconds(self) -> float | None:
        """Time to drain pending + leased at the last minute's rate; None when nothing ran."""
        remaining = self.counts.get("pending", 0) + self.counts.get("leased", 0)
        if remaining == 0:
            return 0.0
        if self.done_last_minute == 0:
            return None
        return remaining / (self.done_last_minute / 60.0)


@dataclasses.dataclass(frozen=True)
class QueueStatus:
    models: list[ModelQueue]
    failures: list[Failure]


def status(conn: psycopg.Connection, *, failures: int = 20) -> QueueStatus:
    with conn.cursor(row_factory=dict_row) as cur:
        count_rows = cur.execute(QUEUE["status_counts"]).fetchall()
        rates = {r["model"]: r["done_last_minute"] for r in cur.execute(QUEUE["status_throughput"]).fetchall()}
    with conn.cursor(row_factory=class_row(Failure)) as cur:
        failed = cur.execute(QUEUE["status_failures"], {"limit": failures}).fetchall()
    models: dict[tuple[str, str], dict] = {}
    for r in count_rows:
        entry = models.setdefault(
            (r["model"], r["pretrained"]),
            {"model_state": r["model_state"], "counts": {s: 0 for s in ("pending", "leased", "done", "failed")},
             "oldest": None},
        )
        if r["state"] is not None:
            entry["counts"][r["state"]] = r["jobs"]
        if r["oldest_pending"] is not None:
            entry["oldest"] = r["oldest_pending"]
    return QueueStatus(
        models=[
            ModelQueue(name, pretrained, e["model_state"], e["counts"], e["oldest"], rates.get(name, 0))
            for (name, pretrained), e in models.items()
        ],
        failures=failed,
    )
