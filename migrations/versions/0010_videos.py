"""videos: frames sampled from a video become images that know their video and timestamp

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

(Skeleton: filled in by the video work of #20.)
"""

from collections.abc import Sequence

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
