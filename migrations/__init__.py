"""Alembic migrations of the pgclip schema."""
