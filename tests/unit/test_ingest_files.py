"""Finding and reading files for ingest: odd names and things that are not regular files (no database)."""

from __future__ import annotations

import io
import os
import pwd
import socket
import stat
import struct
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from pgclip.workers.decode import captured_warnings, probe, route_warnings
from pgclip.workers.ingest_files import (
    Unreadable,
    discover,
    one_line,
    read_file,
    readable_name,
    stored_name,
)
from tests.images import jpeg_bytes

LATIN1 = b"caf\xe9.jpg"  # "café.jpg" as an old archive wrote it: not UTF-8


def corrupt_exif_jpeg(seed: int) -> bytes:
    """A JPEG that decodes, with an EXIF tag pointing past the end of its data (Pillow warns)."""
    ifd = struct.pack("<2sHI", b"II", 42, 8) + struct.pack("<H", 1)
    ifd += struct.pack("<HHII", 0x010F, 2, 100, 5000) + struct.pack("<I", 0)  # Make: 100 bytes at offset 5000
    out = io.BytesIO()
    Image.open(io.BytesIO(jpeg_bytes(seed))).save(out, "JPEG", exif=b"Exif\x00\x00" + ifd)
    return out.getvalue()


def under(folder: Path, name: bytes) -> Path:
    return Path(os.fsdecode(os.path.join(os.fsencode(folder), name)))


# --- names ---------------------------------------------------------------------------


def test_a_utf8_name_is_stored_as_itself():
    assert stored_name(Path("/photos/Кошка 🐱.jpg")) == ("/photos/Кошка 🐱.jpg", None)


def test_a_latin1_name_is_stored_readably_with_its_exact_bytes(tmp_path):
    path = under(tmp_path, LATIN1)
    source, raw = stored_name(path)
    assert source == f"{tmp_path}/caf\\xe9.jpg"
    assert raw == os.fsencode(tmp_path) + b"/" + LATIN1
    # Reversible: the bytes, else the text's UTF-8, are the name the file system knows.
    assert (raw or source.encode()) == os.fsencode(path)
    source.encode("utf-8")  # PostgreSQL text can hold it (no lone surrogates)


def test_odd_characters_print_on_one_line_and_emoji_stay():
    shown = one_line("a\nb\tc\x1b[31md\u202eevil\u2028e 🐱 مرحبا")
    assert "\n" not in shown and "\x1b" not in shown and "\u202e" not in shown and "\u2028" not in shown
    assert shown == "a\\nb\\tc\\x1b[31md\\u202eevil\\u2028e 🐱 مرحبا"


def test_a_surrogate_no_byte_produced_still_has_a_readable_name():
    assert readable_name("bad\ud800.jpg") == "bad\\ud800.jpg"


# --- discovery -------------------------------------------------------------------------


@pytest.fixture
def odd_tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    (root / "good.jpg").write_bytes(jpeg_bytes(1))
    under(root, LATIN1).write_bytes(jpeg_bytes(2))
    os.mkfifo(root / "fifo.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock.jpg"))
    sock.close()
    (root / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    (root / "loop1.jpg").symlink_to("loop2.jpg")
    (root / "loop2.jpg").symlink_to("loop1.jpg")
    (root / "folder.jpg").mkdir()
    (root / "folder.jpg" / "inside.jpg").write_bytes(jpeg_bytes(3))
    (root / ("n" * 251 + ".jpg")).write_bytes(jpeg_bytes(4))  # a 255-byte name
    (root / "linked").symlink_to(root / "folder.jpg")  # a symlinked folder: not followed
    (root / ".hidden.jpg").write_bytes(jpeg_bytes(5))
    (root / "notes.txt").write_text("not an image")
    return root


def test_discovery_reports_what_is_not_a_regular_file_and_finds_the_rest(odd_tree):
    found, skipped, problems = discover([odd_tree])
    assert sorted(p.name for p in found) == sorted(
        ["good.jpg", os.fsdecode(LATIN1), "inside.jpg", "n" * 251 + ".jpg"]
    )
    assert skipped == 1
    assert dict((Path(p).name, r) for p, r in problems) == {
        "fifo.jpg": "not a regular file (a FIFO)",
        "sock.jpg": "not a regular file (a socket)",
        "dangling.jpg": "broken symbolic link (its target does not exist)",
        "loop1.jpg": "symbolic link loop",
        "loop2.jpg": "symbolic link loop",
    }


def test_paths_given_directly_are_judged_as_files(odd_tree):
    found, skipped, problems = discover([odd_tree / "fifo.jpg", odd_tree / "good.jpg", odd_tree / "missing.jpg"])
    assert [p.name for p in found] == ["good.jpg"]
    assert problems == [
        (str(odd_tree / "fifo.jpg"), "not a regular file (a FIFO)"),
        (str(odd_tree / "missing.jpg"), "no such file or directory"),
    ]


def test_paths_from_a_manifest_are_files_never_folders_to_walk(odd_tree):
    found, _, problems = discover([odd_tree / "folder.jpg", odd_tree / "good.jpg"], as_files=True)
    assert [p.name for p in found] == ["good.jpg"]
    assert problems == [(str(odd_tree / "folder.jpg"), "is a directory")]


def test_a_path_of_4000_bytes_is_found_and_read(tmp_path):
    folder = tmp_path
    while len(os.fsencode(folder)) < 3700:
        folder = folder / ("d" * 250)
    folder.mkdir(parents=True)
    path = folder / ("p" * (3995 - len(os.fsencode(folder))) + ".jpg")
    path.write_bytes(jpeg_bytes(1))
    assert 3990 <= len(os.fsencode(path)) <= 4000
    found, _, problems = discover([tmp_path])
    assert (found, problems) == ([path], [])
    assert read_file(path) == jpeg_bytes(1)


def test_a_tree_deeper_than_pythons_recursion_limit_is_walked(tmp_path):
    top = folder = tmp_path / "deep"
    top.mkdir()
    for _ in range(sys.getrecursionlimit() + 50):
        folder = folder / "a"
        folder.mkdir()  # not os.makedirs: it recurses too
    (folder / "deep.jpg").write_bytes(b"x")
    try:
        found, _, problems = discover([top])
        assert [p.name for p in found] == ["deep.jpg"] and problems == []
    finally:
        subprocess.run(["rm", "-rf", str(top)], check=True)  # pytest's clean-up (shutil.rmtree) recurses


# --- reading ---------------------------------------------------------------------------


def test_reading_a_fifo_never_blocks(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    outcome: list[str] = []

    def read() -> None:
        try:
            read_file(fifo)
        except Unreadable as exc:
            outcome.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=30)  # a blocking open() would never return
    assert outcome == ["not a regular file (a FIFO)"]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: None, "vanished (deleted or renamed after it was listed)"),
        (lambda p: p.symlink_to(p), "symbolic link loop"),
        (lambda p: p.write_bytes(b"x" * 11), "file too large: 11 bytes exceeds the limit of 10"),
    ],
    ids=["folder", "vanished", "loop", "too-large"],
)
def test_a_file_that_cannot_be_read_says_why(tmp_path, make, reason):
    path = tmp_path / "x.jpg"
    make(path)
    with pytest.raises(Unreadable) as caught:
        read_file(path, max_bytes=10)
    assert str(caught.value) == reason


# Started as root (the interpreter lives where only root may read), everything imported, then
# the process becomes `nobody` for what the test is about: the file system saying no.
PERMISSION_PROBE = """
import json, os, sys
from pathlib import Path
from pgclip.workers.ingest_files import Unreadable, discover, read_file
os.setgroups([]); os.setgid(int(sys.argv[2])); os.setuid(int(sys.argv[3]))
root = Path(sys.argv[1])
found, skipped, problems = discover([root])
try:
    read_file(root / "secret.jpg")
    reason = None
except Unreadable as exc:
    reason = str(exc)
print(json.dumps({"found": sorted(p.name for p in found), "problems": problems, "reason": reason}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a probe as another user")
def test_permission_denied_is_a_reason_for_that_file_or_folder(tmp_path):
    import json

    nobody = pwd.getpwnam("nobody")
    root = Path(subprocess.run(["mktemp", "-d"], capture_output=True, text=True, check=True).stdout.strip())
    try:
        root.chmod(0o755)
        (root / "open.jpg").write_bytes(b"x")
        (root / "secret.jpg").write_bytes(b"x")
        (root / "secret.jpg").chmod(0o000)
        (root / "locked").mkdir(mode=0o700)
        (root / "locked" / "in.jpg").write_bytes(b"x")
        probe_run = subprocess.run(
            [sys.executable, "-c", PERMISSION_PROBE, str(root), str(nobody.pw_gid), str(nobody.pw_uid)],
            capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2],
        )
        assert probe_run.returncode == 0, probe_run.stderr
        result = json.loads(probe_run.stdout)
        assert result["reason"] == "permission denied"
        assert result["found"] == ["open.jpg", "secret.jpg"]  # stat works; the read says no
        assert result["problems"] == [[str(root / "locked"), "cannot list folder: permission denied"]]
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=True)


# --- library warnings --------------------------------------------------------------------


def test_pillow_warnings_are_captured_per_thread_and_counted_every_time():
    route_warnings()
    data = [corrupt_exif_jpeg(1), jpeg_bytes(2), corrupt_exif_jpeg(3), corrupt_exif_jpeg(1)]

    def probe_one(blob: bytes) -> list[str]:
        with captured_warnings() as warned:
            probe(blob)
        return warned

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(probe_one, data * 5))
    assert [len(w) for w in results] == [1, 0, 1, 1] * 5
    assert results[0][0].startswith("UserWarning: Tag data larger than file")


def test_captured_warnings_never_reach_stderr():
    script = (
        "from pgclip.workers.decode import captured_warnings, probe, route_warnings\n"
        "from tests.unit.test_ingest_files import corrupt_exif_jpeg\n"
        "route_warnings()\n"
        "with captured_warnings() as w:\n"
        "    probe(corrupt_exif_jpeg(1))\n"
        "print(len(w))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).parents[2])
    assert (run.returncode, run.stdout.strip(), run.stderr) == (0, "1", "")


def test_kinds_of_files_are_named_as_users_know_them():
    from pgclip.workers.ingest_files import _kind_reason

    assert _kind_reason(stat.S_IFCHR) == "not a regular file (a character device)"
    assert _kind_reason(stat.S_IFBLK) == "not a regular file (a block device)"
    assert _kind_reason(stat.S_IFREG) is None
