"""shared frames: a video's frame that is an image stored already stays one of its frames

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

An image belongs to at most one video (``images.video_id``), and images are unique by the
sha256 of their bytes. Until now a video whose sampled frame had the bytes of an image
already stored (the same film in another container, a black opening frame, a still scene
two videos share) simply lost that frame: the second video listed none of those frames,
and deleting the first video then took them from the second as well. ``shared_frames``
records each such frame (video, image, time); a video's frames are the images it owns and
the ones it shares. When a video is deleted (by any path: API, CLI, sync, SQL), a trigger
first hands each frame it owns that another video shares over to that video (its
``video_id``, ``video_ts`` and ``source``), so that only frames no other video has go with
it. Databases ingested before this revision have no record of the frames they skipped.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = """
CREATE TABLE pgclip.shared_frames (
    video_id bigint NOT NULL,
    image_id bigint NOT NULL,
    video_ts double precision NOT NULL,
    CONSTRAINT shared_frames_pkey PRIMARY KEY (video_id, image_id),
    CONSTRAINT shared_frames_video_id_fkey FOREIGN KEY (video_id) REFERENCES pgclip.videos (id) ON DELETE CASCADE,
    CONSTRAINT shared_frames_image_id_fkey FOREIGN KEY (image_id) REFERENCES pgclip.images (id) ON DELETE CASCADE,
    CONSTRAINT shared_frames_video_ts_check CHECK (video_ts >= 0)
);
COMMENT ON TABLE pgclip.shared_frames IS
    'a frame of a video whose bytes are an image stored already (another video''s frame, or a picture)';
COMMENT ON COLUMN pgclip.shared_frames.video_ts IS 'seconds from the start of this video';
CREATE INDEX shared_frames_image_id_idx ON pgclip.shared_frames (image_id);

CREATE FUNCTION pgclip.hand_over_shared_frames() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Before a video goes: each frame it owns that another video shares becomes that video's
    -- (the first to have shared it), so the cascade takes only the frames no one else has.
    WITH heir AS (
        SELECT DISTINCT ON (s.image_id) s.image_id, s.video_id, s.video_ts, v.source, v.source_bytes
        FROM pgclip.shared_frames s
        JOIN pgclip.images i ON i.id = s.image_id
        JOIN pgclip.videos v ON v.id = s.video_id
        WHERE i.video_id = OLD.id
        ORDER BY s.image_id, s.video_id
    ),
    moved AS (
        UPDATE pgclip.images i
        SET video_id = h.video_id, video_ts = h.video_ts, source = h.source, source_bytes = h.source_bytes
        FROM heir h
        WHERE i.id = h.image_id
        RETURNING i.id, i.video_id
    )
    DELETE FROM pgclip.shared_frames s USING moved m WHERE s.image_id = m.id AND s.video_id = m.video_id;
    RETURN OLD;
END
$$;
CREATE TRIGGER videos_hand_over_shared_frames BEFORE DELETE ON pgclip.videos
    FOR EACH ROW EXECUTE FUNCTION pgclip.hand_over_shared_frames();
"""

DOWNGRADE = """
DROP TRIGGER videos_hand_over_shared_frames ON pgclip.videos;
DROP FUNCTION pgclip.hand_over_shared_frames();
DROP TABLE pgclip.shared_frames;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
