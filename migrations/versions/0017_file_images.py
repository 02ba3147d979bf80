"""file_images: the images of each synced file, a video's shared frames included

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08

A folder's images (the folder filter of ``pgclip.search``, ``pgclip search-in``'s queueing
and progress) were a picture file's image and the frames its videos own: a frame a video
shares with another video (``pgclip.shared_frames``, 0015) was found only under the folder
of the video that owns it, so the same film in two folders, one of them a copy in another
container, was missing from the second folder's searches. ``pgclip.file_images`` names
every image of every synced file (path, missing_since, image_id) in one place: a picture's
own image, the frames a video owns, and those it shares. The analyst role may read it, and
the videos and shared frames, which it had no grant for. Applies a frozen copy of
db/sql/search.sql (``0017_search.sql``).
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = """
CREATE VIEW pgclip.file_images AS
SELECT f.path, f.missing_since, f.image_id
FROM pgclip.files f
WHERE f.image_id IS NOT NULL
UNION ALL
SELECT f.path, f.missing_since, i.id
FROM pgclip.files f
JOIN pgclip.images i ON i.video_id = f.video_id
UNION ALL
SELECT f.path, f.missing_since, s.image_id
FROM pgclip.files f
JOIN pgclip.shared_frames s ON s.video_id = f.video_id;
COMMENT ON VIEW pgclip.file_images IS
    'Every image of a synced file: a picture''s own, the frames a video owns and those it shares '
    '(an image under two paths is listed twice)';
-- The analyst's folder filter reads the view; the videos' descriptions (not their bytes) and
-- the frames they share are as readable as the images are.
GRANT SELECT ON pgclip.file_images, pgclip.videos, pgclip.shared_frames TO pgclip_analyst;
-- A trigger's function, which nobody calls (0015 left it to PUBLIC, as CREATE FUNCTION does).
REVOKE ALL ON FUNCTION pgclip.hand_over_shared_frames() FROM PUBLIC;
"""


def upgrade() -> None:
    op.execute(UPGRADE)
    op.execute(Path(__file__).with_name("0017_search.sql").read_text())


def downgrade() -> None:
    op.execute(Path(__file__).with_name("0016_search.sql").read_text())
    op.execute("GRANT EXECUTE ON FUNCTION pgclip.hand_over_shared_frames() TO PUBLIC")
    op.execute("REVOKE SELECT ON pgclip.videos, pgclip.shared_frames FROM pgclip_analyst")
    op.execute("DROP VIEW pgclip.file_images")
