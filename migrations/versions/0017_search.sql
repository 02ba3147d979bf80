-- pgclip's search, in SQL: the source of truth for the functions the API, the CLI and
-- analysts all call. Migrations apply frozen copies of this file
-- (migrations/versions/NNNN_*.sql); tests/integration/test_search_sql.py fails when the
-- functions in a migrated database differ from what is written here, so a change
-- here needs a new migration that applies a copy of the changed file.
--
-- Every optional argument of pgclip.search and pgclip.similar accepts NULL as "the
-- default", so callers may pass NULL for what they do not want to set.

-- filter_sql --
CREATE OR REPLACE FUNCTION pgclip.filter_sql(filters jsonb) RETURNS text
LANGUAGE plpgsql STABLE AS $$
-- The WHERE clause (over images aliased i) for a filters object; values are quoted
-- with format(%L), identifiers are fixed. Unknown keys are errors, not ignored:
-- a typo must not silently widen a search. STABLE, not IMMUTABLE: the folder filter
-- looks whether the folder holds a video.
DECLARE
    known constant text[] := ARRAY['taken_after', 'taken_before', 'min_width', 'min_height', 'orientation',
                                   'format', 'metadata', 'has_caption', 'exclude_ids', 'folder'];
    key text;
    parts text[] := ARRAY['true'];
    formats text[];
    lowest bigint;
    highest bigint;
    folder text;
    with_videos boolean;
BEGIN
    IF filters IS NULL OR filters = 'null'::jsonb THEN
        RETURN 'true';
    END IF;
    IF jsonb_typeof(filters) = 'object' THEN
        filters := jsonb_strip_nulls(filters);  -- a filter given as null is no filter
    END IF;
    IF jsonb_typeof(filters) <> 'object' THEN
        RAISE EXCEPTION 'filters must be a JSON object, got %', jsonb_typeof(filters) USING ERRCODE = '22023';
    END IF;
    FOR key IN SELECT jsonb_object_keys(filters) LOOP
        IF NOT key = ANY(known) THEN
            RAISE EXCEPTION 'unknown filter "%" (known: %)', key, array_to_string(known, ', ') USING ERRCODE = '22023';
        END IF;
    END LOOP;
    FOREACH key IN ARRAY ARRAY['taken_after', 'taken_before'] LOOP
        -- A date and time as ISO 8601 writes it (2024-05-01, 2024-05-01T12:00:00+02:00), as the
        -- API takes it: not PostgreSQL's words ('yesterday', 'epoch'), which mean another day tomorrow.
        IF filters ? key THEN
            BEGIN
                IF jsonb_typeof(filters->key) <> 'string' OR (filters->>key) !~ '^\d{4}-\d{2}-\d{2}' THEN
                    RAISE invalid_datetime_format;
                END IF;
                PERFORM (filters->>key)::timestamptz;
            EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow THEN
                RAISE EXCEPTION '% must be a date and time (ISO 8601, e.g. 2024-05-01T12:00:00Z), got %',
                    key, filters->key USING ERRCODE = '22023';
            END;
            parts := parts || format('i.taken_at %s %L::timestamptz',
                                     CASE key WHEN 'taken_after' THEN '>=' ELSE '<' END, filters->>key);
        END IF;
    END LOOP;
    FOREACH key IN ARRAY ARRAY['min_width', 'min_height'] LOOP
        IF filters ? key AND NOT (filters->>key)::int BETWEEN 1 AND 1000000 THEN
            RAISE EXCEPTION '% must be between 1 and 1000000, got %', key, filters->>key USING ERRCODE = '22023';
        END IF;
    END LOOP;
    IF filters ? 'min_width' THEN
        parts := parts || format('i.width >= %s', (filters->>'min_width')::int);
    END IF;
    IF filters ? 'min_height' THEN
        parts := parts || format('i.height >= %s', (filters->>'min_height')::int);
    END IF;
    IF filters ? 'orientation' THEN
        parts := parts || CASE filters->>'orientation'
            WHEN 'landscape' THEN 'i.width > i.height'
            WHEN 'portrait' THEN 'i.width < i.height'
            WHEN 'square' THEN 'i.width = i.height'
            ELSE NULL END;
        IF parts[array_upper(parts, 1)] IS NULL THEN
            RAISE EXCEPTION 'orientation must be landscape, portrait or square, got %', filters->'orientation'
                USING ERRCODE = '22023';
        END IF;
    END IF;
    IF filters ? 'format' THEN
        IF NOT (jsonb_typeof(filters->'format') = 'string'
                OR (jsonb_typeof(filters->'format') = 'array' AND jsonb_array_length(filters->'format') > 0
                    AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(filters->'format') f
                                    WHERE jsonb_typeof(f) <> 'string'))) THEN
            RAISE EXCEPTION 'format must be a format name or a non-empty list of them, got %', filters->'format'
                USING ERRCODE = '22023';
        END IF;
        formats := CASE jsonb_typeof(filters->'format')
            WHEN 'array' THEN ARRAY(SELECT upper(jsonb_array_elements_text(filters->'format')))
            ELSE ARRAY[upper(filters->>'format')] END;
        parts := parts || format('i.format = ANY(%L::text[])', formats);
    END IF;
    IF filters ? 'metadata' THEN
        IF jsonb_typeof(filters->'metadata') <> 'object' THEN
            RAISE EXCEPTION 'the metadata filter must be a JSON object' USING ERRCODE = '22023';
        END IF;
        parts := parts || format('i.metadata @> %L::jsonb', filters->'metadata');
    END IF;
    IF filters ? 'has_caption' THEN
        parts := parts || format('%s EXISTS (SELECT 1 FROM pgclip.captions hc WHERE hc.image_id = i.id)',
                                 CASE WHEN (filters->>'has_caption')::boolean THEN '' ELSE 'NOT' END);
    END IF;
    IF filters ? 'exclude_ids' THEN
        IF jsonb_typeof(filters->'exclude_ids') <> 'array'
           OR EXISTS (SELECT 1 FROM jsonb_array_elements(filters->'exclude_ids') x
                      WHERE jsonb_typeof(x) <> 'number' OR x::text !~ '^-?\d+$') THEN
            RAISE EXCEPTION 'exclude_ids must be a list of image ids, got %', left(filters->>'exclude_ids', 80)
                USING ERRCODE = '22023';
        END IF;
        SELECT min(x), max(x) INTO lowest, highest
        FROM unnest(ARRAY(SELECT jsonb_array_elements_text(filters->'exclude_ids'))::bigint[]) x;
        IF lowest < 1 OR highest > 4611686018427387904 THEN  -- ids are 1 .. 2^62
            RAISE EXCEPTION 'exclude_ids must be between 1 and 4611686018427387904, got %',
                CASE WHEN lowest < 1 THEN lowest ELSE highest END USING ERRCODE = '22023';
        END IF;
        parts := parts || format('NOT (i.id = ANY(%L::bigint[]))',
                                 ARRAY(SELECT jsonb_array_elements_text(filters->'exclude_ids'))::bigint[]);
    END IF;
    IF filters ? 'folder' THEN
        -- Images of synced files (pgclip.files, pgclip sync) under the folder, and not marked
        -- missing: a picture's own image, a video's frames. Whole path components: /a/b holds
        -- /a/b/c.jpg and /a/b itself, never /a/bc. The path column sorts bytewise (COLLATE "C"),
        -- so everything under "/a/b/" lies in ["/a/b/", "/a/b0") ('0' follows '/'): one range
        -- scan of files_path_idx. Pictures alone are one EXISTS, which the planner turns into
        -- the join that suits (filter first for a small folder, the vector index for a big one);
        -- the frames of a folder's videos (those they own and those they share) need the union
        -- of pgclip.file_images, which it joins less well, so the union is written only when
        -- the folder holds a video (files_video_path_idx says at once).
        folder := filters->>'folder';
        IF jsonb_typeof(filters->'folder') <> 'string' OR left(folder, 1) <> '/' THEN
            RAISE EXCEPTION 'folder must be an absolute path, got %', filters->'folder' USING ERRCODE = '22023';
        END IF;
        folder := rtrim(folder, '/');  -- "/a/b/" is "/a/b"; "/" is "" (everything)
        folder := format('f.missing_since IS NULL AND (f.path = %L OR (f.path >= %L AND f.path < %L))',
                         folder, folder || '/', folder || '0');
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM pgclip.files f WHERE f.video_id IS NOT NULL AND %s)', folder)
            INTO with_videos;
        IF with_videos THEN
            parts := parts || format('i.id IN (SELECT f.image_id FROM pgclip.file_images f WHERE %s)', folder);
        ELSE
            parts := parts || format('EXISTS (SELECT 1 FROM pgclip.files f WHERE f.image_id = i.id AND %s)', folder);
        END IF;
    END IF;
    RETURN array_to_string(parts, ' AND ');
END
$$;

-- filter_share --
CREATE OR REPLACE FUNCTION pgclip.filter_share(filters jsonb) RETURNS double precision
LANGUAGE plpgsql VOLATILE AS $$
-- The share of the images that pass the filters (0 to 1), as the planner estimates it: no rows
-- are read. VOLATILE only because PostgreSQL allows EXPLAIN in no other function; it changes nothing.
DECLARE
    plan jsonb;
    passing double precision;
BEGIN
    EXECUTE format('EXPLAIN (FORMAT JSON) SELECT 1 FROM pgclip.images i WHERE %s', pgclip.filter_sql(filters))
        INTO plan;
    passing := (plan->0->'Plan'->>'Plan Rows')::double precision;
    EXECUTE 'EXPLAIN (FORMAT JSON) SELECT 1 FROM pgclip.images i' INTO plan;
    RETURN least(1, passing / greatest(1, (plan->0->'Plan'->>'Plan Rows')::double precision));
END
$$;

-- search --
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
    known constant text[] := ARRAY['fusion', 'weight', 'rrf_k', 'min_similarity', 'max_drop', 'order', 'window',
                                   'ts_config', 'exact_threshold', 'model_id', 'ef_search', 'probes'];
    key text;
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
    win int;
    exact_threshold int := coalesce((options->>'exact_threshold')::int, 10000);
    where_sql text := pgclip.filter_sql(filters);
    tq tsquery;
    exact boolean := false;
    share double precision := 1;
    prefix boolean := false;
    sort_setting text;
    use_vector boolean := query_vector IS NOT NULL;
    norm double precision := vector_norm(query_vector);
    use_text boolean := false;
    vec text;
    full_distance text;
    sql text;
BEGIN
    -- NULL for an optional argument means its default, exactly as if it were left out.
    k := coalesce(k, 10);
    "offset" := coalesce("offset", 0);
    filters := coalesce(filters, '{}');
    options := coalesce(options, '{}');
    IF jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'options must be a JSON object, got %', jsonb_typeof(options) USING ERRCODE = '22023';
    END IF;
    FOR key IN SELECT jsonb_object_keys(options) LOOP
        -- Like filters: a misspelt option must not silently run the default.
        IF NOT key = ANY(known) THEN
            RAISE EXCEPTION 'unknown option "%" (known: %)', key, array_to_string(known, ', ') USING ERRCODE = '22023';
        END IF;
    END LOOP;
    IF k < 1 OR k > 100 THEN
        RAISE EXCEPTION 'k must be between 1 and 100, got %', k USING ERRCODE = '22023';
    END IF;
    win := coalesce((options->>'window')::int, greatest(200, 4 * k));
    IF "offset" < 0 THEN
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
    IF min_similarity < -1 OR min_similarity > 1 THEN
        RAISE EXCEPTION 'min_similarity must be between -1 and 1, got %', min_similarity USING ERRCODE = '22023';
    END IF;
    IF max_drop < 0 OR max_drop > 2 THEN
        RAISE EXCEPTION 'max_drop must be between 0 and 2, got %', max_drop USING ERRCODE = '22023';
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
    IF use_vector THEN
        -- A direction, as the API takes it: a zero vector has none; a very long or very short one
        -- is scaled to unit length (its cosine distances would overflow to NaN, or halfvec refuse it).
        IF norm = 0 THEN
            RAISE EXCEPTION 'query vector must be a non-zero list of finite numbers' USING ERRCODE = '22023';
        END IF;
        IF abs(norm - 1) > 1e-3 THEN
            query_vector := l2_normalize(query_vector);
        END IF;
    END IF;
    IF nullif(trim(caption_query), '') IS NOT NULL THEN
        tq := websearch_to_tsquery(ts_config, caption_query);
        use_text := numnode(tq) > 0;  -- a query of stop words only matches nothing
    ELSIF NOT use_vector THEN
        RAISE EXCEPTION 'give a query vector or a caption query' USING ERRCODE = '22023';
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
    -- By default the graph search looks at least as far as the window (HNSW's ceiling is 1000).
    ef_search := least(greatest(40, win), 1000);
    IF use_vector AND NOT use_text AND result_order = 'relevance' AND NOT exact AND index_kind = 'hnsw'
       AND where_sql <> 'true' THEN
        -- The share of the images the filters leave, as the planner estimates it (no rows read),
        -- and a first pass long enough to hold 4 k rows that pass them (2 k at least: HNSW stops
        -- at 1000), so that it finds the k nearest of them as surely as an unfiltered search.
        share := pgclip.filter_share(filters);
        IF 4 * k / share > ef_search AND 2 * k / share <= 1000 THEN
            ef_search := least(ceil(4 * k / share), 1000);
        END IF;
    END IF;
    ef_search := coalesce((options->>'ef_search')::int, (params->>'ef_search')::int, ef_search);
    probes := coalesce((options->>'probes')::int, (params->>'probes')::int, 1);
    IF ef_search < 1 OR ef_search > 1000 THEN
        RAISE EXCEPTION 'ef_search must be between 1 and 1000, got %', ef_search USING ERRCODE = '22023';
    END IF;
    IF probes < 1 THEN
        RAISE EXCEPTION 'probes must be 1 or more, got %', probes USING ERRCODE = '22023';
    END IF;
    PERFORM set_config('hnsw.ef_search', ef_search::text, true);
    PERFORM set_config('ivfflat.probes', probes::text, true);
    -- Ranked by the vector alone, by relevance: a page needs only the first offset + k candidates
    -- when they come in exact distance order, which an exact sort gives, and an HNSW scan in
    -- strict_order too (a scan's first rows do not depend on where it stops, so the pages of a
    -- query still agree with each other). Not when the first pass is unlikely to hold 2 k rows that
    -- pass the filters: past it, strict_order drops neighbours found out of order, and recall falls.
    -- Every page must take the index, whatever its offset (a deep page would otherwise tempt the
    -- planner to sort the filtered rows, a different ranking): sorts are priced out for this
    -- statement, and the caller's enable_sort is put back after it.
    prefix := use_vector AND NOT use_text AND result_order = 'relevance'
              AND (exact OR (index_kind = 'hnsw' AND share * ef_search >= 2 * k));
    IF prefix AND NOT exact THEN
        PERFORM set_config('hnsw.iterative_scan', 'strict_order', true);
        sort_setting := current_setting('enable_sort');
        PERFORM set_config('enable_sort', 'off', true);
    END IF;

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
        USING query_vector, CASE WHEN prefix THEN least(win, "offset" + k) ELSE win END, tq, use_vector, use_text,
              weight, rrf_k, min_similarity, max_drop, "offset", k;
    IF sort_setting IS NOT NULL THEN
        PERFORM set_config('enable_sort', sort_setting, true);
    END IF;
END
$$;

-- similar --
CREATE OR REPLACE FUNCTION pgclip.similar(
    of_image bigint,
    k int DEFAULT 10,
    filters jsonb DEFAULT '{}',
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
LANGUAGE plpgsql STABLE AS $$
-- "More like this": the images nearest to one image's vector (itself excluded).
DECLARE
    query_vector vector;
    exclude jsonb;
BEGIN
    SELECT e.embedding INTO query_vector
    FROM pgclip.embeddings e JOIN pgclip.models m ON m.id = e.model_id AND m.state = 'active'
    WHERE e.image_id = of_image;
    IF query_vector IS NULL THEN
        IF NOT EXISTS (SELECT 1 FROM pgclip.images i WHERE i.id = of_image) THEN
            RAISE EXCEPTION 'no image with id %', of_image USING ERRCODE = 'P0002';
        END IF;
        RAISE EXCEPTION 'image % has no vector for the active model yet (is a worker running?)', of_image
            USING ERRCODE = '55000';
    END IF;
    filters := coalesce(filters, '{}'::jsonb);
    exclude := coalesce(filters->'exclude_ids', '[]'::jsonb) || to_jsonb(of_image);
    RETURN QUERY SELECT * FROM pgclip.search(query_vector, NULL, filters || jsonb_build_object('exclude_ids', exclude),
                                             k, "offset", options);
END
$$;
