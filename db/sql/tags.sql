-- Zero-shot tags: each image's nearest label (by the stored vectors) written into its metadata.
-- Sections start with `-- name --`; pgclip.db.queries loads them by name.

-- tag --
-- One set-based statement over the stored vectors of one model: no image is decoded or
-- re-encoded, and only `images.metadata` is written, never `embeddings`, so the model's HNSW
-- index is untouched. Each embedded image gets the label whose vector is nearest (cosine; ties
-- go to the label given first); where that similarity reaches min_score, `key` and `key_score`
-- are merged into its metadata, otherwise both keys are removed, as they are from images that
-- carry them but have no vector under this model: after a run, the key holds this run's answer
-- and nothing stale. Rows whose metadata would not change are not written at all. With
-- write = false (a dry run) the UPDATE touches nothing and the counts are the same.
-- Returns one row per label, in the order given: the images tagged with it, the embedded
-- images left below min_score, and how many images this run changed.
WITH label AS (
    SELECT l.label, l.vec, l.n
    FROM unnest(%(labels)s::text[], %(vectors)s::vector[]) WITH ORDINALITY AS l(label, vec, n)
),
best AS (
    SELECT e.image_id, b.label, b.score
    FROM pgclip.embeddings e
    CROSS JOIN LATERAL (
        SELECT l.label, 1 - (e.embedding <=> l.vec) AS score
        FROM label l
        ORDER BY e.embedding <=> l.vec, l.n
        LIMIT 1
    ) b
    WHERE e.model_id = %(model_id)s
),
target AS (
    SELECT i.id,
           CASE WHEN b.score >= %(min_score)s
                THEN i.metadata || jsonb_build_object(%(key)s::text, b.label,
                                                      %(score_key)s::text, round(b.score::numeric, 4))
                ELSE i.metadata - %(key)s::text - %(score_key)s::text
           END AS metadata
    FROM pgclip.images i
    LEFT JOIN best b ON b.image_id = i.id
    WHERE b.image_id IS NOT NULL OR i.metadata ? %(key)s::text OR i.metadata ? %(score_key)s::text
),
written AS (
    UPDATE pgclip.images i
    SET metadata = t.metadata
    FROM target t
    WHERE %(write)s AND i.id = t.id AND i.metadata IS DISTINCT FROM t.metadata
    RETURNING i.id
),
counts AS (
    SELECT b.label, count(*) FILTER (WHERE b.score >= %(min_score)s) AS tagged,
           count(*) FILTER (WHERE b.score < %(min_score)s) AS below
    FROM best b
    GROUP BY b.label
)
SELECT l.label, coalesce(c.tagged, 0) AS tagged,
       (SELECT coalesce(sum(c2.below), 0) FROM counts c2)::bigint AS below,
       (SELECT count(*) FROM written) AS changed
FROM label l
LEFT JOIN counts c ON c.label = l.label
ORDER BY l.n;

-- foreign_values --
-- Images whose `key` holds a value `pgclip tag` did not write: a run writes `key` with
-- `key_score` beside it, so a value without one is the user's (a manifest's, an edit's).
-- How many, and the first of them (id, value) to name in the refusal.
SELECT count(*), min(id), (array_agg(metadata -> %(key)s::text ORDER BY id))[1]
FROM pgclip.images
WHERE metadata ? %(key)s::text AND NOT metadata ? %(score_key)s::text;
