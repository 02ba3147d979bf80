"""broad filters: a vector-only search reads only the candidates its page needs

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

``pgclip.search`` ranked by the vector alone and by relevance takes the first ``offset + k``
candidates instead of the whole window when they come in exact distance order: from an exact sort,
or from the HNSW index in ``strict_order`` when its first pass should hold 2 k rows that pass the
filters (its ``ef_search`` is raised to 4 k / share, at most 1000, for that; sorts are priced out of
that statement so that every page, however deep, takes the index and the pages agree). The share comes from
the new ``pgclip.filter_share``: the planner's estimate, no rows read. A broad filter (10 % of the
images) no longer walks the graph for 200 passing rows to show 10 (issue #19, benchmarks/README.md).
Applies a frozen copy of db/sql/search.sql (``0012_search.sql``).
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(Path(__file__).with_name("0012_search.sql").read_text())
    op.execute("GRANT EXECUTE ON FUNCTION pgclip.filter_share(jsonb) TO pgclip_analyst")


def downgrade() -> None:
    op.execute(Path(__file__).with_name("0011_search.sql").read_text())
    op.execute("DROP FUNCTION pgclip.filter_share(jsonb)")
