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
