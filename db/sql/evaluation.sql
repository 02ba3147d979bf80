-- What `pgclip eval` reads and writes besides searches (pgclip.evaluate's captions and classes protocols).
-- Sections start with `-- name --`; pgclip.db.queries loads them by name.
-- corpus_size and passing_filter take the search's own filter as a WHERE clause
-- over images i (written by pgclip.filter_sql, values quoted by PostgreSQL), so an
-- evaluation filters exactly as a search does; pgclip.db.evaluation composes it in.

-- sources --
-- Every image with a source path, and whether the model has its vector: the
-- captions protocol matches them to a manifest's entries by path or file name.
SELECT i.id AS image_id, i.source,
       EXISTS (SELECT 1 FROM pgclip.embeddings e WHERE e.image_id = i.id AND e.model_id = %(model_id)s) AS embedded
FROM pgclip.images i WHERE i.source IS NOT NULL;

-- filter_clause --
-- Raises the search's own SQLSTATEs for a bad filter (22xxx: invalid input).
SELECT pgclip.filter_sql(%(filters)s);

-- corpus_size --
-- The images a filtered search ranks: those with the model's vector that pass the filter.
SELECT count(*) FROM pgclip.images i JOIN pgclip.embeddings e ON e.image_id = i.id
WHERE e.model_id = {model_id} AND ({where});

-- passing_filter --
SELECT i.id FROM pgclip.images i WHERE i.id = ANY(%(image_ids)s::bigint[]) AND ({where});

-- dataset_tags --
-- The dataset and class an image is tagged with now, by content hash: tells
-- which of a dataset's files an earlier run tagged differently.
SELECT sha256, metadata->>'eval_dataset' AS dataset, metadata->>'class' AS label
FROM pgclip.images WHERE sha256 = ANY(%(sha256)s::text[]);

-- dataset_images --
-- A dataset's images as stored (their tags may have changed since the ingest), and
-- whether the model has their vector.
SELECT i.id AS image_id, i.sha256, i.metadata->>'eval_dataset' AS dataset, i.metadata->>'class' AS label,
       EXISTS (SELECT 1 FROM pgclip.embeddings e WHERE e.image_id = i.id AND e.model_id = %(model_id)s) AS embedded
FROM pgclip.images i WHERE i.sha256 = ANY(%(sha256)s::text[]) ORDER BY i.id;

-- stale_images --
-- Images tagged with the dataset by an earlier run that are not part of it now:
-- the leave-one-out queries exclude them.
SELECT id FROM pgclip.images
WHERE metadata @> jsonb_build_object('eval_dataset', %(dataset)s::text) AND NOT (id = ANY(%(current)s::bigint[]))
ORDER BY id;

-- tag_set --
-- Make an evaluation set exactly these images: each gets the set's name under the
-- key (other metadata untouched); images that carried the name before but are not
-- among them lose the key; rows already right are not written. Returns, per row
-- written, whether it is a member now and the set it was in before.
WITH target AS (
    SELECT i.id, i.id = ANY(%(image_ids)s::bigint[]) AS member, i.metadata->>%(key)s::text AS before
    FROM pgclip.images i
    WHERE i.id = ANY(%(image_ids)s::bigint[]) OR i.metadata @> jsonb_build_object(%(key)s::text, %(name)s::text)
)
UPDATE pgclip.images i
SET metadata = CASE WHEN t.member THEN i.metadata || jsonb_build_object(%(key)s::text, %(name)s::text)
                    ELSE i.metadata - %(key)s::text END
FROM target t
WHERE i.id = t.id AND t.before IS DISTINCT FROM (CASE WHEN t.member THEN %(name)s::text END)
RETURNING t.member, t.before;

-- cached_texts --
-- The query cache's vectors of these texts under the model (db/text_vectors.py
-- reads one text at a time): an evaluation set's captions are looked up at once.
SELECT v.text, v.embedding FROM pgclip.text_vectors v
WHERE v.model_id = %(model_id)s
  AND md5(v.text) = ANY(ARRAY(SELECT md5(t) FROM unnest(%(texts)s::text[]) AS t))
  AND v.text = ANY(%(texts)s::text[]);
