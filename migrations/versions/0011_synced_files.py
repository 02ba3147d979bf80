"""synced folders: which file on disk is which image, and a search filter by folder

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

(Skeleton: filled in by the sync work of #20.)
"""

from collections.abc import Sequence

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
