-- Videos and their frames (migration 0010): storing a video with its sampled frames,
-- reading a frame's video for search results and the image page, and serving the bytes.
-- Sections start with `-- name --`; pgclip.db.queries loads them by name.

-- insert_video --
-- A video is identified by the sha256 of its bytes: ingesting it again adds nothing
-- (no row returned; `video_by_sha256` finds the stored one).
INSERT INTO pgclip.videos (sha256, source, source_bytes, byte_size, mime, container, duration_s,
                           frame_interval_s, width, height)
VALUES (%(sha256)s, %(source)s, %(source_bytes)s, %(byte_size)s, %(mime)s, %(container)s, %(duration_s)s,
        %(frame_interval_s)s, %(width)s, %(height)s)
ON CONFLICT (sha256) DO NOTHING
RETURNING id;

-- video_by_sha256 --
SELECT id FROM pgclip.videos WHERE sha256 = %(sha256)s;

-- insert_video_blob --
INSERT INTO pgclip.video_blobs (video_id, data) VALUES (%(video_id)s, %(data)s);

-- insert_frames --
-- Frames are images (the workers embed them like any other), each naming its video and
-- time. A frame whose JPEG is byte for byte an image already stored (a black frame two
-- videos share, a still scene) is that image: it is skipped here, not stored twice.
INSERT INTO pgclip.images (sha256, source, source_bytes, byte_size, width, height, format, mime, taken_at,
                           video_id, video_ts)
SELECT f.sha256, %(source)s, %(source_bytes)s, f.byte_size, f.width, f.height, 'JPEG', 'image/jpeg', f.taken_at,
       %(video_id)s, f.video_ts
FROM unnest(%(sha256)s::text[], %(byte_size)s::bigint[], %(width)s::int[], %(height)s::int[],
            %(taken_at)s::timestamptz[], %(video_ts)s::float8[])
     AS f(sha256, byte_size, width, height, taken_at, video_ts)
ON CONFLICT (sha256) DO NOTHING
RETURNING id, sha256;

-- share_frames --
-- The frames that were skipped as images stored already (by another video, or as pictures):
-- this video shares them (migration 0015), so it lists them among its frames and inherits
-- them when their owner is deleted. Frames this video owns already are left out.
INSERT INTO pgclip.shared_frames (video_id, image_id, video_ts)
SELECT %(video_id)s, i.id, f.video_ts
FROM unnest(%(sha256)s::text[], %(video_ts)s::float8[]) AS f(sha256, video_ts)
JOIN pgclip.images i ON i.sha256 = f.sha256
WHERE i.video_id IS DISTINCT FROM %(video_id)s
ON CONFLICT (video_id, image_id) DO NOTHING
RETURNING image_id;

-- insert_frame_blobs --
INSERT INTO pgclip.image_blobs (image_id, data)
SELECT * FROM unnest(%(image_ids)s::bigint[], %(data)s::bytea[]);

-- frame_ids --
-- A video's frames, in time order: the images it owns and, unless only those are asked
-- for, those it shares with another video or a picture (pgclip.shared_frames).
SELECT id
FROM (SELECT id, video_ts FROM pgclip.images WHERE video_id = %(video_id)s
      UNION ALL
      SELECT image_id, video_ts FROM pgclip.shared_frames WHERE video_id = %(video_id)s AND NOT %(own)s) AS f
ORDER BY video_ts, id;

-- frames_of --
-- The video of each image that is a frame (pictures are left out): what search results,
-- `pgclip search` and the image page show beside a frame.
SELECT i.id AS image_id, v.id AS video_id, i.video_ts AS ts, v.source, v.mime, v.duration_s
FROM pgclip.images i
JOIN pgclip.videos v ON v.id = i.video_id
WHERE i.id = ANY(%(image_ids)s::bigint[]);

-- video --
-- One video as the API describes it, with how many of its frames are stored.
SELECT v.id, v.sha256, v.source, v.byte_size, v.mime, v.container, v.duration_s, v.frame_interval_s,
       v.width, v.height, v.created_at,
       (SELECT count(*) FROM pgclip.images i WHERE i.video_id = v.id)
       + (SELECT count(*) FROM pgclip.shared_frames s WHERE s.video_id = v.id) AS frames
FROM pgclip.videos v
WHERE v.id = %(video_id)s;

-- stored_size --
-- The length of the stored bytes (what a Range request is checked against) and their type;
-- size null for a video without bytes (one that came from `pgclip import`).
SELECT octet_length(b.data) AS size, v.mime
FROM pgclip.videos v LEFT JOIN pgclip.video_blobs b ON b.video_id = v.id
WHERE v.id = %(video_id)s;

-- read_range --
-- One piece of the bytes: the column is stored uncompressed (migration 0010), so
-- PostgreSQL reads only the TOAST chunks that hold it, whatever the video's size.
SELECT substring(data FROM %(start)s::int + 1 FOR %(length)s::int)
FROM pgclip.video_blobs
WHERE video_id = %(video_id)s;

-- delete_videos --
-- The frames go with their video (images.video_id ON DELETE CASCADE), and with them their
-- bytes, thumbnails, captions, vectors and queue rows; the bytes of the video too. A frame
-- another video shares is first handed over to it (trigger, migration 0015) and stays.
DELETE FROM pgclip.videos WHERE id = ANY(%(video_ids)s::bigint[]) RETURNING id;
