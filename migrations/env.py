"""Alembic environment: pgclip's schema, in the ``pgclip`` PostgreSQL schema.

The URL, in order: a connection handed in by ``pgclip migrate`` or a test
(``config.attributes["connection"]``), ``sqlalchemy.url`` if set, else the
URL pgclip itself would use (``PGCLIP_DATABASE_URL`` or the embedded server).
"""

import re
from logging.config import fileConfig

from alembic import context
from sqlalchemy import text

from pgclip.db.schema import SCHEMA, Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# Per-model vector indexes are created when a model is registered, not by a
# migration (their dimension and predicate depend on the model row).
MODEL_INDEX = re.compile(r"^embeddings_m\d+_\w+$")


def include_object(obj, name, type_, reflected, compare_to):
    if type_ == "index" and name and MODEL_INDEX.match(name):
        return False
    return True


def _configure(connection):
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table_schema=SCHEMA,
        include_schemas=True,
        include_name=lambda name, type_, parent: type_ != "schema" or name == SCHEMA,
        include_object=include_object,
        transaction_per_migration=True,
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from pgclip.core.settings import Settings
        from pgclip.db.engine import database_url

        url = database_url(Settings.from_env())
    from pgclip.db.engine import create_engine

    with create_engine(url, role="migrate").connect() as connection:
        _run(connection)


# One migrating process at a time (`pgclip migrate` run by two deploys at once, compose's
# one-shot beside a developer's): the second waits, then finds the schema at head. Without
# it the second failed on "relation images already exists" or a pg_type duplicate key.
LOCK = "SELECT pg_advisory_lock(hashtext('pgclip: migrations'))"
UNLOCK = "SELECT pg_advisory_unlock(hashtext('pgclip: migrations'))"


def _run(connection):
    connection.execute(text(LOCK))
    connection.commit()
    try:
        # The version table lives in our schema, which must exist before alembic looks for it.
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        connection.commit()
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        connection.rollback()  # a failed migration's transaction first, so that the unlock can run
        connection.execute(text(UNLOCK))
        connection.commit()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=Base.metadata,
                      version_table_schema=SCHEMA, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
