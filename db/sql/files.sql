-- Folders kept in sync (`pgclip sync`, `pgclip search --in`): which file on disk is which image.
-- Sections start with `-- name --`; pgclip.db.queries loads them by name.
--
-- A folder's files are the rows whose path lies in ["<folder>/", "<folder>0"): the path
-- column sorts bytewise (COLLATE "C") and '0' is the byte after '/', so that range holds
-- exactly the paths under the folder, whole components only (/a/b holds /a/b/c.jpg, never
-- /a/bc.jpg), and it is one range scan of files_path_idx. search.sql's folder filter is
-- the same range. %(folder)s is the folder without its trailing '/' ('' for the root).
--
-- A row points at an image (a picture), at a video (whose frames are its images), or says
-- why the file could not be stored. An image or video "came in through sync" (owns_image)
-- when a sync stored it; only such a one is deleted with the last file row that references
-- it. An upload or a plain ingest whose bytes a synced file also has is never deleted.
-- The folder's images, where a statement needs them, are the pictures' images and the
-- videos' frames of its present (not missing) rows.

-- lock --
-- Syncs take turns (a `sync --watch` and a `search --in` of overlapping folders): each
-- plans from rows that no other sync is changing. Session-level: held across the sync's
-- transactions, released by unlock or when the connection ends.
SELECT pg_advisory_lock(%(key)s);

-- unlock --
SELECT pg_advisory_unlock(%(key)s);

-- under --
-- Every file row under a folder, missing ones too.
SELECT id, path, path_bytes, image_id, video_id, owns_image, size, mtime_ns, sha256, problem, missing_since
FROM pgclip.files
WHERE path >= %(folder)s::text || '/' AND path < %(folder)s::text || '0'
ORDER BY path;

-- images_by_sha256 --
-- Which of these contents are stored already (as whose image).
SELECT sha256, id FROM pgclip.images WHERE sha256 = ANY(%(sha256)s::text[]);

-- videos_by_sha256 --
SELECT sha256, id FROM pgclip.videos WHERE sha256 = ANY(%(sha256)s::text[]);

-- shared --
-- Of these images, those that more than one file row references.
SELECT image_id FROM pgclip.files
WHERE image_id = ANY(%(image_ids)s::bigint[])
GROUP BY image_id HAVING count(*) > 1;

-- add --
-- Rows for files seen for the first time: the image their bytes are, or the problem that
-- kept them out (then the next sync skips them until their size or mtime changes).
INSERT INTO pgclip.files (path, path_bytes, image_id, video_id, owns_image, size, mtime_ns, sha256, problem)
SELECT *
FROM unnest(%(path)s::text[], %(path_bytes)s::bytea[], %(image_id)s::bigint[], %(video_id)s::bigint[],
            %(owns_image)s::boolean[], %(size)s::bigint[], %(mtime_ns)s::bigint[], %(sha256)s::text[],
            %(problem)s::text[]);

-- update --
-- A row takes what the scan found: new size and mtime (touched, or back after missing), a
-- new path (moved), a new image (bytes changed). It is no longer missing.
UPDATE pgclip.files AS f
SET path = t.path, path_bytes = t.path_bytes, image_id = t.image_id, video_id = t.video_id,
    owns_image = t.owns_image, size = t.size, mtime_ns = t.mtime_ns, sha256 = t.sha256, problem = t.problem,
    synced_at = now(), missing_since = NULL
FROM unnest(%(id)s::bigint[], %(path)s::text[], %(path_bytes)s::bytea[], %(image_id)s::bigint[],
            %(video_id)s::bigint[], %(owns_image)s::boolean[], %(size)s::bigint[], %(mtime_ns)s::bigint[],
            %(sha256)s::text[], %(problem)s::text[])
     AS t(id, path, path_bytes, image_id, video_id, owns_image, size, mtime_ns, sha256, problem)
WHERE f.id = t.id;

-- rename_sources --
-- A moved file's image shows its new path where it showed the old one (its source was the file).
UPDATE pgclip.images AS i
SET source = t.new_path, source_bytes = t.new_bytes
FROM unnest(%(image_id)s::bigint[], %(old_path)s::text[], %(new_path)s::text[], %(new_bytes)s::bytea[])
     AS t(image_id, old_path, new_path, new_bytes)
WHERE i.id = t.image_id AND i.source = t.old_path;

-- rename_video_sources --
UPDATE pgclip.videos AS v
SET source = t.new_path, source_bytes = t.new_bytes
FROM unnest(%(video_id)s::bigint[], %(old_path)s::text[], %(new_path)s::text[], %(new_bytes)s::bytea[])
     AS t(video_id, old_path, new_path, new_bytes)
WHERE v.id = t.video_id AND v.source = t.old_path;

-- mark_missing --
-- --keep-missing: the rows stay, with the moment they were first found gone; the folder
-- filter leaves them out.
UPDATE pgclip.files SET missing_since = now()
WHERE id = ANY(%(ids)s::bigint[]) AND missing_since IS NULL;

-- remove --
DELETE FROM pgclip.files WHERE id = ANY(%(ids)s::bigint[]);

-- release_images --
-- Images that file rows let go of (the rows went, or point elsewhere now) and that came in
-- through sync: one that another file row still references passes to it (that row owns it
-- now); one that none does is deleted, and with it through ON DELETE CASCADE its bytes,
-- thumbnail, captions, vectors and queue rows. Both parts read the rows as they were
-- before this statement, which is what both need.
WITH adopted AS (
    UPDATE pgclip.files SET owns_image = true
    WHERE image_id = ANY(%(image_ids)s::bigint[]) AND NOT owns_image
)
DELETE FROM pgclip.images AS i
WHERE i.id = ANY(%(image_ids)s::bigint[])
  AND NOT EXISTS (SELECT 1 FROM pgclip.files f WHERE f.image_id = i.id)
RETURNING i.id;

-- release_videos --
-- The same for videos: deleting one deletes its frames (and all that hangs off them).
WITH adopted AS (
    UPDATE pgclip.files SET owns_image = true
    WHERE video_id = ANY(%(video_ids)s::bigint[]) AND NOT owns_image
)
DELETE FROM pgclip.videos AS v
WHERE v.id = ANY(%(video_ids)s::bigint[])
  AND NOT EXISTS (SELECT 1 FROM pgclip.files f WHERE f.video_id = v.id)
RETURNING v.id;

-- replace_image --
-- A synced file's bytes changed and its image is that file's alone: the image keeps its id,
-- captions and metadata (the new file's EXIF facts merged in) and takes the new bytes' facts.
UPDATE pgclip.images
SET sha256 = %(sha256)s, byte_size = %(byte_size)s, width = %(width)s, height = %(height)s, format = %(format)s,
    mime = %(mime)s, taken_at = coalesce(%(taken_at)s, taken_at), metadata = metadata || %(exif)s::jsonb
WHERE id = %(image_id)s;

-- replace_blob --
INSERT INTO pgclip.image_blobs (image_id, data) VALUES (%(image_id)s, %(data)s)
ON CONFLICT (image_id) DO UPDATE SET data = EXCLUDED.data;

-- drop_thumbnails --
-- Made from the old bytes; the worker that embeds the new ones makes the next.
DELETE FROM pgclip.thumbnails WHERE image_id = ANY(%(image_ids)s::bigint[]);

-- drop_vectors --
-- Every model's vector of the old bytes.
DELETE FROM pgclip.embeddings WHERE image_id = ANY(%(image_ids)s::bigint[]);

-- requeue --
-- The images' open jobs start over, and every model in use (not retired) gets one. A worker
-- still holding one of those jobs has decoded the old bytes: it no longer owns the job
-- (locked_by is cleared), so its completion, fenced on ownership, writes nothing.
WITH reset AS (
    UPDATE pgclip.embedding_jobs
    SET state = 'pending', attempts = 0, locked_by = NULL, lease_until = NULL, run_after = now(),
        last_error = NULL, updated_at = now()
    WHERE image_id = ANY(%(image_ids)s::bigint[]) AND state IN ('pending', 'leased')
    RETURNING image_id, model_id
)
INSERT INTO pgclip.embedding_jobs (image_id, model_id)
SELECT t.image_id, m.id
FROM unnest(%(image_ids)s::bigint[]) AS t(image_id) CROSS JOIN pgclip.models m
WHERE m.state <> 'retired'
  AND NOT EXISTS (SELECT 1 FROM reset r WHERE r.image_id = t.image_id AND r.model_id = m.id)
ON CONFLICT (image_id, model_id) WHERE state IN ('pending', 'leased') DO NOTHING;

-- models_in_use --
SELECT id FROM pgclip.models WHERE state <> 'retired' ORDER BY id;

-- enqueue_folder --
-- Images of the folder's present files that the model has neither a vector nor ever a job
-- for (stored while another model was configured): queued, so that a search of the folder
-- covers them all. Images with a failed job are left to `pgclip retry-failed`.
INSERT INTO pgclip.embedding_jobs (image_id, model_id)
SELECT f.image_id, %(model_id)s
FROM (SELECT DISTINCT f.image_id FROM pgclip.file_images f
      WHERE f.path >= %(folder)s::text || '/' AND f.path < %(folder)s::text || '0'
        AND f.missing_since IS NULL) AS f
WHERE NOT EXISTS (SELECT 1 FROM pgclip.embeddings e WHERE e.image_id = f.image_id AND e.model_id = %(model_id)s)
  AND NOT EXISTS (SELECT 1 FROM pgclip.embedding_jobs j WHERE j.image_id = f.image_id AND j.model_id = %(model_id)s)
ON CONFLICT (image_id, model_id) WHERE state IN ('pending', 'leased') DO NOTHING
RETURNING id;

-- prioritise --
-- The folder's jobs that are claimable now go to the head of the model's queue (a claim
-- takes the earliest run_after first), so that they are embedded before an older backlog,
-- by the sync's own worker or by any other. A retry's backoff (run_after ahead) is kept.
UPDATE pgclip.embedding_jobs AS j
SET run_after = 'epoch'
FROM (SELECT DISTINCT f.image_id FROM pgclip.file_images f
      WHERE f.path >= %(folder)s::text || '/' AND f.path < %(folder)s::text || '0'
        AND f.missing_since IS NULL) AS f
WHERE j.image_id = f.image_id AND j.model_id = %(model_id)s AND j.state = 'pending' AND j.run_after <= now();

-- progress --
-- The folder's present images the model has open jobs for (still to embed), and those whose
-- embedding failed (no vector, no open job, a failed one).
SELECT count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM pgclip.embedding_jobs j
           WHERE j.image_id = f.image_id AND j.model_id = %(model_id)s AND j.state IN ('pending', 'leased')))
           AS open,
       count(*) FILTER (WHERE NOT EXISTS (
                               SELECT 1 FROM pgclip.embeddings e
                               WHERE e.image_id = f.image_id AND e.model_id = %(model_id)s)
                          AND NOT EXISTS (
                               SELECT 1 FROM pgclip.embedding_jobs j
                               WHERE j.image_id = f.image_id AND j.model_id = %(model_id)s
                                 AND j.state IN ('pending', 'leased'))
                          AND EXISTS (
                               SELECT 1 FROM pgclip.embedding_jobs j
                               WHERE j.image_id = f.image_id AND j.model_id = %(model_id)s AND j.state = 'failed'))
           AS failed
FROM (SELECT DISTINCT f.image_id FROM pgclip.file_images f
      WHERE f.path >= %(folder)s::text || '/' AND f.path < %(folder)s::text || '0'
        AND f.missing_since IS NULL) AS f;
