"""Reaching the database: which URL, connections that name themselves, errors translated once."""

from __future__ import annotations

import enum
import os
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import psycopg
from pgvector.psycopg import register_vector
from psycopg.rows import Row

from pgclip.core.errors import ConfigError, DatabaseUnavailable, InvalidInput, PgclipError
from pgclip.core.settings import Settings, mask_url

if TYPE_CHECKING:
    import sqlalchemy

CONNECT_TIMEOUT = 10  # seconds; an unreachable host should fail fast, not hang


def embedded_server(settings: Settings):  # -> EmbeddedPostgres
    from pgclip.db.embedded import EmbeddedPostgres

    return EmbeddedPostgres(settings.data_dir / "postgres", shared_buffers=settings.pg_shared_buffers,
                            maintenance_work_mem=settings.pg_maintenance_work_mem)


def reviver(settings: Settings) -> Callable[[], None] | None:
    """For the embedded server (no PGCLIP_DATABASE_URL): a callable that starts it again if it
    crashed, for processes that wait out outages (db.embedded.Reviver); None for a server of
    the operator's own, which pgclip never starts."""
    if settings.database_url:
        return None
    from pgclip.db.embedded import Reviver

    return Reviver(embedded_server(settings))


def database_url(settings: Settings, *, start: bool = True) -> str:
    """The database to use: ``PGCLIP_DATABASE_URL``, else the embedded server (started if needed)."""
    if settings.database_url:
        return _plain_url(settings.database_url)
    server = embedded_server(settings)
    return server.start() if start else server.url()


def _plain_url(url: str) -> str:
    """Accept SQLAlchemy-style ``postgresql+psycopg://`` too; psycopg wants plain ``postgresql://``."""
    return re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", url)


def sqlalchemy_url(url: str) -> str:
    return re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", _plain_url(url))


def application_name(role: str) -> str:
    """``pgclip-<role>[host:pid]``: visible in pg_stat_activity, so operators can tell processes apart."""
    return f"pgclip-{role}[{socket.gethostname()}:{os.getpid()}]"[:63]


def describe_target(url: str) -> str:
    """Where a URL points, for error messages, without its password."""
    parts = urlsplit(url)
    host = parts.hostname or (re.search(r"host=([^&]+)", parts.query) or [None, "local socket"])[1]
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}/{parts.path.lstrip('/') or '(default database)'}"


def driver_message(exc: BaseException) -> str:
    """The first line of what PostgreSQL, libpq or the pool said, without libpq's
    "connection to server at ... failed:" prefix (it names the target, which callers say better)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return re.sub(r'^(connection failed: )?(connection to server (at|on socket) ".*?"(, port \d+)? failed: )?', "", line)


def translate_connect_error(url: str, exc: Exception) -> DatabaseUnavailable:
    """One line naming where we tried and what PostgreSQL (or the network) said."""
    return DatabaseUnavailable(f"cannot connect to PostgreSQL at {describe_target(url)}: {driver_message(exc)}")


class Failure(enum.Enum):
    """What a driver or pool error says about the database: the one classification that
    both :func:`translate_driver_error` (API, CLI) and the workers' reconnection follow."""

    UNAVAILABLE = "unavailable"  # not there for us right now: wait, reconnect, run it again
    REFUSED = "refused"  # there, but refuses us (a password, a database, pgvector): a person must act
    CONFLICT = "conflict"  # the transaction lost a race (deadlock, serialization): run it again at once
    TOO_LARGE = "too large"  # the statement exceeds a server limit: the input's fault, no retry helps


# SQLSTATE classes that mean "the database is not there for us right now", as opposed to
# "this statement is wrong": connection exceptions (08), insufficient resources (53: too
# many connections, out of memory, disk full), operator intervention (57: admin or crash
# shutdown, starting up, idle session timeout, a statement cancelled by statement_timeout),
# system errors (58).
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")
_CONFLICT_CLASS = "40"  # transaction rollback: serialization failure, deadlock detected
_TOO_LARGE_CLASS = "54"  # program limit exceeded: a value or statement too large or too deep
# What a server says when it is there but will not have us; anything else that looks like
# an outage passes once the server is back (starting, stopping, restarting, unreachable).
_REFUSED = ("password authentication failed", "does not exist", "no pg_hba.conf entry", "pgvector",
            "invalid database URL")


def classify(exc: BaseException) -> Failure | None:
    """What ``exc`` (a psycopg or pool error, or a ``DatabaseUnavailable``) says about the
    database; None when it says nothing about it (a bug of ours, or not a driver error)."""
    from psycopg_pool import PoolTimeout, TooManyRequests

    if isinstance(exc, DatabaseUnavailable):
        return _unavailable_or_refused(exc)
    if isinstance(exc, (PoolTimeout, TooManyRequests)):
        return Failure.UNAVAILABLE
    if not isinstance(exc, psycopg.Error):
        return None
    state = exc.sqlstate or ""
    if state.startswith(_TOO_LARGE_CLASS):
        return Failure.TOO_LARGE
    if state.startswith(_CONFLICT_CLASS):
        return Failure.CONFLICT
    # A connection lost or never made is an OperationalError without a SQLSTATE (libpq's own).
    if isinstance(exc, psycopg.InterfaceError) or (isinstance(exc, psycopg.OperationalError) and not state) \
            or state.startswith(_UNAVAILABLE_CLASSES):
        return _unavailable_or_refused(exc)
    return None


def _unavailable_or_refused(exc: BaseException) -> Failure:
    text = str(exc)
    return Failure.REFUSED if any(marker in text for marker in _REFUSED) else Failure.UNAVAILABLE


def translate_driver_error(exc: BaseException) -> PgclipError | None:
    """The pgclip error for a psycopg or pool failure, or None when it is a bug of ours.

    Translated here, once: callers above ``db/`` see ``DatabaseUnavailable`` (the API's
    503, the CLI's one line) or ``InvalidInput``, never a driver exception. A lost race
    (:attr:`Failure.CONFLICT`) stays itself: the workers run it again, a request fails with it.
    """
    from psycopg_pool import PoolTimeout, TooManyRequests

    if isinstance(exc, PgclipError):
        return exc
    failure = classify(exc)
    if failure is Failure.TOO_LARGE:
        return InvalidInput(f"the request is too large or complex for the database: {driver_message(exc)}")
    if failure in (Failure.UNAVAILABLE, Failure.REFUSED):
        busy = " or busy" if isinstance(exc, (PoolTimeout, TooManyRequests)) else ""
        return DatabaseUnavailable(f"the database is unavailable{busy}: {driver_message(exc)}")
    return None


@contextmanager
def driver_errors() -> Iterator[None]:
    """Raise driver failures inside the block as pgclip errors (see ``translate_driver_error``)."""
    try:
        yield
    except Exception as exc:
        translated = translate_driver_error(exc)
        if translated is None or translated is exc:
            raise
        raise translated from exc


def connect(
    url: str, *, role: str = "cli", autocommit: bool = False, vector: bool = True, app_name: str | None = None
) -> psycopg.Connection[Row]:
    """Open a connection (with pgvector's types registered when the extension exists).

    ``app_name``: an exact ``application_name`` instead of ``application_name(role)`` (a worker
    names every connection after its worker id, so that others can tell it is alive).
    """
    try:
        conn = psycopg.connect(
            _plain_url(url), autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT,
            application_name=app_name or application_name(role),
        )
    except psycopg.OperationalError as exc:
        raise translate_connect_error(url, exc) from exc
    except psycopg.ProgrammingError as exc:  # malformed URL / conninfo
        raise DatabaseUnavailable(f"invalid database URL {mask_url(url)!r}: {exc}") from exc
    if vector:
        configure_vector(conn)
    return conn


def configure_vector(conn: psycopg.Connection) -> None:
    """Register pgvector's types if the extension is installed (before migration it is not)."""
    if conn.execute("SELECT 1 FROM pg_type WHERE typname = 'vector'").fetchone():
        register_vector(conn)
    if not conn.autocommit:
        conn.commit()


@contextmanager
def connection(url: str, *, role: str = "cli") -> Iterator[psycopg.Connection[Row]]:
    """A connection that commits what is pending when the block succeeds (rolls back if not)."""
    # psycopg's own context manager does exactly that, and closes the connection.
    with connect(url, role=role) as conn:
        yield conn


def require_pgvector(conn: psycopg.Connection, url: str) -> None:
    """Fail with a fix when the server cannot ``CREATE EXTENSION vector``."""
    row = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone()
    if row is None:
        raise DatabaseUnavailable(
            f"the PostgreSQL at {describe_target(url)} does not have the pgvector extension available: "
            "install pgvector there, or unset PGCLIP_DATABASE_URL to use pgclip's embedded server"
        )


def require_text_search_config(conn: psycopg.Connection, name: str) -> None:
    """ConfigError unless the database has the text search configuration PGCLIP_TEXT_SEARCH_CONFIG
    names (every caption written and every caption query would fail on it otherwise)."""
    schema, _, config = name.rpartition(".")
    if not conn.execute("SELECT EXISTS (SELECT 1 FROM pg_ts_config c JOIN pg_namespace n ON n.oid = c.cfgnamespace"
                        " WHERE c.cfgname = %s AND (%s = '' OR n.nspname = %s))", [config, schema, schema]).fetchone()[0]:
        have = [r[0] for r in conn.execute("SELECT cfgname FROM pg_ts_config ORDER BY cfgname")]
        raise ConfigError(f"PGCLIP_TEXT_SEARCH_CONFIG={name}: the database has no such text search configuration "
                          f"(it has: {', '.join(have[:30])}{', ...' if len(have) > 30 else ''})")


def create_engine(url: str, *, role: str = "cli") -> sqlalchemy.Engine:
    """A SQLAlchemy engine over psycopg 3, for alembic and ORM-level tests."""
    import sqlalchemy  # imported here: only migrations need it, and it costs every command 0.1 s

    return sqlalchemy.create_engine(
        sqlalchemy_url(url),
        connect_args={"application_name": application_name(role), "connect_timeout": CONNECT_TIMEOUT},
        poolclass=sqlalchemy.pool.NullPool,
    )
