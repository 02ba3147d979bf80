-- Near-duplicate images: each image's nearest neighbours above a similarity threshold.
-- Sections start with `-- name --`; pgclip.db.queries loads them by name.

-- hnsw_ef_search --
-- For this transaction only: how far each neighbour lookup searches the HNSW graph.
SELECT set_config('hnsw.ef_search', %(value)s, true);

-- ivfflat_probes --
-- For this transaction only: how many IVFFlat lists each neighbour lookup visits.
SELECT set_config('ivfflat.probes', %(value)s, true);

-- pairs --
-- One index lookup per image (the LATERAL), each returning its few nearest others.
-- The placeholders in braces are the model's indexed expression, its predicate and
-- its query cast, written as literals by pgclip.db.models.vector_sql: the planner
-- uses a model's partial index only for the very same expression and predicate.
SELECT a.image_id, n.image_id, 1 - n.distance
FROM pgclip.embeddings a
CROSS JOIN LATERAL (
    SELECT e.image_id, {vec} <=> a.embedding::{qcast} AS distance
    FROM pgclip.embeddings e
    WHERE {model_pred} AND e.image_id <> a.image_id
    ORDER BY {vec} <=> a.embedding::{qcast}
    LIMIT %(neighbours)s
) n
WHERE a.model_id = {model_id} AND n.distance <= %(max_distance)s;
