-- Text queries in SQL: pgclip.embed_text and pgclip.search_text, the source of truth for
-- the functions analysts call. Migrations apply frozen copies of this file
-- (migrations/versions/0008_text.sql, 0016_text.sql); tests/integration/test_text_in_sql.py fails when
-- the functions in a migrated database differ from what is written here.
--
-- The model lives in the workers, not in PostgreSQL, so a text's vector is asked of
-- them: the request is a row in pgclip.text_requests plus a NOTIFY on pgclip_text
-- (payload: the model id); a worker of that model (workers/text_requests.py) writes the
-- vector into pgclip.text_vectors and deletes the request. A function's own inserts are
-- invisible to other sessions until its transaction commits, and the caller's
-- transaction only ends after the function returns, so the request is inserted and
-- committed through a dblink connection back to this same database, and the answer is
-- read through it too: a REPEATABLE READ or SERIALIZABLE caller's snapshot would never
-- show it, the loopback session's read-committed statements do.
--
-- pgclip.text_vectors is also the cache the API and CLI read and fill
-- (db/text_vectors.py, which evicts the least recently used rows over a bound): a text
-- asked before is answered from it without any worker.
--
-- Security: pgclip.embed_text is SECURITY DEFINER with a fixed search_path. It checks
-- its input, reads the cache, and through dblink only inserts (and, when no answer
-- came, deletes) one request row; dblink itself lives in schema pgclip_dblink, which no
-- other role may use, so callers cannot open connections of their own. dblink refuses
-- a loopback connection without a password unless the function's owner is a superuser
-- (the migrating role on the embedded server and in compose.yaml); see README.md.

-- loopback_conninfo --
CREATE OR REPLACE FUNCTION pgclip.loopback_conninfo() RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgclip, pg_temp
AS $$
-- This server, this database, this role: over the first Unix socket directory when
-- the server has one (no password asked of a local superuser), else over TCP.
SELECT format('host=%s port=%s dbname=%s user=%s application_name=pgclip-text-request',
              quote_literal(coalesce(nullif(btrim(split_part(current_setting('unix_socket_directories'), ',', 1)), ''),
                                     '127.0.0.1')),
              current_setting('port'), quote_literal(current_database()), quote_literal(current_user))
$$;

-- ask_workers --
CREATE OR REPLACE FUNCTION pgclip.ask_workers(model_id int, model_label text, query_text text, timeout_ms int)
RETURNS vector
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pgclip, pg_temp
AS $$
-- Request the vector of one text from the workers of one model and wait for it (at
-- most timeout_ms). Only pgclip.embed_text calls this, after checking its input, so it
-- runs as embed_text's owner (no other role may execute it).
DECLARE
    link constant text := 'pgclip_text_requests';  -- kept open for the session's next request
    request text := format('INSERT INTO pgclip.text_requests (model_id, text) VALUES (%s, %L) ON CONFLICT DO NOTHING;'
                           ' NOTIFY pgclip_text, %L', model_id, query_text, model_id::text);
    answer text := format('SELECT (SELECT v.embedding::text FROM pgclip.text_vectors v'
                          '        WHERE v.model_id = %1$s AND md5(v.text) = md5(%2$L) AND v.text = %2$L),'
                          '       (SELECT r.error FROM pgclip.text_requests r'
                          '        WHERE r.model_id = %1$s AND md5(r.text) = md5(%2$L) AND r.text = %2$L)',
                          model_id, query_text);
    withdraw text := format('DELETE FROM pgclip.text_requests WHERE model_id = %s AND md5(text) = md5(%L)',
                            model_id, query_text);
    deadline timestamptz := clock_timestamp() + timeout_ms * interval '1 millisecond';
    pause double precision := 0.001;
    reply text;
    vector_of_reply pgclip.text_vectors.embedding%TYPE;  -- the vector type, wherever pgvector lives
    failure text;
BEGIN
    IF NOT link = ANY(coalesce(pgclip_dblink.dblink_get_connections(), '{}')) THEN
        PERFORM pgclip_dblink.dblink_connect(link, pgclip.loopback_conninfo());
    END IF;
    BEGIN
        PERFORM pgclip_dblink.dblink_exec(link, request);
    EXCEPTION WHEN OTHERS THEN
        -- The session's connection broke (server restart, terminated): one new one.
        PERFORM pgclip_dblink.dblink_disconnect(link);
        PERFORM pgclip_dblink.dblink_connect(link, pgclip.loopback_conninfo());
        PERFORM pgclip_dblink.dblink_exec(link, request);
    END;
    LOOP
        SELECT a.vec, a.err INTO reply, failure FROM pgclip_dblink.dblink(link, answer) AS a(vec text, err text);
        IF reply IS NOT NULL THEN
            vector_of_reply := reply;
            RETURN vector_of_reply;
        END IF;
        IF failure IS NOT NULL OR clock_timestamp() >= deadline THEN
            PERFORM pgclip_dblink.dblink_exec(link, withdraw);  -- nobody is waiting for it any more
            EXIT;
        END IF;
        PERFORM pg_sleep(pause);
        pause := least(pause * 1.5, 0.02);  -- answers take milliseconds; a missing worker, seconds
    END LOOP;
    IF failure IS NOT NULL THEN
        RAISE EXCEPTION 'the pgclip worker could not embed the text: %', failure USING ERRCODE = '22023';
    END IF;
    RAISE EXCEPTION 'no pgclip worker answered within % ms for model %', timeout_ms, model_label
        USING ERRCODE = '55000',
              HINT = 'start one with `pgclip worker` for that model (it answers text requests'
                     || CASE WHEN model_label LIKE '%+onnx-int8)' THEN '; int8 vectors: with PGCLIP_ENCODER=onnx-int8'
                             ELSE '' END
                     || '), or wait longer: pgclip.embed_text(text, model, timeout_ms) or SET pgclip.text_timeout_ms';
END
$$;

-- embed_text --
CREATE OR REPLACE FUNCTION pgclip.embed_text(query_text text, model text DEFAULT NULL, timeout_ms int DEFAULT NULL)
RETURNS vector
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgclip, pg_temp
AS $$
-- The unit vector of a text under the active model, or the one named (its name, or
-- "name (pretrained)" when several share a name): from the cache when the text was
-- asked before, else from the running workers, waiting at most timeout_ms
-- (NULL: the setting pgclip.text_timeout_ms, else 5000). The text is trimmed; at most
-- 1000 characters, the search request's limit (pgclip.core.search_request).
DECLARE
    max_length constant int := 1000;
    wait_ms int := coalesce(timeout_ms, nullif(current_setting('pgclip.text_timeout_ms', true), '')::int, 5000);
    chosen_id int;
    label text;
    matches int;
    cached pgclip.text_vectors.embedding%TYPE;
    used timestamptz;
BEGIN
    query_text := btrim(query_text, E' \t\n\r\f');  -- spaces, tabs and line breaks, as the API strips them
    IF query_text IS NULL OR query_text = '' THEN
        RAISE EXCEPTION 'give a text to embed' USING ERRCODE = '22023';
    END IF;
    IF length(query_text) > max_length THEN
        RAISE EXCEPTION 'the text has % characters; at most % are embedded', length(query_text), max_length
            USING ERRCODE = '22023';
    END IF;
    IF wait_ms < 1 OR wait_ms > 600000 THEN
        RAISE EXCEPTION 'timeout_ms must be between 1 and 600000, got %', wait_ms USING ERRCODE = '22023';
    END IF;
    IF model IS NULL THEN
        SELECT m.id, format('%s (%s)', m.name, m.pretrained) INTO chosen_id, label
        FROM pgclip.models m WHERE m.state = 'active';
        IF chosen_id IS NULL THEN
            RAISE EXCEPTION 'no active model: run pgclip migrate' USING ERRCODE = '55000';
        END IF;
    ELSE
        SELECT min(m.id), min(format('%s (%s)', m.name, m.pretrained)), count(*) INTO chosen_id, label, matches
        FROM pgclip.models m WHERE m.name = model OR format('%s (%s)', m.name, m.pretrained) = model;
        IF matches = 0 THEN
            RAISE EXCEPTION 'no model named %', model USING ERRCODE = '22023',
                HINT = 'SELECT name, pretrained FROM pgclip.models lists them';
        END IF;
        IF matches > 1 THEN
            RAISE EXCEPTION 'several models are named %: give it as "name (pretrained)"', model USING ERRCODE = '22023';
        END IF;
    END IF;

    SELECT v.embedding, v.last_used INTO cached, used
    FROM pgclip.text_vectors v WHERE v.model_id = chosen_id AND md5(v.text) = md5(query_text) AND v.text = query_text;
    IF cached IS NULL THEN
        RETURN pgclip.ask_workers(chosen_id, label, query_text, wait_ms);
    END IF;
    -- Recency for eviction, at most once a minute a text (a hit is otherwise read-only),
    -- and never in a read-only transaction.
    IF used < now() - interval '1 minute' AND current_setting('transaction_read_only') = 'off' THEN
        UPDATE pgclip.text_vectors SET last_used = now()
        WHERE model_id = chosen_id AND md5(text) = md5(query_text) AND text = query_text;
    END IF;
    RETURN cached;
END
$$;

-- search_text --
CREATE OR REPLACE FUNCTION pgclip.search_text(
    query_text text,
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
LANGUAGE plpgsql VOLATILE AS $$
-- pgclip.search with the vector of a text (pgclip.embed_text): the same arguments after
-- the first, the same defaults, the same rows. The model is pinned in the options, so
-- the vector and the search use one model even if the active one changes meanwhile. A
-- NULL or blank text searches captions alone; with no caption query either, it is an error.
DECLARE
    chosen_id int;
    label text;
    blank boolean := nullif(btrim(query_text, E' \t\n\r\f'), '') IS NULL;
BEGIN
    IF blank AND nullif(trim(caption_query), '') IS NULL THEN
        RAISE EXCEPTION 'give a query text or a caption query' USING ERRCODE = '22023';
    END IF;
    options := coalesce(options, '{}');
    IF options ? 'model_id' THEN
        SELECT m.id, format('%s (%s)', m.name, m.pretrained) INTO chosen_id, label
        FROM pgclip.models m WHERE m.id = (options->>'model_id')::int;
        IF chosen_id IS NULL THEN
            RAISE EXCEPTION 'no model with id %', options->>'model_id' USING ERRCODE = '22023';
        END IF;
    ELSE
        SELECT m.id, format('%s (%s)', m.name, m.pretrained) INTO chosen_id, label
        FROM pgclip.models m WHERE m.state = 'active';
        IF chosen_id IS NULL THEN
            RAISE EXCEPTION 'no active model: run pgclip migrate' USING ERRCODE = '55000';
        END IF;
    END IF;
    RETURN QUERY SELECT * FROM pgclip.search(
        CASE WHEN blank THEN NULL ELSE pgclip.embed_text(query_text, label) END,
        caption_query, filters, k, "offset", options || jsonb_build_object('model_id', chosen_id));
END
$$;
