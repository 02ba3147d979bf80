"""The demo collection: about thirty real photographs that ship inside installed wheels.

scikit-image, scikit-learn and matplotlib each carry a few sample images in their
packages, so the demo needs no download and the repository holds no image files.
``demo_manifest.jsonl`` (beside this module) lists them as ``"<package>:<path inside
the package>"`` with hand-written captions and metadata; :func:`materialize_demo`
turns it into an ordinary JSON Lines manifest of absolute paths for
:func:`pgclip.workers.ingest.ingest`.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from pgclip.core.errors import InvalidInput

MANIFEST_NAME = "demo.jsonl"  # the file materialize_demo writes into its folder


def demo_manifest_path() -> Path:
    """The packaged manifest, whose paths are ``package:relative/path`` specs."""
    return Path(__file__).with_name("demo_manifest.jsonl")


def resolve_package_path(spec: str) -> Path:
    """The installed file a ``"package:relative/path"`` spec names, e.g. ``"skimage:data/astronaut.png"``.

    The package is located without importing it. Raises :class:`InvalidInput` when
    the spec is malformed, the package is not installed, or the file is not in it.
    """
    package, sep, relative = spec.partition(":")
    if not sep or not package or not relative:
        raise InvalidInput(f"demo image {spec!r}: expected 'package:relative/path'")
    if Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise InvalidInput(f"demo image {spec!r}: the path must stay inside the package")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found else []
    if not locations:
        raise InvalidInput(f"demo image {spec!r}: package {package!r} is not installed (reinstall pgclip)")
    for root in locations:
        path = Path(root) / relative
        if path.is_file():
            return path.resolve()
    raise InvalidInput(f"demo image {spec!r}: no file {relative} in the installed {package!r} package")


def materialize_demo(dest: Path) -> Path:
    """Write the demo manifest with absolute file paths into folder ``dest``; return its path.

    Ingesting that manifest with no other paths ingests exactly the demo images
    (``pgclip ingest --captions <it>``). Captions and metadata are copied unchanged.
    Raises :class:`InvalidInput` if any demo image is missing from this install.
    """
    lines = []
    for line in demo_manifest_path().read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            row["path"] = str(resolve_package_path(row["path"]))
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / MANIFEST_NAME
    partial = target.with_name(f".{MANIFEST_NAME}.{os.getpid()}")  # concurrent demos never see half a file
    partial.write_text("".join(lines), encoding="utf-8")
    partial.replace(target)
    return target
