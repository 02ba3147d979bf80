"""Running alembic from code, and checking that a database is at the code's schema head."""

from __future__ import annotations

from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from pgclip.db.engine import create_engine
from pgclip.errors import SchemaNotReady



def _migrations_dir() -> Path:
    # Editable installs keep the repository layout; a wheel installs pgclip.migrations.
    import pgclip.migrations

    return Path(pgclip.migrations.__file__).resolve().parent


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_migrations_dir()))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logging"] = False
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()  # type: ignore[return-value]


def upgrade(url: str, revision: str = "head") -> None:
    _run(url, command.upgrade, revision)


def downgrade(url: str, revision: str) -> None:
    _run(url, command.downgrade, revision)


def _run(url: str, fn, revision: str) -> None:
    cfg = alembic_config()
    with create_engine(url, role="migrate").connect() as connection:
        cfg.attributes["connection"] = connection
        fn(cfg, revision)


def current_revision(conn: psycopg.Connection) -> str | None:
    exists = conn.execute("SELECT to_regclass('pgclip.alembic_version') IS NOT NULL").fetchone()[0]
    if not exists:
        return None
    row = conn.execute("SELECT version_num FROM pgclip.alembic_version").fetchone()
    return row[0] if row else None


def require_head(conn: psycopg.Connection) -> None:
    """Raise :class:`SchemaNotReady` (saying how to fix it) unless the schema is at head."""
    current, head = current_revision(conn), head_revision()
    if current != head:
        state = "not migrated" if current is None else f"at revision {current}, this pgclip expects {head}"
        raise SchemaNotReady(f"the database schema is {state}: run `pgclip migrate`")
