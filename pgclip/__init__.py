"""pgclip: semantic image search that lives inside PostgreSQL."""

__version__ = "0.1.0"
