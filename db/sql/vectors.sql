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
