"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23

The pgclip schema: images, their bytes and thumbnails, captions with a
generated tsvector, the models table, vectors keyed by (image, model), and the
embedding queue. Per-model vector indexes are created when a model is
registered (``pgclip.db.models.ensure_model``), not here.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table('images',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('sha256', sa.Text(), nullable=False),
    sa.Column('source', sa.Text(), nullable=True, comment='original filename or path, as ingested'),
    sa.Column('byte_size', sa.BigInteger(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('format', sa.Text(), nullable=False, comment='PIL format name, e.g. JPEG'),
    sa.Column('mime', sa.Text(), nullable=False),
    sa.Column('taken_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('metadata', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.CheckConstraint("jsonb_typeof(metadata) = 'object'", name=op.f('images_metadata_object_check')),
    sa.CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name=op.f('images_sha256_hex_check')),
    sa.CheckConstraint('width > 0 AND height > 0', name=op.f('images_positive_size_check')),
    sa.PrimaryKeyConstraint('id', name=op.f('images_pkey')),
    sa.UniqueConstraint('sha256', name=op.f('images_sha256_key')),
    schema='pgclip'
    )
    op.create_index('images_metadata_idx', 'images', ['metadata'], unique=False, schema='pgclip', postgresql_using='gin', postgresql_ops={'metadata': 'jsonb_path_ops'})
    op.create_index('images_taken_at_idx', 'images', ['taken_at'], unique=False, schema='pgclip')
    op.create_table('models',
    sa.Column('id', sa.Integer(), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.Text(), nullable=False, comment='open_clip model name'),
    sa.Column('pretrained', sa.Text(), nullable=False, comment='open_clip pretrained tag, or sha256:<digest> of a local checkpoint'),
    sa.Column('dimension', sa.Integer(), nullable=False),
    sa.Column('state', sa.Text(), server_default=sa.text("'building'"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("state IN ('building', 'active', 'retired')", name=op.f('models_state_check')),
    sa.CheckConstraint('dimension BETWEEN 1 AND 2000', name=op.f('models_dimension_check')),
    sa.PrimaryKeyConstraint('id', name=op.f('models_pkey')),
    schema='pgclip'
    )
    op.create_index('models_name_pretrained_key', 'models', ['name', 'pretrained'], unique=True, schema='pgclip')
    op.create_index('models_one_active_key', 'models', ['state'], unique=True, schema='pgclip', postgresql_where=sa.text("state = 'active'"))
    op.create_table('captions',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('image_id', sa.BigInteger(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('ts_config', postgresql.REGCONFIG(), server_default=sa.text("'english'::regconfig"), nullable=False),
    sa.Column('tsv', postgresql.TSVECTOR(), sa.Computed('to_tsvector(ts_config, text)', persisted=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('length(text) > 0', name=op.f('captions_not_empty_check')),
    sa.ForeignKeyConstraint(['image_id'], ['pgclip.images.id'], name=op.f('captions_image_id_fkey'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('captions_pkey')),
    schema='pgclip'
    )
    op.create_index('captions_image_id_idx', 'captions', ['image_id'], unique=False, schema='pgclip')
    op.create_index('captions_image_text_key', 'captions', ['image_id', sa.literal_column('md5(text)')], unique=True, schema='pgclip')
    op.create_index('captions_tsv_idx', 'captions', ['tsv'], unique=False, schema='pgclip', postgresql_using='gin')
    op.create_table('embedding_jobs',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('image_id', sa.BigInteger(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('state', sa.Text(), server_default=sa.text("'pending'"), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('run_after', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False, comment='a pending job is not claimed before this (retry backoff)'),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True, comment='while leased: when the lease expires and the job may be claimed again'),
    sa.Column('locked_by', sa.Text(), nullable=True, comment='worker id holding the lease'),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('enqueued_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("(state = 'leased') = (lease_until IS NOT NULL AND locked_by IS NOT NULL)", name=op.f('embedding_jobs_lease_check')),
    sa.CheckConstraint("state IN ('pending', 'leased', 'done', 'failed')", name=op.f('embedding_jobs_state_check')),
    sa.CheckConstraint('attempts >= 0', name=op.f('embedding_jobs_attempts_check')),
    sa.ForeignKeyConstraint(['image_id'], ['pgclip.images.id'], name=op.f('embedding_jobs_image_id_fkey'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['model_id'], ['pgclip.models.id'], name=op.f('embedding_jobs_model_id_fkey'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('embedding_jobs_pkey')),
    schema='pgclip'
    )
    op.create_index('embedding_jobs_claim_idx', 'embedding_jobs', ['model_id', sa.literal_column('COALESCE(lease_until, run_after)'), 'id'], unique=False, schema='pgclip', postgresql_where=sa.text("state IN ('pending', 'leased')"))
    op.create_index('embedding_jobs_failed_idx', 'embedding_jobs', ['model_id'], unique=False, schema='pgclip', postgresql_where=sa.text("state = 'failed'"))
    op.create_index('embedding_jobs_image_id_idx', 'embedding_jobs', ['image_id'], unique=False, schema='pgclip')
    op.create_index('embedding_jobs_open_key', 'embedding_jobs', ['image_id', 'model_id'], unique=True, schema='pgclip', postgresql_where=sa.text("state IN ('pending', 'leased')"))
    op.create_table('embeddings',
    sa.Column('image_id', sa.BigInteger(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('embedding', Vector(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['pgclip.images.id'], name=op.f('embeddings_image_id_fkey'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['model_id'], ['pgclip.models.id'], name=op.f('embeddings_model_id_fkey'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('image_id', 'model_id', name=op.f('embeddings_pkey')),
    schema='pgclip'
    )
    op.create_index('embeddings_model_id_idx', 'embeddings', ['model_id'], unique=False, schema='pgclip')
    op.create_table('image_blobs',
    sa.Column('image_id', sa.BigInteger(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['pgclip.images.id'], name=op.f('image_blobs_image_id_fkey'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('image_id', name=op.f('image_blobs_pkey')),
    schema='pgclip'
    )
    op.create_table('thumbnails',
    sa.Column('image_id', sa.BigInteger(), nullable=False),
    sa.Column('mime', sa.Text(), server_default=sa.text("'image/webp'"), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['pgclip.images.id'], name=op.f('thumbnails_image_id_fkey'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('image_id', name=op.f('thumbnails_pkey')),
    schema='pgclip'
    )
    # Image bytes are already compressed (JPEG, PNG, WebP): store them out of line
    # without TOAST compression, which would only burn CPU.
    op.execute("ALTER TABLE pgclip.image_blobs ALTER COLUMN data SET STORAGE EXTERNAL")
    op.execute("ALTER TABLE pgclip.thumbnails ALTER COLUMN data SET STORAGE EXTERNAL")


def downgrade() -> None:
    # Dropping a table drops its indexes, the per-model vector indexes included.
    # The vector extension stays: other schemas in the database may use it.
    for table in ("thumbnails", "image_blobs", "embeddings", "embedding_jobs", "captions", "models", "images"):
        op.drop_table(table, schema="pgclip")
