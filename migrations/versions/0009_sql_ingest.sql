-- Images added with SQL alone: the source of truth for what an ETL job that speaks only
-- SQL calls. Migrations apply frozen copies of this file (migrations/versions/NNNN_*.sql);
-- tests/integration/test_sql_ingest.py fails when the functions in a migrated database
-- differ from what is written here, so a change here needs a new migration that applies
-- a copy of the changed file.
--
-- The path: rows go into pgclip.image_inbox (INSERT, INSERT ... SELECT, COPY, or
-- pgclip.add_image for one image); one statement-level trigger turns everything a
-- statement brought into images, bytes, captions and queue rows, in a handful of
-- set-based statements whatever the row count, and empties the inbox of those rows.
-- SQL cannot decode an image, so width, height, format, mime, taken_at and the EXIF
-- facts stay NULL until the worker that embeds the image fills them in (queue.sql,
-- complete); bytes that do not decode end `failed` with the worker's reason, as for
-- any other ingest. The table (with its sha256 column generated from the bytes, so
-- each image is hashed once, as it arrives), the role and the grants are the
-- migration's (0009_sql_ingest.py).

-- take_inbox --
CREATE OR REPLACE FUNCTION pgclip.take_inbox() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
-- Runs as the schema's owner, so that pgclip_writer needs INSERT on the inbox and
-- nothing else; every name is schema-qualified and search_path is fixed, so a caller
-- cannot slip its own objects in. Each statement below is set-based over the
-- statement's rows (the transition table new_rows) and takes a fresh snapshot, so an
-- image a concurrent transaction stored meanwhile is found, not duplicated.
DECLARE
    woken int[];  -- the models that got jobs
BEGIN
    -- New images get a row (the first of a statement's copies of the same bytes gives its
    -- source and metadata); an image already stored gets the given metadata merged in,
    -- new keys winning, as `pgclip ingest` does with a manifest.
    INSERT INTO pgclip.images AS i (sha256, source, byte_size, metadata)
    SELECT DISTINCT ON (n.sha256) n.sha256, n.source, octet_length(n.data), n.metadata
    FROM new_rows n
    ORDER BY n.sha256, n.id
    ON CONFLICT (sha256) DO UPDATE SET metadata = i.metadata || EXCLUDED.metadata
    WHERE NOT i.metadata @> EXCLUDED.metadata;

    -- The bytes, for new images and for known ones stored without them (rows brought by
    -- `pgclip import`); an image that has its bytes keeps them.
    INSERT INTO pgclip.image_blobs (image_id, data)
    SELECT i.id, n.data FROM new_rows n JOIN pgclip.images i ON i.sha256 = n.sha256
    ON CONFLICT (image_id) DO NOTHING;

    -- Captions that are new for their image (unique by md5 of the text); empty ones are
    -- no captions. They are parsed with the captions table's default configuration.
    INSERT INTO pgclip.captions (image_id, text)
    SELECT i.id, c.text
    FROM new_rows n JOIN pgclip.images i ON i.sha256 = n.sha256
    CROSS JOIN LATERAL unnest(n.captions) AS c(text)
    WHERE length(c.text) > 0
    ON CONFLICT (image_id, md5(text)) DO NOTHING;

    -- Queue each image for the active model and every model being built (`pgclip reembed`),
    -- unless it has that model's vector or ever had a job for it (done or failed are left
    -- alone, as ingest leaves them). One NOTIFY per model wakes its workers at commit.
    WITH queued AS (
        INSERT INTO pgclip.embedding_jobs (image_id, model_id)
        SELECT DISTINCT i.id, m.id
        FROM new_rows n
        JOIN pgclip.images i ON i.sha256 = n.sha256
        CROSS JOIN pgclip.models m
        WHERE m.state IN ('active', 'building')
          AND NOT EXISTS (SELECT 1 FROM pgclip.embedding_jobs j WHERE j.image_id = i.id AND j.model_id = m.id)
          AND NOT EXISTS (SELECT 1 FROM pgclip.embeddings e WHERE e.image_id = i.id AND e.model_id = m.id)
        ON CONFLICT (image_id, model_id) WHERE state IN ('pending', 'leased') DO NOTHING
        RETURNING model_id
    )
    SELECT array_agg(DISTINCT q.model_id) INTO woken FROM queued q;
    PERFORM pg_notify('pgclip_jobs', w::text) FROM unnest(woken) AS w;

    -- The inbox is a doorway, not a store: the statement's rows leave it (by id, so rows
    -- that came in while the trigger was disabled stay for an operator to see).
    DELETE FROM pgclip.image_inbox b USING new_rows n WHERE b.id = n.id;
    RETURN NULL;
END
$$;

-- image_inbox_take --
CREATE OR REPLACE TRIGGER image_inbox_take
AFTER INSERT ON pgclip.image_inbox
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION pgclip.take_inbox();

-- add_image --
CREATE OR REPLACE FUNCTION pgclip.add_image(data bytea, source text DEFAULT NULL,
                                            captions text[] DEFAULT '{}', metadata jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
-- One image through the inbox (the same path as a COPY), returning its id: a new image's,
-- or the stored one's when these bytes are known (its missing captions and metadata
-- added). NULL captions or metadata mean none. SECURITY DEFINER only to read the id back:
-- pgclip_writer may not read pgclip.images.
DECLARE
    digest text;
BEGIN
    INSERT INTO pgclip.image_inbox (data, source, captions, metadata)
    VALUES (add_image.data, add_image.source, COALESCE(add_image.captions, '{}'),
            COALESCE(add_image.metadata, '{}'))
    RETURNING sha256 INTO digest;
    RETURN (SELECT i.id FROM pgclip.images i WHERE i.sha256 = digest);
END
$$;
