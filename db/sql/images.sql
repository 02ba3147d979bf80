-- Writing images, their bytes, captions and metadata (ingest and upload).
-- Sections start with `-- name --`; pgclip.db.queries loads them by name.

-- insert_images --
-- Insert a batch of probed images; an image whose bytes are already stored
-- (same sha256) is skipped here and looked up by the next statement.
-- source_bytes is null except for names that are not UTF-8 (see migration 0005).
INSERT INTO pgclip.images (sha256, source, source_bytes, byte_size, width, height, format, mime, taken_at, metadata)
SELECT *
FROM unnest(%(sha256)s::text[], %(source)s::text[], %(source_bytes)s::bytea[], %(byte_size)s::bigint[],
            %(width)s::int[], %(height)s::int[], %(format)s::text[], %(mime)s::text[],
            %(taken_at)s::timestamptz[], %(metadata)s::jsonb[])
ON CONFLICT (sha256) DO NOTHING
RETURNING id, sha256;

-- ids_by_sha256 --
SELECT id, sha256 FROM pgclip.images WHERE sha256 = ANY(%(sha256)s::text[]);

-- without_bytes --
-- Which of these images are stored without their bytes (rows brought by `pgclip import`).
SELECT i.id FROM pgclip.images i
WHERE i.id = ANY(%(image_ids)s::bigint[])
  AND NOT EXISTS (SELECT 1 FROM pgclip.image_blobs b WHERE b.image_id = i.id);

-- insert_blob --
INSERT INTO pgclip.image_blobs (image_id, data) VALUES (%(image_id)s, %(data)s)
ON CONFLICT (image_id) DO NOTHING;

-- merge_metadata --
-- Metadata given again for a known image is merged in (a key given again takes the new
-- value, keys not given stay); the
-- vectors are in another table, so this never touches the HNSW index.
UPDATE pgclip.images AS i
SET metadata = i.metadata || t.metadata
FROM unnest(%(image_ids)s::bigint[], %(metadata)s::jsonb[]) AS t(image_id, metadata)
WHERE i.id = t.image_id AND NOT i.metadata @> t.metadata;

-- add_captions --
-- Captions are unique per image (by md5 of the text), so re-ingesting a
-- manifest adds only the captions that are new.
INSERT INTO pgclip.captions (image_id, text, ts_config)
SELECT image_id, text, %(ts_config)s::regconfig
FROM unnest(%(image_ids)s::bigint[], %(texts)s::text[]) AS t(image_id, text)
ON CONFLICT (image_id, md5(text)) DO NOTHING
RETURNING id;

-- set_metadata --
-- Replace or merge an image's metadata. Vectors live in another table, so an
-- edit never touches the HNSW index (and never rewrites a vector row).
UPDATE pgclip.images
SET metadata = CASE WHEN %(replace)s THEN %(metadata)s::jsonb ELSE metadata || %(metadata)s::jsonb END
WHERE id = %(image_id)s
RETURNING id;

-- unset_metadata --
UPDATE pgclip.images SET metadata = metadata - %(keys)s::text[] WHERE id = %(image_id)s RETURNING id;

-- set_taken_at --
UPDATE pgclip.images SET taken_at = %(taken_at)s WHERE id = %(image_id)s RETURNING id;

-- remove_captions --
DELETE FROM pgclip.captions WHERE image_id = %(image_id)s AND id = ANY(%(caption_ids)s::bigint[]) RETURNING id;

-- delete_images --
-- Everything that hangs off an image (bytes, thumbnail, captions, vectors, queue
-- rows) goes with it through ON DELETE CASCADE, in this one statement.
DELETE FROM pgclip.images WHERE id = ANY(%(image_ids)s::bigint[]) RETURNING id;

-- lock_image --
-- An edit locks the image's row first: a concurrent delete waits for it (or it finds nothing).
SELECT 1 FROM pgclip.images WHERE id = %(image_id)s FOR UPDATE;

-- exists --
SELECT EXISTS (SELECT 1 FROM pgclip.images WHERE id = %(image_id)s);

-- known_ids --
SELECT id FROM pgclip.images WHERE id = ANY(%(image_ids)s::bigint[]);

-- detail --
-- One image as its page shows it, for one model: whether that model's vector
-- exists, and the state and last error of the image's newest job for it.
SELECT i.id, i.sha256, i.source, i.width, i.height, i.format, i.mime, i.byte_size, i.taken_at,
       i.created_at, i.metadata,
       EXISTS (SELECT 1 FROM pgclip.embeddings e WHERE e.image_id = i.id AND e.model_id = %(model_id)s)
           AS embedded,
       j.state AS queue_state,
       j.last_error,
       EXISTS (SELECT 1 FROM pgclip.thumbnails t WHERE t.image_id = i.id) AS has_thumbnail
FROM pgclip.images i
LEFT JOIN LATERAL (
    SELECT state, last_error FROM pgclip.embedding_jobs
    WHERE image_id = i.id AND model_id = %(model_id)s
    ORDER BY id DESC LIMIT 1
) j ON true
WHERE i.id = %(image_id)s;

-- captions --
SELECT id, text FROM pgclip.captions WHERE image_id = %(image_id)s ORDER BY id;

-- original --
-- The bytes as uploaded, with the MIME type they were probed as and their sha256 (which
-- changes when `pgclip sync` finds the file edited: the image keeps its id, takes new bytes).
SELECT b.data, i.mime, i.sha256 FROM pgclip.image_blobs b JOIN pgclip.images i ON i.id = b.image_id
WHERE b.image_id = %(image_id)s;

-- thumbnail --
-- Made by the worker that embeds the image: none until then.
SELECT data, mime FROM pgclip.thumbnails WHERE image_id = %(image_id)s;

-- metadata --
SELECT metadata, taken_at FROM pgclip.images WHERE id = %(image_id)s;

-- sources --
SELECT id, source FROM pgclip.images WHERE id = ANY(%(image_ids)s::bigint[]);

-- blobs --
-- The bytes a worker decodes, fetched after its claim has committed (no row locks held).
SELECT image_id, data FROM pgclip.image_blobs WHERE image_id = ANY(%(image_ids)s::bigint[]);

-- decode_state --
-- Per image a worker is about to decode: added with SQL and not yet read by a decoder (its
-- size and format are null; the worker that embeds it fills its row in, queue.sql complete),
-- and whether it has its thumbnail (a re-embed for another model makes none again).
SELECT i.id, i.width IS NULL AS unprobed,
       EXISTS (SELECT 1 FROM pgclip.thumbnails t WHERE t.image_id = i.id) AS thumbnailed
FROM pgclip.images i
WHERE i.id = ANY(%(image_ids)s::bigint[]);
