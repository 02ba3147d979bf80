"""The real `pgclip sync` in a subprocess: its report and exit statuses, embedding beside a
running worker, and --watch picking up files until Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import psycopg
import pytest

from tests.acceptance.test_cli_db import run
from tests.acceptance.test_workers import env_for, start_worker
from tests.images import jpeg_bytes, write_jpegs
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


def file_rows(db_url: str) -> set[str]:
    with psycopg.connect(db_url) as conn:
        return {r[0] for r in conn.execute("SELECT path FROM pgclip.files WHERE missing_since IS NULL")}


def test_sync_reports_lists_and_exits_as_documented(db_url, tmp_path):
    env = env_for(db_url, tmp_path)
    photos = tmp_path / "photos"
    write_jpegs(photos, 2)
    (photos / "notes.txt").write_text("not an image")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really")

    dry = run("sync", str(photos), "--dry-run", env=env)
    # A dry run reads no pixels: broken.jpg is among what it would add (the real sync rejects it).
    assert dry.returncode == 0 and dry.stderr == ""
    assert f"  add {photos / 'img0000.jpg'}" in dry.stdout
    assert dry.stdout.strip().splitlines()[-1].startswith(f"would sync {photos}: 3 added")
    assert file_rows(db_url) == set()  # written nowhere

    first = run("sync", str(photos), "--json", env=env)
    assert first.returncode == 1, first.stderr
    report = json.loads(first.stdout)
    assert sorted(report["added"]) == [str(photos / "img0000.jpg"), str(photos / "img0001.jpg")]
    assert [r["path"] for r in report["rejected"]] == [str(photos / "broken.jpg")]

    (photos / "img0001.jpg").unlink()
    again = run("sync", str(photos), env=env)
    assert again.returncode == 0 and again.stderr == ""  # the broken file is not read again
    assert again.stdout == (f"synced {photos}: 0 added, 0 updated, 0 moved, 1 removed, 1 unchanged, "
                            "1 still not images (unchanged since rejected)\n")

    missing = run("sync", str(tmp_path / "typo"), env=env)
    assert missing.returncode == 2 and missing.stderr == f"pgclip: error: no such folder: {tmp_path / 'typo'}\n"
    assert run("sync", str(photos), "--poll", env=env).returncode == 2


def test_sync_embed_waits_for_the_folders_images_while_another_worker_takes_some(db_url, tmp_path):
    env = env_for(db_url, tmp_path)
    photos = tmp_path / "photos"
    write_jpegs(photos, 40)
    worker = start_worker(env)  # running before and during the sync: it takes jobs too
    result = run("sync", str(photos), "--embed", env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "40 added" in result.stdout and "40 embedded" in result.stdout
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM pgclip.embeddings").fetchone() == (40,)
        assert conn.execute("SELECT state, count(*) FROM pgclip.embedding_jobs GROUP BY state").fetchall() == \
            [("done", 40)]
    worker.send_signal(signal.SIGINT)
    worker.communicate(timeout=60)


@pytest.mark.alone  # a watcher's latency, with time bounds: not beside another test process
@pytest.mark.parametrize(("poll", "stop"), [(False, signal.SIGINT), (True, signal.SIGTERM)],
                         ids=["inotify, ctrl-c", "polling, sigterm"])
def test_watch_syncs_each_change_until_ctrl_c_or_sigterm(db_url, tmp_path, poll, stop):
    """SIGTERM (systemd, `docker stop`) stops it as Ctrl-C does: it ended with status 143, unsaid."""
    env = env_for(db_url, tmp_path)
    photos = tmp_path / "photos"
    write_jpegs(photos, 1)
    base = {k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}
    # Ctrl-C as in a terminal: SIGINT at its default (a test run started in the background by
    # a shell inherits it ignored, and so would the watcher).
    watcher = subprocess.Popen([sys.executable, "-m", "pgclip.cli", "sync", str(photos), "--watch",
                                *(["--poll"] if poll else [])],
                               env={**base, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for(lambda: file_rows(db_url) == {str(photos / "img0000.jpg")}, 120, 0.2, "the first sync", [watcher])
        (photos / "sub").mkdir()
        (photos / "sub" / "arrived.jpg").write_bytes(jpeg_bytes(5))
        wait_for(lambda: str(photos / "sub" / "arrived.jpg") in file_rows(db_url), 60, 0.2, "the new file synced",
                 [watcher])
        (photos / "img0000.jpg").unlink()
        wait_for(lambda: file_rows(db_url) == {str(photos / "sub" / "arrived.jpg")}, 60, 0.2,
                 "the deleted file removed", [watcher])
    finally:
        watcher.send_signal(stop)
        try:
            out, err = watcher.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            watcher.kill()  # no watcher left behind by a failed test
            watcher.communicate()
            raise
    assert watcher.returncode == 0, err
    assert "Traceback" not in err
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"synced {photos}: 1 added")
    assert any("1 added" in line for line in lines[1:]) and any("1 removed" in line for line in lines[1:])
    assert lines[-1] == f"stopped watching {photos}"


def test_watch_stops_with_one_line_and_removes_nothing_when_its_folder_goes(db_url, tmp_path):
    """The folder renamed (or its drive unplugged) under `sync --watch`: before, the next scan
    found no file and removed every image; now the watcher says so and stops, exit status 1."""
    env = env_for(db_url, tmp_path)
    photos = tmp_path / "photos"
    write_jpegs(photos, 3)
    base = {k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}
    watcher = subprocess.Popen([sys.executable, "-m", "pgclip.cli", "sync", str(photos), "--watch", "--poll"],
                               env={**base, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(file_rows(db_url)) == 3, 120, 0.2, "the first sync", [watcher])
        photos.rename(tmp_path / "renamed")
        out, err = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
    assert watcher.returncode == 1, (out, err)
    assert "Traceback" not in err
    assert f"pgclip: error: no such folder: {photos}: nothing removed" in err, err
    assert len(file_rows(db_url)) == 3
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM pgclip.images").fetchone()[0] == 3
