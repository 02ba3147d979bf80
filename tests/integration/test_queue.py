"""The queue protocol (db/sql/queue.sql) on a real PostgreSQL."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pgclip.db import queue
from pgclip.db.engine import connect
from pgclip.db.models import active_model
from tests.integration.test_schema import add_image
from tests.waiting import wait_for

LEASE = 60.0


@pytest.fixture
def model(conn):
    return active_model(conn)


def enqueue_images(conn, model, n: int) -> list[int]:
    ids = [add_image(conn, f"q{i}.jpg") for i in range(n)]
    queue.enqueue(conn, ids, model.id)
    conn.commit()
    return ids


def claim(conn, model, worker="w1", limit=10, lease=LEASE, max_attempts=3):
    with conn.transaction():
        return queue.claim(conn, model_id=model.id, worker=worker, limit=limit, lease_seconds=lease, max_attempts=max_attempts)


def jobs(conn):
    return {
        r[0]: r[1:]
        for r in conn.execute("SELECT image_id, state, attempts, locked_by, last_error FROM pgclip.embedding_jobs ORDER BY id")
    }


def vec(model, seed=0):
    v = np.random.default_rng(seed).normal(size=model.dimension).astype(np.float32)
    return v / np.linalg.norm(v)


def test_enqueue_is_idempotent_and_notifies_once_per_transaction(conn, model, db_url):
    with connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN pgclip_jobs")
        ids = [add_image(conn, f"n{i}.jpg") for i in range(5)]
        assert queue.enqueue(conn, ids, model.id) == 5
        assert queue.enqueue(conn, ids, model.id) == 0  # already open: nothing new, no second notify
        conn.commit()
        received = list(listener.notifies(timeout=1.0))
    assert [n.payload for n in received] == [str(model.id)]
    assert len(jobs(conn)) == 5


def test_images_are_queued_for_every_model_searches_need_whatever_model_the_caller_names(conn, model, db_url):
    """A re-embed in progress (a building model) and a process still configured with a retired
    model: new images reach the active model and the building one too, each woken once; a model
    that has an image's vector gets no job for it."""
    from pgclip.db.models import ensure_model

    building = ensure_model(conn, "test-tiny", "queue-building", model.dimension)
    retired = ensure_model(conn, "test-tiny", "queue-retired", model.dimension)
    conn.execute("UPDATE pgclip.models SET state = 'retired' WHERE id = %s", [retired.id])
    conn.commit()
    ids = [add_image(conn, f"m{i}.jpg") for i in range(3)]
    conn.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)",
                 [ids[0], building.id, vec(model)])
    conn.commit()
    with connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN pgclip_jobs")
        assert queue.enqueue(conn, ids, retired.id) == 3  # images queued: 3 + 3 + 2 jobs
        conn.commit()
        woken = sorted(n.payload for n in listener.notifies(timeout=1.0))
    assert woken == sorted(str(m.id) for m in (model, building, retired))
    queued = conn.execute("SELECT model_id, array_agg(image_id ORDER BY image_id) FROM pgclip.embedding_jobs"
                          " GROUP BY model_id").fetchall()
    assert dict(queued) == {model.id: ids, building.id: ids[1:], retired.id: ids}
    # Known images, queued again "only where never queued": nothing new for anyone.
    assert queue.enqueue(conn, ids, model.id, only_unqueued=True) == 0


def test_claims_count_the_attempt_and_never_overlap(conn, model, db_url):
    enqueue_images(conn, model, 30)
    with connect(db_url) as other:
        a = claim(conn, model, "a", limit=10)
        b = claim(other, model, "b", limit=10)
    assert len(a) == len(b) == 10
    assert not {j.id for j in a} & {j.id for j in b}
    assert all(j.attempts == 1 and j.state == "leased" for j in a + b)
    states = jobs(conn)
    assert sum(1 for s in states.values() if s[0] == "leased") == 20


def test_concurrent_claimers_skip_locked_rows_instead_of_waiting(conn, model, db_url):
    enqueue_images(conn, model, 20)
    with connect(db_url) as holder, connect(db_url) as other:
        # An uncommitted claim holds row locks on its batch ...
        queue.claim(holder, model_id=model.id, worker="slow", limit=10, lease_seconds=LEASE, max_attempts=3)
        # ... which another claimer skips, without blocking: were it to wait for them, the
        # lock timeout would raise LockNotAvailable instead.
        other.execute("SET lock_timeout = '1s'")
        b = claim(other, model, "fast", limit=20)
        assert len(b) == 10
        holder.rollback()


def test_complete_writes_vectors_and_thumbnails_only_for_jobs_still_owned(conn, model):
    enqueue_images(conn, model, 2)
    mine = claim(conn, model, "me", limit=2)
    # The lease of one job expired and another worker took it.
    conn.execute(
        "UPDATE pgclip.embedding_jobs SET locked_by = 'thief' WHERE id = %s", [mine[1].id]
    )
    conn.commit()
    with conn.transaction():
        owned = queue.complete(
            conn, [queue.Finished(j.id, vec(model, j.id), b"webp", 4, 3) for j in mine], worker="me"
        )
    assert owned == {mine[0].id}
    stored = conn.execute("SELECT image_id FROM pgclip.embeddings").fetchall()
    assert stored == [(mine[0].image_id,)]  # nothing written for the lost job
    assert conn.execute("SELECT count(*) FROM pgclip.thumbnails").fetchone()[0] == 1
    assert jobs(conn)[mine[1].image_id][:3] == ("leased", 1, "thief")  # not clobbered


def test_writing_a_vector_twice_leaves_one_row(conn, model):
    (image,) = enqueue_images(conn, model, 1)
    for attempt in range(2):  # at-least-once: the same image embedded again later
        if attempt:
            queue.enqueue(conn, [image], model.id)
            conn.commit()
        (job,) = claim(conn, model, "w")
        with conn.transaction():
            queue.complete(conn, [queue.Finished(job.id, vec(model, attempt))], worker="w")
    rows = conn.execute("SELECT embedding FROM pgclip.embeddings WHERE image_id = %s", [image]).fetchall()
    assert len(rows) == 1
    np.testing.assert_allclose(rows[0][0].to_numpy(), vec(model, 1), atol=1e-6)


def test_an_expired_lease_makes_the_job_claimable_again(conn, model):
    enqueue_images(conn, model, 3)
    first = claim(conn, model, "dead", lease=0.2)
    assert claim(conn, model, "alive") == []  # leased: not claimable while the lease holds
    second = wait_for(lambda: claim(conn, model, "alive"), timeout=10, what="the lease expiring")
    assert {j.id for j in second} == {j.id for j in first}
    assert all(j.attempts == 2 for j in second)


def test_leases_that_ran_out_while_the_server_was_down_stay_with_their_workers_at_first(conn, model):
    """Right after a server (re)start, expired leases are not claimable for a grace period:
    their workers are reconnecting and renew them (no attempt lost to an outage longer than a
    lease); pending jobs are claimable at once, and after the grace expired leases are too."""
    enqueue_images(conn, model, 2)
    held = claim(conn, model, "reconnecting", limit=1, lease=0.05)
    uptime = conn.execute("SELECT extract(epoch FROM now() - pg_postmaster_start_time())").fetchone()[0]
    conn.commit()
    time.sleep(0.3)  # the lease (0.05 s) runs out
    just_started = float(uptime) + 3600  # as if the server had started a moment ago
    with conn.transaction():
        other = queue.claim(conn, model_id=model.id, worker="other", limit=10, lease_seconds=LEASE, max_attempts=3,
                            restart_grace=just_started)
    assert [j.id for j in other] != [j.id for j in held] and len(other) == 1  # only the pending one
    with conn.transaction():
        assert queue.renew(conn, [held[0].id], worker="reconnecting", lease_seconds=LEASE) == {held[0].id}
    assert jobs(conn)[held[0].image_id][:3] == ("leased", 1, "reconnecting")  # kept, first attempt


def test_a_job_whose_worker_dies_every_time_ends_failed(conn, model):
    (image,) = enqueue_images(conn, model, 1)
    for _ in range(3):  # max_attempts = 3, each claim's worker "dies" (lease expires)
        assert len(wait_for(lambda: claim(conn, model, "doomed", lease=0.05, max_attempts=3), timeout=10)) == 1
    last = wait_for(lambda: claim(conn, model, "doomed", lease=0.05, max_attempts=3), timeout=10)
    assert [j.state for j in last] == ["failed"]
    state, attempts, locked_by, error = jobs(conn)[image]
    assert (state, attempts, locked_by) == ("failed", 3, None)
    assert "lease expired" in error
    assert claim(conn, model, "next") == []


def test_transient_failures_back_off_then_fail_when_attempts_run_out(conn, model):
    (image,) = enqueue_images(conn, model, 1)
    (job,) = claim(conn, model, "w", max_attempts=2)
    with conn.transaction():
        assert queue.retry_later(conn, {job.id: "OutOfMemoryError"}, worker="w", max_attempts=2) == {job.id: "pending"}
    assert claim(conn, model, "w", max_attempts=2) == []  # backing off
    conn.execute("UPDATE pgclip.embedding_jobs SET run_after = now()")
    (job,) = claim(conn, model, "w", max_attempts=2)
    with conn.transaction():
        assert queue.retry_later(conn, {job.id: "OutOfMemoryError"}, worker="w", max_attempts=2) == {job.id: "failed"}
    assert jobs(conn)[image][0] == "failed"


def test_permanent_failures_keep_their_reason_and_retry_failed_requeues(conn, model):
    ids = enqueue_images(conn, model, 2)
    batch = claim(conn, model, "w")
    with conn.transaction():
        queue.fail(conn, {batch[0].id: "truncated image"}, worker="w")
        queue.complete(conn, [queue.Finished(batch[1].id, vec(model))], worker="w")
    assert jobs(conn)[ids[0]][0::3] == ("failed", "truncated image")
    status = queue.status(conn)
    assert status.models[0].counts == {"pending": 0, "leased": 0, "done": 1, "failed": 1}
    assert [f.last_error for f in status.failures] == ["truncated image"]
    with conn.transaction():
        assert queue.retry_failed(conn) == 1
    assert jobs(conn)[ids[0]][:2] == ("pending", 0)


def test_release_returns_unstarted_jobs_without_spending_an_attempt(conn, model):
    enqueue_images(conn, model, 2)
    batch = claim(conn, model, "w")
    with conn.transaction():
        assert queue.release(conn, [j.id for j in batch], worker="w") == {j.id for j in batch}
    assert {s[:2] for s in jobs(conn).values()} == {("pending", 0)}


def test_renew_extends_only_our_own_leases(conn, model):
    enqueue_images(conn, model, 2)
    batch = claim(conn, model, "w", lease=1)
    conn.execute("UPDATE pgclip.embedding_jobs SET locked_by = 'other' WHERE id = %s", [batch[0].id])
    conn.commit()
    with conn.transaction():
        kept = queue.renew(conn, [j.id for j in batch], worker="w", lease_seconds=600)
    assert kept == {batch[1].id}


def test_claim_uses_its_index(conn, model):
    enqueue_images(conn, model, 5)
    conn.execute("SET enable_seqscan = off")
    from pgclip.db.queries import QUEUE

    plan = conn.execute(
        "EXPLAIN (FORMAT JSON) " + QUEUE["claim"],
        {"model_id": model.id, "worker": "w", "limit": 10, "lease_seconds": 60, "max_attempts": 3,
         "restart_grace": queue.RESTART_GRACE},
    ).fetchone()[0]
    conn.rollback()
    assert "embedding_jobs_claim_idx" in str(plan)


def test_an_activation_refused_for_images_that_failed_says_so_and_never_rounds_to_100(conn, model):
    from pgclip.core.errors import ConfigError
    from pgclip.db.models import Coverage, activate, ensure_model

    assert [Coverage(model, v, n).percent for v, n in ((8414, 8420), (1, 3), (3, 3), (0, 0))] == \
        ["99.9%", "33.3%", "100%", "100%"]
    other = ensure_model(conn, "test-tiny", "random-other", model.dimension)
    ids = enqueue_images(conn, other, 3)
    vector = np.eye(model.dimension, dtype=np.float32)[0]
    for image_id in ids[:2]:
        conn.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)",
                     [image_id, other.id, vector])
    conn.execute("UPDATE pgclip.embedding_jobs SET state = 'failed', last_error = 'has no stored bytes'"
                 " WHERE image_id = %s AND model_id = %s", [ids[2], other.id])
    # The active model has that image's vector (an imported image without bytes, say): switching loses it.
    conn.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)",
                 [ids[2], model.id, vector])
    conn.commit()
    with pytest.raises(ConfigError, match=r"vectors for 2 of 3 images \(66\.6%\); 1 of the others failed and will "
                                          r"not get one .*`pgclip retry-failed`.*: the failed images have vectors "
                                          r"under another model, which searches would lose, or activate anyway"):
        activate(conn, other)


def test_images_no_model_can_embed_do_not_block_an_activation(conn, model):
    """Bytes that are not an image fail under every model: a model that has every other vector
    is activated, and the one before it can be activated again (nothing is lost either way)."""
    from pgclip.core.errors import ConfigError
    from pgclip.db.models import activate, ensure_model

    other = ensure_model(conn, "test-tiny", "random-other", model.dimension)
    ids = enqueue_images(conn, other, 4)  # queued for both models
    vector = np.eye(model.dimension, dtype=np.float32)[0]
    for image_id in ids[:3]:
        for m in (model, other):
            conn.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)",
                         [image_id, m.id, vector])
    conn.execute("UPDATE pgclip.embedding_jobs SET state = 'failed', last_error = 'not an image'"
                 " WHERE image_id = %s", [ids[3]])
    conn.execute("UPDATE pgclip.embedding_jobs SET state = 'done' WHERE state = 'pending'")
    conn.commit()
    assert activate(conn, other).id == model.id
    assert activate(conn, model).id == other.id
    # A fifth image still waiting for its vector does block it, and says to wait.
    five = add_image(conn, "q5.jpg")
    conn.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)",
                 [five, model.id, vector])
    conn.commit()
    with pytest.raises(ConfigError, match=r"vectors for 3 of 5 images \(60%\); 1 of the others failed .*: let its "
                                          r"workers finish"):
        activate(conn, other)


def test_a_model_named_with_weights_it_does_not_have_is_told_apart_from_an_unknown_name(conn, model):
    from pgclip.core.errors import NotFound
    from pgclip.db.models import find_model

    with pytest.raises(NotFound, match=r"no model 'test-tiny' with weights 'nope' is registered "
                                       r"\(its weights here: random-seed-0\)"):
        find_model(conn, "test-tiny", "nope")
    with pytest.raises(NotFound, match=r"no model 'ViT-Q' is registered: `pgclip models` lists them"):
        find_model(conn, "ViT-Q")
