"""keep vectors inline: embeddings.embedding with STORAGE PLAIN

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

A 512-d vector is 2,056 bytes, over PostgreSQL's TOAST threshold, so by
default it is stored out of line and every distance computed outside the
index (filter-first ranking, similarities of caption-only hits) first fetches
it from the TOAST table. Measured on 100k vectors (benchmarks/search.py): the
1 % filter-first query went from 21.3 to 7.6 ms p50 with PLAIN storage. The
models table caps dimensions at 2,000, whose row (about 8.1 kB) still fits a
page. Rows already stored move inline when the table is rewritten (e.g.
VACUUM FULL); new rows are inline at once.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE pgclip.embeddings ALTER COLUMN embedding SET STORAGE PLAIN")


def downgrade() -> None:
    op.execute("ALTER TABLE pgclip.embeddings ALTER COLUMN embedding SET STORAGE EXTENDED")
