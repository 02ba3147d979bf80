"""images added with SQL alone: queued for the workers, validated and completed by them

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

``pgclip.image_inbox`` takes rows by INSERT or COPY and a statement-level trigger turns
each statement's rows into images, bytes, captions and queue rows; ``pgclip.add_image``
does the same for one image and returns its id. SQL cannot decode an image, so width,
height, format and mime become nullable: the worker that embeds an SQL-added image
fills them in (with taken_at and the EXIF facts); meanwhile images_with_captions gives
such an image no orientation (it said 'square' for any size it could not compare). The NOLOGIN role ``pgclip_writer``
may insert into the inbox and call add_image, and nothing else. Applies a frozen copy
of db/sql/sql_ingest.sql (``0009_sql_ingest.sql``).
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PROBED_COLUMNS = ("width", "height", "format", "mime")  # what only decoding the bytes can tell

INBOX_SQL = """
CREATE TABLE pgclip.image_inbox (
    id bigint GENERATED ALWAYS AS IDENTITY,
    data bytea NOT NULL,
    source text,
    captions text[] NOT NULL DEFAULT '{}',
    metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
    sha256 text GENERATED ALWAYS AS (encode(sha256(data), 'hex')) STORED,
    CONSTRAINT image_inbox_pkey PRIMARY KEY (id),
    CONSTRAINT image_inbox_metadata_object_check CHECK (jsonb_typeof(metadata) = 'object')
);
COMMENT ON TABLE pgclip.image_inbox IS
    'INSERT or COPY (data, source, captions, metadata) here to add images with SQL; rows are taken at once';
"""

# The view said 'square' for an image of unknown size; it now says NULL until a worker knows.
VIEW_SQL = """
CREATE OR REPLACE VIEW pgclip.images_with_captions AS
SELECT i.id, i.source, i.width, i.height, i.format, i.mime, i.byte_size, i.taken_at, i.created_at, i.metadata,
       {orientation} AS orientation,
       coalesce(array_agg(c.text ORDER BY c.id) FILTER (WHERE c.id IS NOT NULL), '{{}}') AS captions,
       (SELECT j.state FROM pgclip.embedding_jobs j JOIN pgclip.models m ON m.id = j.model_id AND m.state = 'active'
        WHERE j.image_id = i.id ORDER BY j.id DESC LIMIT 1) AS embedding_state
FROM pgclip.images i
LEFT JOIN pgclip.captions c ON c.image_id = i.id
GROUP BY i.id;
"""
ORIENTATION = ("CASE WHEN i.width > i.height THEN 'landscape' WHEN i.width < i.height THEN 'portrait'"
               " WHEN i.width = i.height THEN 'square' END")
ORIENTATION_0002 = "CASE WHEN i.width > i.height THEN 'landscape' WHEN i.width < i.height THEN 'portrait' ELSE 'square' END"

ROLE_SQL = """
DO $$
BEGIN
    -- Roles are cluster-wide: another pgclip database on this server may have made it.
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgclip_writer') THEN
        CREATE ROLE pgclip_writer NOLOGIN;
    END IF;
END
$$;
-- Functions are executable by PUBLIC unless revoked: only the writer may add images.
REVOKE ALL ON FUNCTION pgclip.add_image(bytea, text, text[], jsonb), pgclip.take_inbox() FROM PUBLIC;
GRANT USAGE ON SCHEMA pgclip TO pgclip_writer;
GRANT INSERT (data, source, captions, metadata) ON pgclip.image_inbox TO pgclip_writer;
GRANT EXECUTE ON FUNCTION pgclip.add_image(bytea, text, text[], jsonb) TO pgclip_writer;
"""


def upgrade() -> None:
    for column in PROBED_COLUMNS:
        op.alter_column("images", column, nullable=True, schema="pgclip")
    op.execute(INBOX_SQL)
    op.execute(Path(__file__).with_name("0009_sql_ingest.sql").read_text())
    op.execute(ROLE_SQL)
    op.execute(VIEW_SQL.format(orientation=ORIENTATION))


def downgrade() -> None:
    op.execute(VIEW_SQL.format(orientation=ORIENTATION_0002))
    op.execute("DROP TABLE pgclip.image_inbox")  # and its trigger
    op.execute("DROP FUNCTION pgclip.add_image(bytea, text, text[], jsonb)")
    op.execute("DROP FUNCTION pgclip.take_inbox()")
    op.execute("REVOKE ALL ON SCHEMA pgclip FROM pgclip_writer")
    # The role stays while another database on this server still grants it something.
    op.execute(
        "DO $$ BEGIN DROP ROLE IF EXISTS pgclip_writer;"
        " EXCEPTION WHEN dependent_objects_still_exist THEN NULL; END $$"
    )
    # Fails while an image added with SQL waits for a worker to fill these in: embed it
    # (or delete it) first.
    for column in PROBED_COLUMNS:
        op.alter_column("images", column, nullable=False, schema="pgclip")
