-- The shared cache of query-text vectors and the text requests the workers answer, as
-- Python reads and writes them (db/text_vectors.py). The SQL functions analysts call
-- (pgclip.embed_text, pgclip.search_text) are in text.sql.
-- A text is found by md5(text) (the unique index's expression: a B-tree entry must stay
-- under ~2.7 kB) and then by the text itself, so a collision cannot answer another text.

-- cached --
-- A text's vector under one model, if cached; its recency is refreshed at most once a
-- minute, so that hits stay cheap and eviction still sees what is in use.
WITH hit AS (
    SELECT v.id, v.embedding, v.last_used FROM pgclip.text_vectors v
    WHERE v.model_id = %(model_id)s AND md5(v.text) = md5(%(text)s) AND v.text = %(text)s
), touched AS (
    UPDATE pgclip.text_vectors v SET last_used = now()
    FROM hit WHERE v.id = hit.id AND hit.last_used < now() - interval '1 minute'
)
SELECT hit.embedding FROM hit

-- store --
-- Cache one text's vector (an upsert: two processes may embed the same text at once).
INSERT INTO pgclip.text_vectors (model_id, text, embedding)
VALUES (%(model_id)s, %(text)s, %(embedding)s)
ON CONFLICT (model_id, md5(text)) DO UPDATE SET embedding = EXCLUDED.embedding, last_used = now()

-- evict --
-- Keep the model's most recently used texts, delete the rest (the LRU index walks the
-- kept rows backwards, so this costs a scan of `keep` index entries).
DELETE FROM pgclip.text_vectors
WHERE id IN (SELECT v.id FROM pgclip.text_vectors v WHERE v.model_id = %(model_id)s
             ORDER BY v.last_used DESC, v.id DESC OFFSET %(keep)s)

-- claim_requests --
-- A worker's share of a model's open text requests, locked until its transaction ends:
-- concurrent workers skip each other's, and a worker that dies leaves them to the next.
SELECT r.id, r.text FROM pgclip.text_requests r
WHERE r.model_id = %(model_id)s AND r.error IS NULL
ORDER BY r.id
FOR UPDATE SKIP LOCKED
LIMIT %(limit)s

-- answered --
-- The vectors are stored: the requests are done (pgclip.embed_text reads the cache).
DELETE FROM pgclip.text_requests WHERE id = ANY(%(ids)s)

-- refuse --
-- The model could not embed these texts: the waiting function reads the reason and ends.
UPDATE pgclip.text_requests SET error = %(error)s WHERE id = ANY(%(ids)s)
