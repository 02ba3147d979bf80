"""Finding and reading the files of an ingest run, one file's trouble never the run's.

A file system holds more than image files under image names: names that are
not UTF-8 (latin-1 names from old archives), FIFOs, sockets and devices called
``*.jpg``, dangling symlinks and symlink loops, folders called ``x.jpg``, files
that vanish or change between listing and reading, files root may not read.
Each becomes a one-line reason attached to that file; every other file goes on.

Names are kept as Python keeps them (undecodable bytes as lone surrogates,
``os.fsencode`` gives the bytes back). :func:`stored_name` turns one into what
the database can hold: readable text, plus the exact bytes when the text alone
cannot say them.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi"})  # sampled into frames (workers/video.py)
MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES
# Far above any photograph (a 89-megapixel 16-bit TIFF is ~540 MB uncompressed) yet
# far below what would take the machine's memory: READ_THREADS files are in memory at once.
MAX_FILE_BYTES = 1 << 30  # bytes
_READ_CHUNK = 1 << 20  # bytes per read() call

# C0/C1 controls, DEL, line and paragraph separators and the bidirectional controls
# (an RLO in a name reverses the rest of the line on a terminal): shown escaped so a
# name prints as one honest line. Emoji, RTL letters and joiners print as themselves.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class Unreadable(Exception):
    """A file that cannot be read as an image file; the message is the one-line reason."""


def stored_name(path: str | os.PathLike[str]) -> tuple[str, bytes | None]:
    """What the ``source`` column holds for a path, and the original bytes when that text cannot say them.

    A UTF-8 name is stored as itself (bytes ``None``). Any other name is stored
    with each undecodable byte written ``\\xNN`` and its exact bytes beside it:
    PostgreSQL text holds neither lone surrogates nor arbitrary bytes.
    """
    raw = name_bytes(path)
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), raw


def readable_name(path: str | os.PathLike[str]) -> str:
    """The name as text, undecodable bytes as ``\\xNN`` (what ``source`` holds)."""
    return stored_name(path)[0]


def name_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes the file system knows the name by."""
    try:
        return os.fsencode(path)
    except UnicodeEncodeError:  # a surrogate that no byte produced (e.g. "\ud800" written in a JSON manifest)
        return os.fspath(path).encode("utf-8", "backslashreplace")


def one_line(text: str) -> str:
    """``text`` for a terminal: control and bidirectional-control characters escaped."""
    return _UNPRINTABLE.sub(lambda m: _ESCAPES.get(m.group()) or _escape(m.group()), text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def discover(
    paths: Iterable[Path], *, as_files: bool = False, unlisted: list[Path] | None = None
) -> tuple[list[Path], int, list[tuple[str, str]]]:
    """Image and video files under ``paths`` (recursive, sorted), the count of other files, and (name, reason) problems.
    ``unlisted`` gets each folder that could not be listed (what it holds is unknown, not gone).

    Image and video files are told by their extension and must be regular files (a FIFO
    called ``x.jpg`` would block a reader forever). Folders and files starting
    with a dot are left out, and symlinked folders are not followed (a link
    back up the tree would never end). ``as_files``: the paths name files, not
    folders to walk (paths from a manifest): a folder among them is a problem.
    """
    found: list[Path] = []
    skipped = 0
    problems: list[tuple[str, str]] = []
    for root in paths:
        root = Path(root).expanduser()
        try:
            is_folder = not as_files and root.is_dir()
        except ValueError:  # a NUL in a name from a manifest
            is_folder = False
        if is_folder:
            skipped += _walk(root, found, problems, unlisted)
        elif not _lexists(root):
            problems.append((readable_name(root), "no such file or directory"))
        elif root.suffix.lower() not in MEDIA_SUFFIXES:
            skipped += 1
        else:
            _add_file(root, found, problems)
    return found, skipped, problems


def _walk(top: Path, found: list[Path], problems: list[tuple[str, str]], unlisted: list[Path] | None = None) -> int:
    """Add the image and video files under ``top`` (depth first, sorted); returns how many others it holds."""
    skipped = 0
    stack = [top]  # not recursion: a tree thousands of folders deep must not reach Python's recursion limit
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted((e for e in listing if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as exc:
            problems.append((readable_name(folder), f"cannot list folder: {os_reason(exc)}"))
            if unlisted is not None:
                unlisted.append(folder)
            continue
        subfolders = []
        for entry in entries:
            path = folder / entry.name
            if _is_real_folder(entry):
                subfolders.append(path)
            elif _is_symlinked_folder(entry):
                continue  # a symlinked folder: not followed
            elif Path(entry.name).suffix.lower() in MEDIA_SUFFIXES:
                _add_file(path, found, problems)
            else:
                skipped += 1
        stack.extend(reversed(subfolders))
    return skipped


def _is_real_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _is_symlinked_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_symlink() and entry.is_dir()
    except OSError:  # a loop or a dangling link: a file problem, reported by _add_file
        return False


def _lexists(path: Path) -> bool:
    try:
        return os.path.lexists(path)
    except ValueError:
        return True  # exists or not, _add_file reports the name as invalid


def _add_file(path: Path, found: list[Path], problems: list[tuple[str, str]]) -> None:
    reason = _not_a_file(path)
    if reason is None:
        found.append(path)
    else:
        problems.append((readable_name(path), reason))


def _not_a_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as an image file (None: it is a regular file, as far as stat says now)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return "broken symbolic link (its target does not exist)"
        return os_reason(FileNotFoundError(errno.ENOENT, "vanished"))
    except OSError as exc:
        return os_reason(exc)
    except ValueError:
        return "invalid file name"
    return _kind_reason(st.st_mode)


def _kind_reason(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    for test, kind in _KINDS:
        if test(mode):
            return "is a directory" if kind == "a directory" else f"not a regular file ({kind})"
    return "not a regular file"


def os_reason(exc: OSError) -> str:
    """The reason an OSError gives, in the words a user knows."""
    reasons = {
        errno.ENOENT: "vanished (deleted or renamed after it was listed)",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ELOOP: "symbolic link loop",
        errno.ENAMETOOLONG: "file name too long",
        errno.EISDIR: "is a directory",
        errno.ENXIO: "not a regular file (a socket or a device without a driver)",
    }
    return reasons.get(exc.errno) or f"cannot read: {exc.strerror or exc}"


def read_file(path: Path, *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file; raises :class:`Unreadable` with the reason for anything else.

    Opened non-blocking and checked with ``fstat`` on the open descriptor: what
    is read is what was checked, even if the name now points at a FIFO (which
    would block a plain ``open`` for ever) or at something else.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise Unreadable(os_reason(exc)) from None
    except ValueError:
        raise Unreadable("invalid file name") from None
    try:
        st = os.fstat(fd)
        reason = _kind_reason(st.st_mode)
        if reason:
            raise Unreadable(reason)
        if st.st_size > max_bytes:
            raise Unreadable(f"file too large: {st.st_size} bytes exceeds the limit of {max_bytes}")
        os.set_blocking(fd, True)  # a regular file after all: plain reads from here
        chunks, size = [], 0
        while chunk := os.read(fd, _READ_CHUNK):
            size += len(chunk)
            if size > max_bytes:  # grew while being read
                raise Unreadable(f"file too large: more than {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise Unreadable(os_reason(exc)) from None
    finally:
        os.close(fd)
