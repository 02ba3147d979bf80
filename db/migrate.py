"""Running alembic from code, and checking that a database is at the code's schema head."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from pgclip.core.errors import SchemaNotReady

if TYPE_CHECKING:
    from alembic.config import Config

# The newest revision in migrations/versions. Every process checks the database against it at
# start-up, so it is a constant rather than alembic's answer: importing alembic and reading
# every revision file costs a command like `pgclip ingest` a third of its start-up.
# tests/integration/test_schema.py checks that alembic agrees.
SCHEMA_HEAD = "0018"


def _migrations_dir() -> Path:
    # Editable installs keep the repository layout; a wheel installs pgclip.migrations.
    import pgclip.migrations

    return Path(pgclip.migrations.__file__).resolve().parent


def alembic_config(url: str | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_migrations_dir()))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logging"] = False
    return cfg


def head_revision() -> str:
    """The head according to alembic, from the revision files (:data:`SCHEMA_HEAD` is the fast answer)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()  # type: ignore[return-value]


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    _run(url, command.upgrade, revision)


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    _run(url, command.downgrade, revision)


def _run(url: str, fn, revision: str) -> None:
    from pgclip.db.engine import create_engine

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


def newer_than_code(current: str | None) -> bool:
    """Whether the database was migrated by a newer pgclip (revisions are numbered 0001, 0002, ...)."""
    return bool(current and current.isdigit() and int(current) > int(SCHEMA_HEAD))


def require_not_newer(conn: psycopg.Connection) -> None:
    """Raise :class:`SchemaNotReady` when the database is at a revision this code does not have
    (a newer pgclip migrated it): `pgclip migrate` cannot help, and must not try."""
    current = current_revision(conn)
    if newer_than_code(current):
        raise SchemaNotReady(f"the database schema is at revision {current}, newer than this pgclip's "
                             f"{SCHEMA_HEAD}: run the pgclip that migrated it (or a newer one)")


def require_head(conn: psycopg.Connection) -> None:
    """Raise :class:`SchemaNotReady` (saying how to fix it) unless the schema is at head."""
    require_not_newer(conn)
    current, head = current_revision(conn), SCHEMA_HEAD
    if current != head:
        state = "not migrated" if current is None else f"at revision {current}, this pgclip expects {head}"
        raise SchemaNotReady(f"the database schema is {state}: run `pgclip migrate`")
