"""HNSW graphs chosen by the collection's size: models that kept pgvector's defaults follow it

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

Until now every model's row fixed its HNSW graph, m 16 / ef_construction 64, whether or not
anyone chose it (PGCLIP_HNSW_M / PGCLIP_HNSW_EF_CONSTRUCTION had those defaults). A row now
fixes only what someone chose; a build takes the rest from the model's vectors
(pgclip.db.models.hnsw_graph: at 1M vectors 16/64 misses recall 0.97). Rows holding exactly
the old defaults become rows that choose by size; other values stay fixed. Nothing is rebuilt
here: a built index keeps its graph until `pgclip index rebuild` (which `pgclip index` then
advises once the collection has outgrown it).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("""
        UPDATE pgclip.models SET index_params = index_params - 'm' - 'ef_construction'
        WHERE index_params @> '{"m": 16, "ef_construction": 64}';
    """)


def downgrade() -> None:
    # The code before this revision reads a missing m / ef_construction as 16 / 64 anyway.
    op.execute("""
        UPDATE pgclip.models SET index_params = '{"m": 16, "ef_construction": 64}'::jsonb || index_params
        WHERE index_kind = 'hnsw';
    """)
