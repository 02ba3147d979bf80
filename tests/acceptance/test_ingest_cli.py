"""The real ``pgclip ingest`` in a subprocess: exit statuses, odd files and names, kill -9 and a
database crash midway, permission denied. Every run ends in lines a user can read, never a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.acceptance.test_cli_db import PGCLIP, run
from tests.images import jpeg_bytes, write_jpegs
from tests.unit.test_ingest_files import LATIN1, corrupt_exif_jpeg, under
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

RUN_FILES = 120  # files of the interrupted runs, in batches of BATCH
BATCH = 10
HELD_FILE = 55  # the test holds this file's row uncommitted: batch 5 waits, batches 0-4 are committed


def env_for(db_url: str, tmp_path: Path) -> dict[str, str]:
    return {"PGCLIP_DATABASE_URL": db_url, "PGCLIP_DATA_DIR": str(tmp_path / "data"),
            "PGCLIP_MODEL": "test-tiny", "PGCLIP_PRETRAINED": "random"}


def assert_clean_stderr(result) -> None:
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr


# --- exit statuses and output ----------------------------------------------------------------


def test_exit_status_is_0_when_every_file_is_stored_or_skipped(db_url, tmp_path):
    write_jpegs(tmp_path / "photos", 3)
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    result = run("ingest", str(tmp_path / "photos"), env=env_for(db_url, tmp_path))
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("added 3, already present 0, skipped 1 (not images), rejected 0")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/path"], "pgclip: error: no such file or directory: /no/such/path"),
        ([], "pgclip: error: give at least one file or folder to ingest (or --captions with a manifest)"),
        (["--captions", "/no/such/captions.jsonl"], "pgclip: error: cannot read captions file"),
    ],
    ids=["missing-path", "no-path", "missing-manifest"],
)
def test_exit_status_is_2_for_a_usage_error_and_nothing_is_ingested(db_url, tmp_path, args, message):
    result = run("ingest", *args, env=env_for(db_url, tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith(message) and len(result.stderr.splitlines()) == 1, result.stderr
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM pgclip.images").fetchone() == (0,)


def test_a_missing_path_among_good_ones_stops_before_anything_is_stored(db_url, tmp_path):
    write_jpegs(tmp_path / "photos", 2)
    result = run("ingest", str(tmp_path / "photos"), str(tmp_path / "typo"), env=env_for(db_url, tmp_path))
    assert result.returncode == 2 and str(tmp_path / "typo") in result.stderr
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM pgclip.images").fetchone() == (0,)


def test_odd_files_are_listed_with_reasons_on_one_line_each_and_the_rest_stored(db_url, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_jpegs(corpus, 4)
    under(corpus, LATIN1).write_bytes(jpeg_bytes(10))
    under(corpus, b"bad caf\xe9\nname.jpg").write_text("not a picture")  # rejected: printed readably
    (corpus / "rtl\u202eevil 🐱.jpg").write_bytes(jpeg_bytes(11))
    os.mkfifo(corpus / "x.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(corpus / "s.jpg"))
    sock.close()
    (corpus / "dangling.jpg").symlink_to(corpus / "gone.jpg")
    (corpus / "loop.jpg").symlink_to("loop.jpg")
    (corpus / "d.jpg").mkdir()
    (corpus / "exif.jpg").write_bytes(corrupt_exif_jpeg(12))
    env = env_for(db_url, tmp_path)

    result = run("ingest", str(corpus), env=env, timeout=120)
    assert result.returncode == 1
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == ("added 7, already present 0, skipped 0 (not images), rejected 5; "
                        "0 captions added, 7 queued; 1 image library warning")
    rejected = {line.split(": ", 1)[0].rsplit("/", 1)[1]: line.split(": ", 1)[1] for line in lines[1:6]}
    assert rejected == {
        "dangling.jpg": "broken symbolic link (its target does not exist)",
        "loop.jpg": "symbolic link loop",
        "s.jpg": "not a regular file (a socket)",
        "x.jpg": "not a regular file (a FIFO)",
        "bad caf\\xe9\\nname.jpg": "not an image (cannot identify image file)",
    }
    assert lines[6:] == ["  (--verbose lists the warnings; the files were judged on their pixels)"]

    verbose = run("ingest", str(corpus), "--verbose", env=env, timeout=120)
    assert verbose.returncode == 1 and verbose.stderr == ""
    (warning,) = [line for line in verbose.stdout.splitlines() if line.startswith("  warning ")]
    assert warning.startswith(f"  warning {corpus}/exif.jpg: UserWarning: Tag data larger than file")
    assert verbose.stdout.splitlines()[0].startswith("added 0, already present 7,")

    with psycopg.connect(db_url) as conn:
        sources = {s: raw for s, raw in conn.execute("SELECT source, source_bytes FROM pgclip.images")}
        assert sources[f"{corpus}/caf\\xe9.jpg"] == os.fsencode(corpus) + b"/" + LATIN1
        assert f"{corpus}/rtl\u202eevil 🐱.jpg" in sources
        assert conn.execute("SELECT count(*) FROM pgclip.embedding_jobs").fetchone() == (7,)

    as_json = json.loads(run("ingest", str(corpus), "--json", env=env).stdout)
    assert len(as_json["rejected"]) == 5 and as_json["warnings"][0]["path"] == f"{corpus}/exif.jpg"


# --- interrupted runs ------------------------------------------------------------------------


def held_run(folder: Path) -> list[Path]:
    return write_jpegs(folder, RUN_FILES)


def hold_file(url: str, path: Path) -> psycopg.Connection:
    """An open transaction holding an uncommitted image row with ``path``'s sha256: the ingest's
    insert of that file (ON CONFLICT on sha256) waits for it, deterministically mid-run."""
    conn = psycopg.connect(url)
    conn.execute(
        "INSERT INTO pgclip.images (sha256, source, byte_size, width, height, format, mime)"
        " VALUES (%s, 'held by the test', 1, 1, 1, 'JPEG', 'image/jpeg')",
        [hashlib.sha256(path.read_bytes()).hexdigest()],
    )
    return conn


def committed_images(url: str) -> int:
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM pgclip.images").fetchone()[0]
    except psycopg.OperationalError:
        return -1


def start_ingest(folder: Path, env: dict[str, str]) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}
    return subprocess.Popen([*PGCLIP, "ingest", str(folder), "--batch-files", str(BATCH)], env={**base, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_every_file_once(url: str, files: list[Path]) -> None:
    with psycopg.connect(url) as conn:
        stored = conn.execute("SELECT sha256 FROM pgclip.images").fetchall()
        jobs = conn.execute("SELECT image_id, count(*) FROM pgclip.embedding_jobs GROUP BY image_id").fetchall()
    assert sorted(s for (s,) in stored) == sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in files)
    assert len(jobs) == len(files) and {n for _, n in jobs} == {1}


def test_kill_9_midway_keeps_the_committed_batches_and_the_same_command_adds_the_rest(db_url, tmp_path):
    files = held_run(tmp_path / "photos")
    env = env_for(db_url, tmp_path)
    holder = hold_file(db_url, files[HELD_FILE])
    ingest = start_ingest(tmp_path / "photos", env)
    try:
        wait_for(lambda: committed_images(db_url) == HELD_FILE // BATCH * BATCH)
        ingest.send_signal(signal.SIGKILL)
        ingest.wait(timeout=30)
    finally:
        if ingest.poll() is None:
            ingest.kill()
        holder.rollback()
        holder.close()
    assert ingest.returncode == -signal.SIGKILL
    assert committed_images(db_url) == 50

    again = run("ingest", str(tmp_path / "photos"), "--batch-files", str(BATCH), "--json", env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert (report["added"], report["present"], report["enqueued"]) == (RUN_FILES - 50, 50, RUN_FILES - 50)
    assert_every_file_once(db_url, files)


@pytest.fixture
def own_server() -> Iterator:
    from tests.outage import RestartablePostgres

    # Not under pytest's tmp_path: another pytest session starting resets /tmp/pytest-of-root to
    # 0700, and pg_ctl runs as embedded_postgres, which must reach the data directory.
    top = Path(tempfile.mkdtemp(prefix="pgclip-ingest-outage-"))
    top.chmod(0o755)
    server = RestartablePostgres(top / "pg")
    try:
        yield server, server.start()
    finally:
        server.close()
        subprocess.run(["rm", "-rf", str(top)], check=False)


def test_a_database_crash_midway_ends_in_one_line_and_the_same_command_completes(own_server, tmp_path):
    server, url = own_server
    env = env_for(url, tmp_path)
    run("migrate", env=env, check=True)
    files = held_run(tmp_path / "photos")
    holder = hold_file(url, files[HELD_FILE])
    ingest = start_ingest(tmp_path / "photos", env)
    try:
        wait_for(lambda: committed_images(url) == HELD_FILE // BATCH * BATCH)
        server.crash_restart()
        out, err = ingest.communicate(timeout=120)
    finally:
        if ingest.poll() is None:
            ingest.kill()
        holder.close()
    assert ingest.returncode == 3, err
    assert err == (f"pgclip: error: database connection lost after committing 50 of {RUN_FILES} files; "
                   "run the same command again to add the rest\n")
    assert out == ""

    again = run("ingest", str(tmp_path / "photos"), env=env, timeout=120)
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert_every_file_once(url, files)


def test_a_database_that_is_down_is_exit_status_3_in_one_line(own_server, tmp_path):
    server, url = own_server
    env = env_for(url, tmp_path)
    run("migrate", env=env, check=True)
    write_jpegs(tmp_path / "photos", 2)
    server.down()
    result = run("ingest", str(tmp_path / "photos"), env=env)
    assert result.returncode == 3
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("pgclip: error: cannot connect")


# --- permission denied ------------------------------------------------------------------------

# The interpreter lives where only root may read: start as root, import what ingest uses, then
# become another user and run the real CLI. That user may reach the test server's socket
# (embedded_postgres owns it) but, not being root, is refused files others may not read.
AS_USER = """
import os, sys
import pgclip.application.bootstrap, pgclip.cli, pgclip.db.engine, pgclip.workers.ingest, pgclip.workers.manifest
import json, tqdm, PIL.Image
PIL.Image.init()
os.setgroups([]); os.setgid(int(sys.argv[1])); os.setuid(int(sys.argv[2]))
sys.exit(pgclip.cli.main(sys.argv[3:]))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the CLI as another user")
def test_files_the_user_may_not_read_are_rejected_and_the_rest_stored(db_url, tmp_path):
    try:
        user = pwd.getpwnam("embedded_postgres")
    except KeyError:
        pytest.skip("no embedded_postgres user to run as")
    root = Path(tempfile.mkdtemp(prefix="pgclip-perm-"))
    try:
        root.chmod(0o755)
        write_jpegs(root / "photos", 3)
        (root / "photos").chmod(0o755)
        (root / "photos" / "img0001.jpg").chmod(0o000)
        (root / "photos" / "private").mkdir(mode=0o700)
        (root / "photos" / "private" / "p.jpg").write_bytes(jpeg_bytes(9))
        (root / "data").mkdir(mode=0o777)
        env = {**env_for(db_url, root), **{k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}}
        result = subprocess.run(
            [sys.executable, "-c", AS_USER, str(user.pw_gid), str(user.pw_uid), "ingest", str(root / "photos")],
            env=env, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2],
        )
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=True)
    assert result.returncode == 1, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        "added 2, already present 0, skipped 0 (not images), rejected 2; 0 captions added, 2 queued",
        f"  rejected {root}/photos/private: cannot list folder: permission denied",
        f"  rejected {root}/photos/img0001.jpg: permission denied",
    ]


def test_edit_and_rm_from_the_cli(db_url, tmp_path):
    """`pgclip edit ID ...` and `pgclip rm ID...` as the README gives them; an id given twice is
    deleted and reported once, an unknown one is named and makes the exit status 1."""
    env = env_for(db_url, tmp_path)
    write_jpegs(tmp_path / "photos", 2)
    run("ingest", str(tmp_path / "photos"), env=env, check=True)
    with psycopg.connect(db_url) as conn:
        first, second = [r[0] for r in conn.execute("SELECT id FROM pgclip.images ORDER BY id")]
    run("edit", str(first), "--set", "tag=cat", "--caption-add", "a cat", env=env, check=True)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT metadata->>'tag' FROM pgclip.images WHERE id = %s", [first]).fetchone()[0] == "cat"
        assert conn.execute("SELECT text FROM pgclip.captions WHERE image_id = %s", [first]).fetchall() == [("a cat",)]
    removed = run("rm", str(first), str(first), "999999", env=env)
    assert removed.returncode == 1 and "Traceback" not in removed.stderr
    assert removed.stdout.splitlines() == [f"deleted {first}", "no image with id 999999"]
    with psycopg.connect(db_url) as conn:
        assert [r[0] for r in conn.execute("SELECT id FROM pgclip.images")] == [second]


def test_ctrl_c_mid_ingest_says_what_was_kept_and_the_same_command_adds_the_rest(db_url, tmp_path):
    """It exited 130 without a word; the batches committed before Ctrl-C stay, and it says how many."""
    env = env_for(db_url, tmp_path)
    write_jpegs(tmp_path / "photos", 3000, size=(200, 150))

    def stored() -> int:
        with psycopg.connect(db_url) as conn:
            return conn.execute("SELECT count(*) FROM pgclip.images").fetchone()[0]

    base = {k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}
    ingest = subprocess.Popen([*PGCLIP, "ingest", str(tmp_path / "photos"), "--batch-files", "20"],
                              env={**base, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: stored() > 0, 120, 0.02, "the first batch committed", [ingest])
    ingest.send_signal(signal.SIGINT)
    out, err = ingest.communicate(timeout=60)
    kept = stored()
    assert ingest.returncode == 130 and "Traceback" not in err, err
    assert err.strip() == (f"pgclip: interrupted after committing {kept} of 3000 files; "
                           "run the same command again to add the rest"), err
    again = run("ingest", str(tmp_path / "photos"), env=env, check=True)
    assert f"added {3000 - kept}, already present {kept}," in again.stdout
