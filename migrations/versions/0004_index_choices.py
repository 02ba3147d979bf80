"""index choices per model: HNSW, IVFFlat or none, over vector or halfvec

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24

Each model records how its vectors are indexed (``index_kind``: hnsw, ivfflat
or none for exact search), the type the index compares them as (``storage``:
vector, or halfvec for half the index memory) and the index's parameters
(``index_params``: m, ef_construction and ef_search for HNSW; lists and probes
for IVFFlat). ``pgclip index rebuild`` changes them; ``pgclip.search`` reads
them to write the expression the index was built on (and ranks the
candidates by the full-precision distance either way).

Each model's index is renamed from ``embeddings_m{id}_hnsw`` to
``embeddings_m{id}_vectors``, a name that holds whatever its kind.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS_SQL = r"""
ALTER TABLE pgclip.models
    ADD COLUMN index_kind text NOT NULL DEFAULT 'hnsw'
        CONSTRAINT models_index_kind_check CHECK (index_kind IN ('hnsw', 'ivfflat', 'none')),
    ADD COLUMN storage text NOT NULL DEFAULT 'vector'
        CONSTRAINT models_storage_check CHECK (storage IN ('vector', 'halfvec')),
    ADD COLUMN index_params jsonb NOT NULL DEFAULT '{}'
        CONSTRAINT models_index_params_check CHECK (jsonb_typeof(index_params) = 'object');
COMMENT ON COLUMN pgclip.models.index_kind IS 'hnsw, ivfflat, or none (exact search)';
COMMENT ON COLUMN pgclip.models.storage IS 'the type the index compares vectors as: vector, or halfvec';
COMMENT ON COLUMN pgclip.models.index_params IS
    'm, ef_construction, ef_search (hnsw); lists, probes (ivfflat); absent: the defaults';
"""

# Existing indexes: the new name, and their build parameters (m, ef_construction) recorded.
RENAME_SQL = r"""
DO $$
DECLARE
    m record;
    options jsonb;
BEGIN
    FOR m IN SELECT id FROM pgclip.models LOOP
        IF to_regclass(format('pgclip.embeddings_m%s_hnsw', m.id)) IS NOT NULL THEN
            SELECT coalesce(jsonb_object_agg(split_part(o, '=', 1), split_part(o, '=', 2)::int), '{}')
            INTO options
            FROM pg_class c, unnest(c.reloptions) AS o
            WHERE c.oid = to_regclass(format('pgclip.embeddings_m%s_hnsw', m.id));
            EXECUTE format('ALTER INDEX pgclip.%I RENAME TO %I',
                           format('embeddings_m%s_hnsw', m.id), format('embeddings_m%s_vectors', m.id));
            UPDATE pgclip.models SET index_params = options WHERE id = m.id;
        END IF;
    END LOOP;
END
$$;
"""

UNRENAME_SQL = r"""
DO $$
DECLARE
    m record;
BEGIN
    FOR m IN SELECT id FROM pgclip.models LOOP
        IF to_regclass(format('pgclip.embeddings_m%s_vectors', m.id)) IS NOT NULL THEN
            EXECUTE format('ALTER INDEX pgclip.%I RENAME TO %I',
                           format('embeddings_m%s_vectors', m.id), format('embeddings_m%s_hnsw', m.id));
        END IF;
    END LOOP;
END
$$;
"""

SEARCH_SQL = r"""
CREATE OR REPLACE FUNCTION pgclip.search(
    query_vector vector DEFAULT NULL,
    caption_query text DEFAULT NULL,
    filters jsonb DEFAULT '{}',
    k int DEFAULT 10,
    "offset" int DEFAULT 0,
    options jsonb DEFAULT '{}'
) RETURNS TABLE (
    image_id bigint,
    score double precision,
    similarity double precision,
    text_rank double precision,
    vector_rank int,
    text_rank_position int
)
LANGUAGE plpgsql STABLE
-- Saved and restored around every call, so the caller's session is untouched.
SET hnsw.iterative_scan = 'relaxed_order'
SET hnsw.ef_search = 40
SET ivfflat.iterative_scan = 'relaxed_order'
SET ivfflat.probes = 1
AS $$
-- options: fusion ('rrf' | 'weighted'), weight (0..1, the vector's share in 'weighted'),
-- rrf_k (default 60), min_similarity, max_drop (drop hits more than this below the
-- best similarity), order ('relevance' | 'newest' | 'oldest'), window (candidates
-- per ranking, fixed across the pages of one query), ts_config (default 'english'),
-- exact_threshold (filters leaving fewer rows than this are ranked exactly; default 10000),
-- model_id (search this model's vectors instead of the active model's), ef_search (HNSW) and
-- probes (IVFFlat) for this query instead of the model's own (pgclip index rebuild sets those).
DECLARE
    model_id int;
    dim int;
    index_kind text;
    storage text;
    params jsonb;
    ef_search int;
    probes int;
    fusion text := coalesce(options->>'fusion', 'rrf');
    weight double precision := coalesce((options->>'weight')::double precision, 0.5);
    rrf_k double precision := coalesce((options->>'rrf_k')::double precision, 60);
    min_similarity double precision := (options->>'min_similarity')::double precision;
    max_drop double precision := (options->>'max_drop')::double precision;
    result_order text := coalesce(options->>'order', 'relevance');
    ts_config regconfig := coalesce(options->>'ts_config', 'english')::regconfig;
    win int := coalesce((options->>'window')::int, greatest(200, 4 * k));
    exact_threshold int := coalesce((options->>'exact_threshold')::int, 10000);
    where_sql text := pgclip.filter_sql(filters);
    tq tsquery;
    exact boolean := false;
    use_vector boolean := query_vector IS NOT NULL;
    use_text boolean := false;
    vec text;
    full_distance text;
    sql text;
BEGIN
    IF k IS NULL OR k < 1 OR k > 100 THEN
        RAISE EXCEPTION 'k must be between 1 and 100, got %', k USING ERRCODE = '22023';
    END IF;
    IF "offset" IS NULL OR "offset" < 0 THEN
        RAISE EXCEPTION 'offset must be 0 or more, got %', "offset" USING ERRCODE = '22023';
    END IF;
    IF win < 1 OR win > 10000 THEN
        RAISE EXCEPTION 'window must be between 1 and 10000, got %', win USING ERRCODE = '22023';
    END IF;
    IF fusion NOT IN ('rrf', 'weighted') THEN
        RAISE EXCEPTION 'fusion must be rrf or weighted, got %', fusion USING ERRCODE = '22023';
    END IF;
    IF weight < 0 OR weight > 1 THEN
        RAISE EXCEPTION 'weight must be between 0 and 1, got %', weight USING ERRCODE = '22023';
    END IF;
    IF result_order NOT IN ('relevance', 'newest', 'oldest') THEN
        RAISE EXCEPTION 'order must be relevance, newest or oldest, got %', result_order USING ERRCODE = '22023';
    END IF;

    IF options ? 'model_id' THEN
        -- A caller that made its query vector with a given model pins it, so a switch of
        -- the active model between encoding and searching cannot mix two models.
        SELECT m.id, m.dimension, m.index_kind, m.storage, m.index_params INTO model_id, dim, index_kind, storage, params
        FROM pgclip.models m WHERE m.id = (options->>'model_id')::int;
        IF model_id IS NULL THEN
            RAISE EXCEPTION 'no model with id %', options->>'model_id' USING ERRCODE = '22023';
        END IF;
    ELSE
        SELECT m.id, m.dimension, m.index_kind, m.storage, m.index_params INTO model_id, dim, index_kind, storage, params
        FROM pgclip.models m WHERE m.state = 'active';
    END IF;
    IF model_id IS NULL THEN
        RAISE EXCEPTION 'no active model: run pgclip migrate' USING ERRCODE = '55000';
    END IF;
    IF use_vector AND vector_dims(query_vector) <> dim THEN
        RAISE EXCEPTION 'query vector has % dimensions, the active model has %', vector_dims(query_vector), dim
            USING ERRCODE = '22023';
    END IF;
    IF nullif(trim(caption_query), '') IS NOT NULL THEN
        tq := websearch_to_tsquery(ts_config, caption_query);
        use_text := numnode(tq) > 0;  -- a query of stop words only matches nothing
    END IF;
    IF NOT use_vector AND NOT use_text THEN
        RETURN;  -- nothing to rank by
    END IF;
    IF "offset" >= win THEN
        RETURN;  -- past the candidate window: no more pages
    END IF;

    -- The model id, dimension and storage type are written as literals: the per-model
    -- partial index is only usable when the query repeats its predicate and expression
    -- literally. Candidates come in the index's order (by halfvec distance when the index
    -- is over halfvec) and are then ranked by the full-precision distance.
    vec := format('(e.embedding::%s(%s))', storage, dim);
    full_distance := format('(e.embedding::vector(%s)) <=> $1::vector(%s)', dim, dim);
    exact := index_kind = 'none';
    IF use_vector AND NOT exact AND where_sql <> 'true' THEN
        -- Few rows pass the filters: rank them all exactly (filter first) instead of
        -- walking the graph past thousands of rejected neighbours.
        EXECUTE format('SELECT count(*) < %s FROM (SELECT 1 FROM pgclip.images i WHERE %s LIMIT %s) f',
                       exact_threshold, where_sql, exact_threshold)
            INTO exact;
    END IF;
    ef_search := coalesce((options->>'ef_search')::int, (params->>'ef_search')::int, greatest(40, win));
    probes := coalesce((options->>'probes')::int, (params->>'probes')::int, 1);
    IF ef_search < 1 OR ef_search > 1000 THEN
        RAISE EXCEPTION 'ef_search must be between 1 and 1000, got %', ef_search USING ERRCODE = '22023';
    END IF;
    IF probes < 1 THEN
        RAISE EXCEPTION 'probes must be 1 or more, got %', probes USING ERRCODE = '22023';
    END IF;
    PERFORM set_config('hnsw.ef_search', least(ef_search, 1000)::text, true);
    PERFORM set_config('ivfflat.probes', probes::text, true);

    sql := format($q$
        WITH vector_hits AS MATERIALIZED (
            SELECT e.image_id, %6$s AS distance
            FROM pgclip.embeddings e JOIN pgclip.images i ON i.id = e.image_id
            WHERE e.model_id = %1$s AND $4 AND (%2$s)
            ORDER BY %3$s
            LIMIT $2
        ),
        vector_ranked AS (
            -- relaxed_order may return neighbours slightly out of order: re-sort (the
            -- "+ 0" keeps the planner from pushing the sort back into the index).
            SELECT v.image_id, 1 - v.distance AS similarity,
                   (row_number() OVER (ORDER BY v.distance + 0, v.image_id))::int AS vector_rank
            FROM vector_hits v
        ),
        text_ranked AS (
            SELECT t.image_id, t.text_rank,
                   (row_number() OVER (ORDER BY t.text_rank DESC, t.image_id))::int AS text_rank_position
            FROM (
                SELECT c.image_id, sum(ts_rank_cd(c.tsv, $3))::double precision AS text_rank
                FROM pgclip.captions c JOIN pgclip.images i ON i.id = c.image_id
                WHERE $5 AND c.tsv @@ $3 AND (%2$s)
                GROUP BY c.image_id
                ORDER BY text_rank DESC, c.image_id
                LIMIT $2
            ) t
        ),
        candidates AS (
            SELECT coalesce(v.image_id, t.image_id) AS image_id, v.similarity, v.vector_rank,
                   t.text_rank, t.text_rank_position
            FROM vector_ranked v FULL JOIN text_ranked t ON t.image_id = v.image_id
        ),
        explained AS (
            -- Text-only hits get their cosine similarity too, so every result explains itself
            -- and the similarity cut-offs treat all candidates alike.
            SELECT c.image_id, c.vector_rank, c.text_rank, c.text_rank_position,
                   CASE WHEN $1 IS NULL THEN NULL
                        ELSE coalesce(c.similarity,
                                      (SELECT 1 - (%6$s) FROM pgclip.embeddings e
                                       WHERE e.image_id = c.image_id AND e.model_id = %1$s)) END AS similarity,
                   max(c.text_rank) OVER () AS best_text_rank,
                   max(c.similarity) OVER () AS best_similarity
            FROM candidates c
        ),
        scored AS (
            SELECT x.*,
                   CASE
                       WHEN NOT $4 THEN x.text_rank
                       WHEN NOT $5 THEN x.similarity
                       WHEN %4$L = 'weighted' THEN
                           $6 * coalesce(x.similarity, 0)
                           + (1 - $6) * coalesce(x.text_rank / nullif(x.best_text_rank, 0), 0)
                       ELSE coalesce(1.0 / ($7 + x.vector_rank), 0) + coalesce(1.0 / ($7 + x.text_rank_position), 0)
                   END AS score
            FROM explained x
            -- The similarity cut-offs apply when there is a query vector to be similar to.
            WHERE (NOT $4 OR $8::double precision IS NULL OR x.similarity >= $8)
              AND (NOT $4 OR $9::double precision IS NULL OR x.similarity >= x.best_similarity - $9)
        )
        SELECT s.image_id, s.score, s.similarity, s.text_rank, s.vector_rank, s.text_rank_position
        FROM scored s JOIN pgclip.images i ON i.id = s.image_id
        ORDER BY %5$s
        OFFSET $10 LIMIT $11
    $q$,
        model_id, where_sql,
        -- exact: "+ 0" hides the ordering from the index, so the filtered rows are sorted;
        -- otherwise the index walks in distance order (iteratively, past filtered rows).
        CASE WHEN exact THEN format('(%s) + 0, e.image_id', full_distance)
             ELSE format('%s <=> $1::%s(%s)', vec, storage, dim) END,
        fusion,
        CASE result_order
            WHEN 'newest' THEN 'i.taken_at DESC NULLS LAST, s.image_id'
            WHEN 'oldest' THEN 'i.taken_at ASC NULLS LAST, s.image_id'
            ELSE 's.score DESC NULLS LAST, s.image_id' END,
        full_distance);

    RETURN QUERY EXECUTE sql
        USING query_vector, win, tq, use_vector, use_text, weight, rrf_k, min_similarity, max_drop,
              "offset", k;
END
$$;
"""


def upgrade() -> None:
    op.execute(COLUMNS_SQL)
    op.execute(RENAME_SQL)
    op.execute(SEARCH_SQL)


def downgrade() -> None:
    # 0002's search (vector storage, HNSW only) comes back from its migration's text. Indexes
    # rebuilt as IVFFlat or over halfvec stay; that search then ranks those models exactly.
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_pgclip_0002", Path(__file__).with_name("0002_search_functions.py"))
    previous = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(previous)
    op.execute(UNRENAME_SQL)
    op.execute(previous.SEARCH_SQL.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    op.execute("ALTER TABLE pgclip.models DROP COLUMN index_params, DROP COLUMN storage, DROP COLUMN index_kind")
