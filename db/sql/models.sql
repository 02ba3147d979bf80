-- The models registry: which CLIP models a database knows, and the one that answers.
-- Sections start with `-- name --`; pgclip.db.queries loads them by name.
-- States: building (registered, vectors being made) -> active (exactly one) -> retired.
-- Each model's vector index is DDL composed in pgclip.db.models.index_ddl (its name,
-- dimension and storage type are identifiers and literals, not bindable values).

-- by_name --
SELECT id, name, pretrained, dimension, state, created_at, index_kind, storage, index_params
FROM pgclip.models WHERE name = %(name)s AND pretrained = %(pretrained)s;

-- exists --
-- False once the model was dropped (a worker started before the drop stops on it).
SELECT EXISTS (SELECT 1 FROM pgclip.models WHERE id = %(model_id)s);

-- by_id --
SELECT id, name, pretrained, dimension, state, created_at, index_kind, storage, index_params
FROM pgclip.models WHERE id = %(model_id)s;

-- active --
-- At most one row: a partial unique index on state = 'active' guarantees it.
SELECT id, name, pretrained, dimension, state, created_at, index_kind, storage, index_params
FROM pgclip.models WHERE state = 'active';

-- all --
SELECT id, name, pretrained, dimension, state, created_at, index_kind, storage, index_params
FROM pgclip.models ORDER BY id;

-- register --
-- Idempotent: a model registered again keeps its row, its state and its index settings.
-- Returns the id when the row is new (nothing when it was there).
INSERT INTO pgclip.models (name, pretrained, dimension, index_params)
VALUES (%(name)s, %(pretrained)s, %(dimension)s, %(index_params)s)
ON CONFLICT (name, pretrained) DO NOTHING
RETURNING id;

-- activate_if_none --
-- The first model a database sees answers searches; later ones wait to be activated.
UPDATE pgclip.models SET state = 'active'
WHERE id = %(model_id)s AND NOT EXISTS (SELECT 1 FROM pgclip.models WHERE state = 'active');

-- is_ready --
-- Registered, and some model active: nothing for ensure_model to do. (A model's index
-- is not ensure_model's business once the row exists: a missing one is deferred, built
-- when the backlog drains; see indexes.sql.)
SELECT EXISTS (SELECT 1 FROM pgclip.models WHERE state = 'active');

-- lock_active --
-- Serialises concurrent switches of the active model on the row being replaced.
SELECT id FROM pgclip.models WHERE state = 'active' FOR UPDATE;

-- lock_model --
-- Serialises changes to one model's row (drop, index settings) with a switch to it.
SELECT state FROM pgclip.models WHERE id = %(model_id)s FOR UPDATE;

-- has_vectors --
SELECT EXISTS (SELECT 1 FROM pgclip.embeddings WHERE model_id = %(model_id)s);

-- set_state --
UPDATE pgclip.models SET state = %(state)s WHERE id = %(model_id)s;

-- retire_active --
-- Run in the same transaction as set_state(active) for the new model, after
-- lock_active: searches see the old model or the new one, never none.
UPDATE pgclip.models SET state = 'retired' WHERE state = 'active';

-- set_index --
-- What `pgclip index rebuild` changed; written in the transaction that swaps the indexes.
UPDATE pgclip.models SET index_kind = %(kind)s, storage = %(storage)s, index_params = %(params)s
WHERE id = %(model_id)s;

-- image_count --
SELECT count(*) FROM pgclip.images;

-- vector_count --
SELECT count(*) FROM pgclip.embeddings WHERE model_id = %(model_id)s;

-- vector_counts --
SELECT model_id, count(*) FROM pgclip.embeddings GROUP BY model_id;

-- delete --
-- Its vectors and queue rows go with it (ON DELETE CASCADE); its index is dropped by the caller.
DELETE FROM pgclip.models WHERE id = %(model_id)s;

-- activation_gap --
-- The collection's images, and those a model has no vector for: how many, how many of
-- those failed for it, and how many of those no model can embed (its job failed and no
-- model has the image's vector: bytes that are not an image, say). Activating over the
-- last loses no search result.
SELECT (SELECT count(*) FROM pgclip.images) AS images,
       count(*) AS missing,
       count(*) FILTER (WHERE f.failed) AS failed,
       count(*) FILTER (WHERE f.failed AND NOT EXISTS (SELECT 1 FROM pgclip.embeddings e WHERE e.image_id = i.id))
           AS unembeddable
FROM pgclip.images i
CROSS JOIN LATERAL (SELECT EXISTS (SELECT 1 FROM pgclip.embedding_jobs j WHERE j.image_id = i.id
                                   AND j.model_id = %(model_id)s AND j.state = 'failed') AS failed) f
WHERE NOT EXISTS (SELECT 1 FROM pgclip.embeddings e WHERE e.image_id = i.id AND e.model_id = %(model_id)s);
