-- Rebuilding a model's vector index while searches go on (pgclip.db.indexes.rebuild).
-- Sections start with `-- name --`; pgclip.db.queries loads them by name.
-- The DDL itself (CREATE/DROP/ALTER INDEX, concurrently) is composed in Python from
-- the model's row: index names, types and dimensions are identifiers, not values.
-- The row's own change is models.sql's set_index.

-- try_lock --
-- One rebuild per model at a time, across hosts: a session advisory lock, released
-- by unlock (or by the session ending, should the rebuild die half-way).
SELECT pg_try_advisory_lock(%(lock_class)s, %(model_id)s);

-- unlock --
SELECT pg_advisory_unlock(%(lock_class)s, %(model_id)s);

-- exists --
SELECT to_regclass(%(index)s) IS NOT NULL;

-- build_memory --
-- For this session only (is_local false: the build runs outside a transaction).
SELECT set_config('maintenance_work_mem', %(memory)s, false);

-- size --
SELECT pg_relation_size(to_regclass(%(index)s));

-- state --
-- Size and validity of an index as it exists; no row when there is none. A
-- concurrent build that failed leaves an index that is there but not valid.
SELECT pg_relation_size(i.indexrelid), i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%(index)s);

-- reloptions --
-- The build parameters an index was made with (['m=16', 'ef_construction=64'] for HNSW, as
-- CREATE INDEX ... WITH stored them); no row when there is no such index.
SELECT c.reloptions FROM pg_class c WHERE c.oid = to_regclass(%(index)s);

-- lock --
-- The deferred index (pgclip.db.indexes.build_deferred) starts here: a model whose index
-- does not exist takes its vectors by plain inserts (no HNSW insert per row, ~2-4 ms of
-- server CPU each), and its index is built once, CONCURRENTLY, when its backlog has drained.
-- As try_lock, but waits: `pgclip models activate` builds a missing index first, after
-- whichever build is running (a worker's, a rebuild) has finished.
SELECT pg_advisory_lock(%(lock_class)s, %(model_id)s);

-- build_state --
-- What a build needs to know about one model, in one snapshot: its index as it exists
-- (none, valid or not: a CONCURRENTLY build that failed or was killed leaves an INVALID
-- index), its vectors, its open jobs, and whether an ingest is feeding it (each `pgclip
-- ingest` into a model without its index holds a shared advisory lock on (ingest_class,
-- model id) for its whole run, so that the index waits for the ingest's last image).
SELECT (SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%(index)s)) AS valid,
       EXISTS (SELECT 1 FROM pgclip.embeddings e WHERE e.model_id = %(model_id)s) AS has_vectors,
       EXISTS (SELECT 1 FROM pgclip.embedding_jobs j
               WHERE j.model_id = %(model_id)s AND j.state IN ('pending', 'leased')) AS backlog,
       EXISTS (SELECT 1 FROM pg_locks l
               WHERE l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND l.classid = %(ingest_class)s::int4::oid AND l.objid = %(model_id)s::int4::oid
                 AND l.objsubid = 2 AND l.granted)
           AS ingesting;

-- hold_for_ingest --
-- Taken by `pgclip ingest` for its run (a session lock: it outlives the ingest's batch
-- commits and ends with its connection, however the ingest ends). Shared: ingests never
-- wait for each other, and nobody takes it exclusively, so nobody waits for it either.
SELECT pg_advisory_lock_shared(%(ingest_class)s, %(model_id)s);

-- build_session --
-- For the build's session only (is_local false: CONCURRENTLY runs outside a transaction):
-- maintenance_work_mem as the server sets it, but at least the floor (an HNSW graph that
-- does not fit is built many times slower), and a server that checks every few seconds
-- that the builder is still there, so the build of a killed worker stops (its index is
-- left INVALID and rebuilt) instead of running on for minutes. Returns the memory used.
SELECT set_config('maintenance_work_mem',
                  CASE WHEN pg_size_bytes(current_setting('maintenance_work_mem')) < pg_size_bytes(%(floor)s)
                       THEN %(floor)s ELSE current_setting('maintenance_work_mem') END, false),
       set_config('client_connection_check_interval', '2s', false);

-- progress --
-- A build in progress on one of a model's index names: its phase and how far it is
-- (pg_stat_progress_create_index shows CONCURRENTLY builds with their index's oid).
SELECT p.phase, p.tuples_done, p.tuples_total, p.blocks_done, p.blocks_total
FROM pg_stat_progress_create_index p
WHERE p.index_relid = to_regclass(%(index)s);

-- build_record --
-- How the index was built (seconds, memory, vectors, when, by whom): a JSON comment on
-- the index itself, written by the deferred build, so it goes when the index goes.
SELECT obj_description(to_regclass(%(index)s), 'pg_class');
