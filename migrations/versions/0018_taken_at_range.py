"""taken_at within the years every client reads back

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-08

PostgreSQL stores a timestamptz from 4713 BC to 294276 AD; Python's datetime (psycopg, the
API, the CLI) reads years 1 to 9999 only. An edit to ``"taken_at": "9999-12-31T23:59:59-12:00"``
(year 10000 in UTC) was stored, and from then on the image, and every search whose results
held it, failed with "timestamp too large". The API and import now refuse such times; this
constraint refuses them on every path (``core.times.EARLIEST`` .. ``LATEST``, a day inside
either end so that a session in any time zone reads them). A time stored already outside the
range is moved into the image's metadata as text (``taken_at_out_of_range``) and taken_at
cleared: nothing is lost, and the image can be read again.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RANGE = "taken_at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 23:59:59.999999+00'"  # db.schema.TAKEN_AT_RANGE

UPGRADE = f"""
UPDATE pgclip.images
SET metadata = metadata || jsonb_build_object('taken_at_out_of_range', (taken_at AT TIME ZONE 'UTC')::text || ' UTC'),
    taken_at = NULL
WHERE NOT ({RANGE});
ALTER TABLE pgclip.images ADD CONSTRAINT images_taken_at_range_check CHECK ({RANGE});
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("ALTER TABLE pgclip.images DROP CONSTRAINT images_taken_at_range_check")
