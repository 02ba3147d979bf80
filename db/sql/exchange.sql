-- Export and import (`pgclip export` / `pgclip import`): one model's vectors with the
-- images, captions and metadata around them, to and from files (application/exchange.py).
-- Sections start with `-- name --`; pgclip.db.queries loads them by name.
-- Images are matched by sha256 (the ids are each database's own); image bytes never travel.

-- snapshot --
-- The first statement of an export's transaction: every statement after it sees the
-- same snapshot, so the count written into the manifest (and each part's size, fixed
-- before its rows are read) is exactly the number of rows the cursor then returns,
-- whatever ingest, workers and deletes do meanwhile. Read only: an export changes nothing.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;

-- export_counts --
-- How many images have the model's vector (the rows exported), and how many do not yet.
SELECT (SELECT count(*) FROM pgclip.embeddings WHERE model_id = %(model_id)s) AS vectors,
       (SELECT count(*) FROM pgclip.images) AS images;

-- export_rows --
-- One row per vector of the model, in image id order (the primary key of embeddings
-- serves it), with everything a search shows about the image: its fields, metadata,
-- captions in the order they were added, and (when asked) its thumbnail. Read through
-- a server-side cursor, a batch at a time, never the whole collection at once.
SELECT i.id AS image_id, i.sha256, i.source, i.source_bytes, i.byte_size, i.width, i.height,
       i.format, i.mime, i.taken_at, i.metadata,
       COALESCE((SELECT array_agg(c.text ORDER BY c.id) FROM pgclip.captions c WHERE c.image_id = i.id),
                '{}'::text[]) AS captions,
       e.embedding,
       t.data AS thumbnail, t.mime AS thumbnail_mime, t.width AS thumbnail_width, t.height AS thumbnail_height,
       i.video_ts, v.sha256 AS video_sha256, v.source AS video_source, v.source_bytes AS video_source_bytes,
       v.byte_size AS video_byte_size, v.mime AS video_mime, v.container AS video_container,
       v.duration_s AS video_duration_s, v.frame_interval_s AS video_frame_interval_s,
       v.width AS video_width, v.height AS video_height
FROM pgclip.embeddings e
JOIN pgclip.images i ON i.id = e.image_id
LEFT JOIN pgclip.thumbnails t ON %(thumbnails)s AND t.image_id = i.id
LEFT JOIN pgclip.videos v ON v.id = i.video_id
WHERE e.model_id = %(model_id)s
ORDER BY e.image_id;

-- export_shared --
-- The other videos each of these images is a frame of (pgclip.shared_frames: a frame two
-- videos share is stored once, owned by one), with the frame's time in each: an export
-- carries them so that a video whose frames are all another's (the same film in another
-- container) is not lost on import.
SELECT s.image_id, s.video_ts, v.sha256, v.source, v.source_bytes, v.byte_size, v.mime, v.container,
       v.duration_s, v.frame_interval_s, v.width, v.height
FROM pgclip.shared_frames s
JOIN pgclip.videos v ON v.id = s.video_id
WHERE s.image_id = ANY(%(image_ids)s::bigint[])
ORDER BY s.image_id, v.sha256;

-- import_images --
-- Images the database does not have yet (by sha256): new rows, in the order given, so
-- the new ids follow the exporting database's order. No bytes are stored with them
-- (image_blobs stays empty for these ids): a file never travels in an export.
INSERT INTO pgclip.images (sha256, source, source_bytes, byte_size, width, height, format, mime, taken_at, metadata)
SELECT *
FROM unnest(%(sha256)s::text[], %(source)s::text[], %(source_bytes)s::bytea[], %(byte_size)s::bigint[],
            %(width)s::int[], %(height)s::int[], %(format)s::text[], %(mime)s::text[],
            %(taken_at)s::timestamptz[], %(metadata)s::jsonb[])
ON CONFLICT (sha256) DO NOTHING
RETURNING id, sha256;

-- merge_images --
-- Images the database already had: it keeps every value of its own and gains only
-- what it lacks, the metadata keys it does not have and a taken_at where it has none
-- (`imported || stored`: on a shared key the stored value wins). Rows that would not
-- change are not rewritten. Returns every matched image's id, changed or not.
WITH matched AS (
    SELECT i.id, t.sha256, t.metadata, t.taken_at
    FROM unnest(%(sha256)s::text[], %(metadata)s::jsonb[], %(taken_at)s::timestamptz[])
         AS t(sha256, metadata, taken_at)
    JOIN pgclip.images i ON i.sha256 = t.sha256
    WHERE i.id <> ALL(%(new_ids)s::bigint[])
),
changed AS (
    UPDATE pgclip.images AS i
    SET metadata = m.metadata || i.metadata, taken_at = COALESCE(i.taken_at, m.taken_at)
    FROM matched m
    WHERE i.id = m.id
      AND ((m.metadata || i.metadata) <> i.metadata OR (i.taken_at IS NULL AND m.taken_at IS NOT NULL))
    RETURNING i.id
)
SELECT id, sha256 FROM matched;

-- import_videos --
-- The videos of the imported frames that the database does not have yet (by sha256), with
-- what describes them but no bytes (video_blobs stays empty for these ids, as image_blobs
-- does for imported images). Returns the new ones.
INSERT INTO pgclip.videos (sha256, source, source_bytes, byte_size, mime, container, duration_s,
                           frame_interval_s, width, height)
SELECT *
FROM unnest(%(sha256)s::text[], %(source)s::text[], %(source_bytes)s::bytea[], %(byte_size)s::bigint[],
            %(mime)s::text[], %(container)s::text[], %(duration_s)s::float8[], %(frame_interval_s)s::float8[],
            %(width)s::int[], %(height)s::int[])
ON CONFLICT (sha256) DO NOTHING
RETURNING id;

-- link_frames --
-- Each imported frame becomes a frame of its video at its time, unless the image already
-- belongs to a video (the database keeps what it has, as for every other value).
UPDATE pgclip.images AS i
SET video_id = v.id, video_ts = t.video_ts
FROM unnest(%(image_ids)s::bigint[], %(video_sha256)s::text[], %(video_ts)s::float8[])
     AS t(image_id, video_sha256, video_ts)
JOIN pgclip.videos v ON v.sha256 = t.video_sha256
WHERE i.id = t.image_id AND i.video_id IS NULL;

-- share_frames --
-- Every video an imported image is a frame of (its owner and those sharing it) that does
-- not own it here lists it as a shared frame at its time: the owner when the database's
-- image belongs to another video already (it keeps that), and the sharing ones always.
-- A link the database has already is kept as it is.
INSERT INTO pgclip.shared_frames (video_id, image_id, video_ts)
SELECT v.id, t.image_id, t.video_ts
FROM unnest(%(image_ids)s::bigint[], %(video_sha256)s::text[], %(video_ts)s::float8[])
     AS t(image_id, video_sha256, video_ts)
JOIN pgclip.videos v ON v.sha256 = t.video_sha256
JOIN pgclip.images i ON i.id = t.image_id
WHERE i.video_id IS DISTINCT FROM v.id
ON CONFLICT (video_id, image_id) DO NOTHING;

-- import_vectors --
-- The model's vectors, as they were exported (no re-embedding). An image that already
-- has a vector for the model keeps it; RETURNING names the images that got one here.
-- Sent in binary format, as the workers send theirs.
INSERT INTO pgclip.embeddings (image_id, model_id, embedding)
SELECT t.image_id, %(model_id)s, t.embedding
FROM unnest(%(image_ids)s::bigint[], %(vectors)b::vector[]) AS t(image_id, embedding)
ON CONFLICT (image_id, model_id) DO NOTHING
RETURNING image_id;

-- finish_jobs --
-- The images that just got their vector need no worker for this model: an open job
-- (pending, or leased to a worker, whose completion is then fenced out and writes
-- nothing) is marked done, and an image without one gets a done job, so that its
-- newest job says done and ingesting the same file again queues nothing.
WITH closed AS (
    UPDATE pgclip.embedding_jobs
    SET state = 'done', lease_until = NULL, locked_by = NULL, last_error = NULL, updated_at = now()
    WHERE model_id = %(model_id)s AND image_id = ANY(%(image_ids)s::bigint[]) AND state IN ('pending', 'leased')
    RETURNING image_id
),
added AS (
    INSERT INTO pgclip.embedding_jobs (image_id, model_id, state)
    SELECT t.image_id, %(model_id)s, 'done'
    FROM unnest(%(image_ids)s::bigint[]) AS t(image_id)
    WHERE t.image_id NOT IN (SELECT image_id FROM closed)
    RETURNING image_id
)
SELECT (SELECT count(*) FROM closed) AS closed, (SELECT count(*) FROM added) AS added;

-- import_thumbnails --
-- The exported thumbnails, so the page shows imported images; a thumbnail already
-- stored (made by a worker from the image's own bytes) is kept.
INSERT INTO pgclip.thumbnails (image_id, mime, width, height, data)
SELECT *
FROM unnest(%(image_ids)s::bigint[], %(mime)s::text[], %(width)s::int[], %(height)s::int[], %(data)s::bytea[])
ON CONFLICT (image_id) DO NOTHING;
