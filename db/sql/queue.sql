-- The embedding queue's protocol, every statement in one place.
-- Sections start with `-- name --`; pgclip.db.queries loads them by name.
-- States: pending -> leased -> done | failed (| pending again on retry / release).

-- enqueue --
-- Queue images for the caller's model and for every model searches need them in: the
-- active one and each one being built (`pgclip reembed`), however the images came in and
-- whatever model the caller was configured with. A model that has an image's vector already
-- gets no job for it. The partial unique index keeps one open job per pair, so enqueueing
-- what is already queued or running is a no-op. Returns each new job's model and image.
INSERT INTO pgclip.embedding_jobs (image_id, model_id)
SELECT t.image_id, m.id
FROM unnest(%(image_ids)s::bigint[]) AS t(image_id)
CROSS JOIN pgclip.models m
WHERE m.id = %(model_id)s
   OR (m.state IN ('active', 'building')
       AND NOT EXISTS (SELECT 1 FROM pgclip.embeddings e WHERE e.image_id = t.image_id AND e.model_id = m.id))
ON CONFLICT (image_id, model_id) WHERE state IN ('pending', 'leased') DO NOTHING
RETURNING model_id, image_id;

-- enqueue_unqueued --
-- Queue known images that were never queued for these models (ingested while another
-- model was configured): the caller's, the active one and each one being built. Images
-- with any job for a model (done or failed too), or its vector, are left alone for it.
INSERT INTO pgclip.embedding_jobs (image_id, model_id)
SELECT t.image_id, m.id
FROM unnest(%(image_ids)s::bigint[]) AS t(image_id)
CROSS JOIN pgclip.models m
WHERE (m.id = %(model_id)s OR m.state IN ('active', 'building'))
  AND NOT EXISTS (SELECT 1 FROM pgclip.embedding_jobs j WHERE j.image_id = t.image_id AND j.model_id = m.id)
  AND NOT EXISTS (SELECT 1 FROM pgclip.embeddings e WHERE e.image_id = t.image_id AND e.model_id = m.id)
ON CONFLICT (image_id, model_id) WHERE state IN ('pending', 'leased') DO NOTHING
RETURNING model_id, image_id;

-- enqueue_model --
-- A re-embed: queue every image that has no vector, no open job and no failed job for the
-- model (a failure is retried by `pgclip retry-failed`, not queued again beside it).
INSERT INTO pgclip.embedding_jobs (image_id, model_id)
SELECT i.id, %(model_id)s FROM pgclip.images i
WHERE NOT EXISTS (
    SELECT 1 FROM pgclip.embeddings e WHERE e.image_id = i.id AND e.model_id = %(model_id)s)
  AND NOT EXISTS (
    SELECT 1 FROM pgclip.embedding_jobs j
    WHERE j.image_id = i.id AND j.model_id = %(model_id)s AND j.state = 'failed')
ON CONFLICT (image_id, model_id) WHERE state IN ('pending', 'leased') DO NOTHING
RETURNING id;

-- bare_images --
-- Images without stored bytes (`pgclip import` brings vectors, not files) and without the
-- model's vector: its workers cannot embed them until their files are ingested.
SELECT count(*) FROM pgclip.images i
WHERE NOT EXISTS (SELECT 1 FROM pgclip.image_blobs b WHERE b.image_id = i.id)
  AND NOT EXISTS (SELECT 1 FROM pgclip.embeddings e WHERE e.image_id = i.id AND e.model_id = %(model_id)s);

-- failed_images --
-- Images whose job for the model failed (and have no vector for it).
SELECT count(DISTINCT j.image_id) FROM pgclip.embedding_jobs j
WHERE j.model_id = %(model_id)s AND j.state = 'failed'
  AND NOT EXISTS (SELECT 1 FROM pgclip.embeddings e WHERE e.image_id = j.image_id AND e.model_id = j.model_id);

-- notify --
-- Wake idle workers. Sent once per enqueueing transaction and delivered at
-- commit, so a worker never wakes to find rows it cannot see yet.
SELECT pg_notify('pgclip_jobs', %(model_id)s::text);

-- claim --
-- Take up to n claimable jobs of one model in one statement:
--   * claimable = pending with its backoff over, or leased with an expired lease
--     (its worker died or hung); one index serves both (embedding_jobs_claim_idx);
--   * FOR UPDATE SKIP LOCKED: concurrent workers take disjoint batches, no waiting;
--   * the attempt is counted here, at claim time, so an image that kills its
--     worker every time still runs out of attempts ...
--   * ... and a job whose lease expired with no attempts left ends failed instead
--     of being leased again (RETURNING says which; the worker skips those);
--   * in the first restart_grace seconds after the server (re)started, no expired
--     lease is taken: leases that ran out while it was down belong to workers that
--     are reconnecting and renew them at once (an outage longer than a lease would
--     otherwise hand their jobs to another worker and cost each an attempt).
WITH claimable AS (
    SELECT id
    FROM pgclip.embedding_jobs
    WHERE model_id = %(model_id)s
      AND state IN ('pending', 'leased')
      AND COALESCE(lease_until, run_after) <= now()
      AND (state = 'pending' OR pg_postmaster_start_time() <= now() - make_interval(secs => %(restart_grace)s))
    ORDER BY COALESCE(lease_until, run_after), id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE pgclip.embedding_jobs AS j
SET state       = CASE WHEN j.attempts >= %(max_attempts)s THEN 'failed' ELSE 'leased' END,
    attempts    = CASE WHEN j.attempts >= %(max_attempts)s THEN j.attempts ELSE j.attempts + 1 END,
    locked_by   = CASE WHEN j.attempts >= %(max_attempts)s THEN NULL ELSE %(worker)s END,
    lease_until = CASE WHEN j.attempts >= %(max_attempts)s THEN NULL
                       ELSE now() + make_interval(secs => %(lease_seconds)s) END,
    last_error  = CASE WHEN j.attempts >= %(max_attempts)s
                       THEN 'gave up after ' || j.attempts || ' attempts: the lease expired each time (worker killed or hung)'
                       ELSE j.last_error END,
    updated_at  = now()
FROM claimable AS c
WHERE j.id = c.id
RETURNING j.id, j.image_id, j.model_id, j.attempts, j.state;

-- renew --
-- Extend the lease of jobs this worker still owns (a long batch calls this every
-- lease/3). Rows missing from RETURNING were lost (expired and re-claimed).
UPDATE pgclip.embedding_jobs
SET lease_until = now() + make_interval(secs => %(lease_seconds)s), updated_at = now()
WHERE id = ANY(%(job_ids)s::bigint[]) AND locked_by = %(worker)s AND state = 'leased'
RETURNING id;

-- complete --
-- Mark jobs done and write their vectors and thumbnails in one statement, fenced
-- on ownership: only jobs still leased to this worker count, so a worker whose
-- lease was lost writes nothing (no clobbering). A deleted image's job is gone
-- (cascade), so nothing is written for it either. Writes are upserts: running a
-- job twice (at-least-once delivery) leaves one row per (image, model).
-- Vectors and thumbnails are sent in binary format: far fewer bytes, no text parsing.
-- An image added with SQL (pgclip.image_inbox) comes without what only decoding tells:
-- its width, height, format, mime, taken_at and EXIF facts arrive here with its vector
-- and fill the row once (given metadata and a given taken_at win, as at ingest).
WITH owned AS (
    UPDATE pgclip.embedding_jobs
    SET state = 'done', lease_until = NULL, locked_by = NULL, last_error = NULL, updated_at = now()
    WHERE id = ANY(%(job_ids)s::bigint[]) AND locked_by = %(worker)s AND state = 'leased'
    RETURNING id, image_id, model_id
),
input AS (
    SELECT *
    FROM unnest(%(job_ids)s::bigint[], %(vectors)b::vector[], %(thumbs)b::bytea[],
                %(thumb_widths)s::int[], %(thumb_heights)s::int[],
                %(widths)s::int[], %(heights)s::int[], %(formats)s::text[], %(mimes)s::text[],
                %(taken_at)s::timestamptz[], %(exif)s::jsonb[])
         AS t(job_id, embedding, thumb, thumb_width, thumb_height, width, height, format, mime, taken_at, exif)
),
probed AS (
    UPDATE pgclip.images AS im
    SET width = i.width, height = i.height, format = i.format, mime = i.mime,
        taken_at = COALESCE(im.taken_at, i.taken_at), metadata = i.exif || im.metadata
    FROM owned o JOIN input i ON i.job_id = o.id
    WHERE im.id = o.image_id AND i.width IS NOT NULL AND im.width IS NULL
    RETURNING im.id
),
vectors AS (
    INSERT INTO pgclip.embeddings (image_id, model_id, embedding)
    SELECT o.image_id, o.model_id, i.embedding FROM owned o JOIN input i ON i.job_id = o.id
    ON CONFLICT (image_id, model_id) DO UPDATE SET embedding = EXCLUDED.embedding, created_at = now()
    RETURNING image_id
),
thumbnails AS (
    INSERT INTO pgclip.thumbnails (image_id, width, height, data)
    SELECT o.image_id, i.thumb_width, i.thumb_height, i.thumb
    FROM owned o JOIN input i ON i.job_id = o.id
    WHERE i.thumb IS NOT NULL
    ON CONFLICT (image_id) DO UPDATE SET width = EXCLUDED.width, height = EXCLUDED.height, data = EXCLUDED.data
    RETURNING image_id
)
SELECT id FROM owned;

-- fail --
-- Permanent failures (not an image, truncated, too many pixels): failed at once,
-- with the reason kept. Fenced on ownership like complete.
UPDATE pgclip.embedding_jobs AS j
SET state = 'failed', last_error = t.error, lease_until = NULL, locked_by = NULL, updated_at = now()
FROM unnest(%(job_ids)s::bigint[], %(errors)s::text[]) AS t(job_id, error)
WHERE j.id = t.job_id AND j.locked_by = %(worker)s AND j.state = 'leased'
RETURNING j.id;

-- retry_later --
-- Transient failures (database hiccup, out of memory): back to pending after an
-- exponential backoff, or failed once the attempts are spent.
UPDATE pgclip.embedding_jobs AS j
SET state       = CASE WHEN j.attempts >= %(max_attempts)s THEN 'failed' ELSE 'pending' END,
    run_after   = now() + make_interval(secs => least(%(backoff_cap)s, %(backoff_base)s * 2 ^ (j.attempts - 1))),
    last_error  = t.error,
    lease_until = NULL, locked_by = NULL, updated_at = now()
FROM unnest(%(job_ids)s::bigint[], %(errors)s::text[]) AS t(job_id, error)
WHERE j.id = t.job_id AND j.locked_by = %(worker)s AND j.state = 'leased'
RETURNING j.id, j.state;

-- release --
-- Give back jobs claimed but not finished (a worker stopping: batches not started,
-- or cut short by a second signal): pending again, and the attempt counted at
-- claim is returned, since the image is not at fault.
UPDATE pgclip.embedding_jobs
SET state = 'pending', attempts = greatest(attempts - 1, 0), lease_until = NULL, locked_by = NULL,
    run_after = now(), updated_at = now()
WHERE id = ANY(%(job_ids)s::bigint[]) AND locked_by = %(worker)s AND state = 'leased'
RETURNING id;

-- release_strays --
-- Give back jobs leased to this worker that it does not know it holds: a claim
-- that committed while its answer was lost with the connection, or a completion
-- that the server's crash recovery undid. Run by the claiming thread right after
-- it reconnects (before it claims again, so nothing in flight is mistaken for a
-- stray). Nothing was tried, so the attempt is returned: an outage burns none.
-- The first three conditions are the claim index's (a leased job's lease_until).
UPDATE pgclip.embedding_jobs
SET state = 'pending', attempts = greatest(attempts - 1, 0), lease_until = NULL, locked_by = NULL,
    run_after = now(), updated_at = now()
WHERE model_id = %(model_id)s AND state IN ('pending', 'leased') AND COALESCE(lease_until, run_after) > now()
  AND state = 'leased' AND locked_by = %(worker)s AND id <> ALL(%(held)s::bigint[])
RETURNING id;

-- orphaned_workers --
-- Workers that hold unexpired leases but have no open session. Every connection
-- of a worker carries application_name `pgclip-worker[<its id>]`, and
-- pg_stat_activity shows application_name to every role, so a worker process
-- that died (kill -9, OOM kill, crash) shows up here as soon as the server has
-- closed its sessions, a lease sooner than expiry would tell. The caller reaps
-- only the workers it saw here on two checks some seconds apart, and not just
-- after its own reconnection: after a server restart every session is gone for
-- a moment, including those of live workers that are reconnecting.
-- `model_id IN (...)` and the next two conditions let the claim index serve.
SELECT DISTINCT j.locked_by AS worker
FROM pgclip.embedding_jobs j
WHERE j.model_id IN (SELECT id FROM pgclip.models)
  AND j.state IN ('pending', 'leased') AND COALESCE(j.lease_until, j.run_after) > now()
  AND j.state = 'leased'
  AND NOT EXISTS (
      SELECT 1 FROM pg_stat_activity a WHERE a.application_name = 'pgclip-worker[' || j.locked_by || ']');

-- server_uptime --
-- Seconds since the server (re)started: a worker whose first connection comes just
-- after a restart holds off reaping, as one that reconnected does (see orphaned_workers).
SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8 AS seconds;

-- reap --
-- Expire the leases of dead workers (confirmed by the caller, and checked again
-- here in the same statement): the job becomes claimable at once and the normal
-- claim takes it, counting the attempt, so a job that kills every worker that
-- touches it still ends failed. The lease is set to expire when the job first
-- became claimable (run_after), so it keeps its place at the head of the queue.
-- Nothing else changes: if the "dead" worker was alive after all and writes before
-- anyone re-claims the job, its write is still accepted (same ownership fence).
UPDATE pgclip.embedding_jobs AS j
SET lease_until = least(j.run_after, now()), updated_at = now()
WHERE j.model_id IN (SELECT id FROM pgclip.models)
  AND j.state IN ('pending', 'leased') AND COALESCE(j.lease_until, j.run_after) > now()
  AND j.state = 'leased' AND j.locked_by = ANY(%(workers)s::text[])
  AND NOT EXISTS (
      SELECT 1 FROM pg_stat_activity a WHERE a.application_name = 'pgclip-worker[' || j.locked_by || ']')
RETURNING j.id, j.model_id, j.locked_by AS worker;

-- retry_failed --
-- Re-queue failed jobs (after fixing the cause) with fresh attempts; skipped
-- where the image already has an open job for the model.
UPDATE pgclip.embedding_jobs AS j
SET state = 'pending', attempts = 0, run_after = now(), updated_at = now()
WHERE j.state = 'failed'
  AND (%(model_id)s::int IS NULL OR j.model_id = %(model_id)s::int)
  AND NOT EXISTS (
      SELECT 1 FROM pgclip.embedding_jobs o
      WHERE o.image_id = j.image_id AND o.model_id = j.model_id AND o.state IN ('pending', 'leased'))
RETURNING j.id;

-- pending_count --
-- Work a worker could still get: used by `pgclip worker --until-empty`.
SELECT count(*) AS claimable,
       count(*) FILTER (WHERE state = 'leased') AS leased
FROM pgclip.embedding_jobs
WHERE model_id = %(model_id)s AND state IN ('pending', 'leased');

-- latest_state --
-- The state of an image's newest job for a model (None: never queued for it).
SELECT state FROM pgclip.embedding_jobs
WHERE image_id = %(image_id)s AND model_id = %(model_id)s
ORDER BY id DESC LIMIT 1;

-- status_counts --
-- Jobs per model and state, with the newest activity and the oldest pending job.
SELECT m.name AS model, m.pretrained, m.state AS model_state, j.state, count(j.id) AS jobs,
       min(j.enqueued_at) FILTER (WHERE j.state = 'pending') AS oldest_pending
FROM pgclip.models m
LEFT JOIN pgclip.embedding_jobs j ON j.model_id = m.id
GROUP BY m.id, m.name, m.pretrained, m.state, j.state
ORDER BY m.id, j.state;

-- status_throughput --
-- Jobs finished in the last minute, per model.
SELECT m.name AS model, count(*) AS done_last_minute
FROM pgclip.embedding_jobs j JOIN pgclip.models m ON m.id = j.model_id
WHERE j.state = 'done' AND j.updated_at > now() - interval '1 minute'
GROUP BY m.name;

-- status_failures --
-- The most recent failures with their reasons.
SELECT j.id AS job_id, j.image_id, i.source, m.name AS model, j.attempts, j.last_error, j.updated_at
FROM pgclip.embedding_jobs j
JOIN pgclip.images i ON i.id = j.image_id
JOIN pgclip.models m ON m.id = j.model_id
WHERE j.state = 'failed'
ORDER BY j.updated_at DESC, j.id DESC
LIMIT %(limit)s;
