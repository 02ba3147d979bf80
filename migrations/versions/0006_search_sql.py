"""search functions from db/sql/search.sql; NULL for any optional argument means its default

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

From here on the search functions' source is ``db/sql/search.sql``. This
migration applies a frozen copy of that file as it was at this revision
(``0006_search.sql`` beside it), so that later edits of the file cannot change
what an old migration does; a change to the file comes with a new migration
and a new copy (tests/integration/test_search_sql.py fails until it does).
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FROZEN = Path(__file__).with_name("0006_search.sql")


def upgrade() -> None:
    op.execute(FROZEN.read_text())


def downgrade() -> None:
    # 0004's search comes back from its migration's text (filter_sql and similar are unchanged).
    import importlib.util

    spec = importlib.util.spec_from_file_location("_pgclip_0004", Path(__file__).with_name("0004_index_choices.py"))
    previous = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(previous)
    op.execute(previous.SEARCH_SQL)
