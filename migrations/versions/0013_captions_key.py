"""captions keyed by (image_id, id): ready to be distributed by image_id

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07

Citus distributes a table only when its primary and unique keys include the distribution
column; every table about an image is to be distributed by ``image_id`` (docs/scaling.md), and
``captions`` was the one keyed without it. Every statement on captions names its image, so the
new key serves them all and ``captions_image_id_idx`` (image_id alone) goes. Cheaper now than at
the move: it is one index build over captions.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("""
        ALTER TABLE pgclip.captions
            DROP CONSTRAINT captions_pkey,
            ADD CONSTRAINT captions_pkey PRIMARY KEY (image_id, id);
        DROP INDEX pgclip.captions_image_id_idx;
    """)


def downgrade() -> None:
    op.execute("""
        CREATE INDEX captions_image_id_idx ON pgclip.captions (image_id);
        ALTER TABLE pgclip.captions
            DROP CONSTRAINT captions_pkey,
            ADD CONSTRAINT captions_pkey PRIMARY KEY (id);
    """)
