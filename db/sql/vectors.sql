-- Reading stored vectors whole, for the page's map and similarity heat-map.
-- Sections start with `-- name --`; pgclip.db.queries loads them by name.
-- Searching them is pgclip.search (search.sql), not these.

-- stamp --
-- Changes whenever a model's vectors do (one added, one removed), so a figure
-- computed from them can be kept until it does.
SELECT count(*) AS count, max(created_at) AS newest FROM pgclip.embeddings WHERE model_id = %(model_id)s;

-- all --
SELECT image_id, embedding FROM pgclip.embeddings WHERE model_id = %(model_id)s ORDER BY image_id;

-- sample --
-- A fixed sample: ordering by a hash of the id keeps the same images from one
-- call to the next, so the map does not reshuffle as vectors are added.
SELECT image_id, embedding FROM (
    SELECT image_id, embedding FROM pgclip.embeddings WHERE model_id = %(model_id)s
    ORDER BY hashint8(image_id), image_id LIMIT %(limit)s
) s ORDER BY image_id;

-- of_images --
SELECT image_id, embedding FROM pgclip.embeddings
WHERE model_id = %(model_id)s AND image_id = ANY(%(image_ids)s::bigint[]);

-- metadata_values --
-- The map's colours: each point's value for one top-level metadata key, in the
-- order of the ids given (one row per id, NULL where the key is missing, holds
-- JSON null, or the image is gone). Strings as they are, numbers, booleans,
-- arrays and objects as their JSON text; cut to max_chars so a long value
-- cannot swell a 20k-point answer. Read per request: a metadata edit recolours
-- the map without touching its (cached) coordinates.
SELECT CASE jsonb_typeof(i.metadata -> %(key)s)
           WHEN 'string' THEN left(i.metadata ->> %(key)s, %(max_chars)s)
           WHEN 'null' THEN NULL
           ELSE left((i.metadata -> %(key)s)::text, %(max_chars)s)
       END AS value
FROM unnest(%(ids)s::bigint[]) WITH ORDINALITY AS p(id, n)
LEFT JOIN pgclip.images i ON i.id = p.id
ORDER BY p.n;

-- metadata_keys --
-- The top-level metadata keys of these images, most common first, for the map's
-- "Colour by" suggestions; capped, since a collection may hold a key per image.
SELECT k.key
FROM pgclip.images i, jsonb_object_keys(i.metadata) AS k(key)
WHERE i.id = ANY(%(ids)s::bigint[])
GROUP BY k.key
ORDER BY count(*) DESC, k.key
LIMIT %(limit)s;
