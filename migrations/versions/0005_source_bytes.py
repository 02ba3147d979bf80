"""file names that are not UTF-8: images.source_bytes keeps their exact bytes

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

A POSIX file name is bytes; old archives hold latin-1 names that are not valid
UTF-8, and PostgreSQL text can hold neither those bytes nor the lone
surrogates Python decodes them to. ``source`` keeps a readable form of such a
name (each undecodable byte written ``\\xNN``) for the CLI, the API and the
page; ``source_bytes`` keeps the name's exact bytes, and only for those names,
so the original is always ``coalesce(source_bytes, convert_to(source, 'UTF8'))``.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COMMENT = "the exact bytes of source when they are not valid UTF-8 (source then escapes them as \\xNN); else null"


def upgrade() -> None:
    op.execute("ALTER TABLE pgclip.images ADD COLUMN source_bytes bytea")
    op.execute(f"COMMENT ON COLUMN pgclip.images.source_bytes IS '{COMMENT}'")


def downgrade() -> None:
    op.execute("ALTER TABLE pgclip.images DROP COLUMN source_bytes")
