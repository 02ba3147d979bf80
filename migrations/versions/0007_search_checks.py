"""search checks every bound the search request's definition gives, and refuses unknown options

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

``pgclip.search`` now refuses an option key it does not know (as filter_sql always
refused unknown filters), ``min_similarity`` outside -1..1, ``max_drop`` outside 0..2;
``filter_sql`` refuses ``min_width``/``min_height`` outside 1..1000000 and
``exclude_ids`` outside 1..2^62; the default ``ef_search`` is capped at HNSW's 1000, so
a window over 1000 no longer fails. The bounds are those of
``pgclip.core.search_request`` (tests/integration/test_search_contract.py).
Applies a frozen copy of db/sql/search.sql (``0007_search.sql``).
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(Path(__file__).with_name("0007_search.sql").read_text())


def downgrade() -> None:
    op.execute(Path(__file__).with_name("0006_search.sql").read_text())
