"""SQL search arguments checked as the API checks them

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07

``pgclip.search`` (and ``search_text``, ``similar``) now answer the API's way where they
answered something else from SQL: a zero query vector is an error and one far from unit
length is scaled to it (its distances overflowed to NaN, which the similarity cut-offs let
through); no query at all is an error, not an empty result; ``k`` past 100 is the range
error, not "integer out of range"; ``taken_after`` / ``taken_before`` must be ISO 8601
dates (PostgreSQL's 'yesterday' is refused, garbage is a one-line error instead of a cast
error quoting the generated query); ``format`` must be a name or a non-empty list of them;
``exclude_ids`` a list of ids. A text request no int8 worker answered hints at PGCLIP_ENCODER=onnx-int8.
Applies frozen copies of db/sql/search.sql and db/sql/text.sql
(``0016_search.sql``, ``0016_text.sql``).
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(Path(__file__).with_name("0016_search.sql").read_text())
    op.execute(Path(__file__).with_name("0016_text.sql").read_text())


def downgrade() -> None:
    op.execute(Path(__file__).with_name("0012_search.sql").read_text())
    op.execute(Path(__file__).with_name("0008_text.sql").read_text())
