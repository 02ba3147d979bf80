"""The demo collection: every packaged image exists on a fresh install, decodes, and is captioned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgclip.core.errors import InvalidInput
from pgclip.demo import demo_manifest_path, materialize_demo, resolve_package_path
from pgclip.workers.decode import probe
from pgclip.workers.ingest import discover
from pgclip.workers.manifest import load_manifest

SOURCES = {"skimage": "scikit-image", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}


@pytest.fixture(scope="module")
def manifest():
    return load_manifest(demo_manifest_path())


def test_manifest_loads_without_problems(manifest):
    assert manifest.problem_count == 0, manifest.problems
    assert 25 <= len(manifest.entries) <= 40
    lines = [line for line in demo_manifest_path().read_text().splitlines() if line.strip()]
    assert len(lines) == len(manifest.entries)  # no path listed twice


def test_every_entry_has_captions_and_metadata(manifest):
    for spec, entry in manifest.entries.items():
        assert 2 <= len(entry.captions) <= 3, spec
        assert all(c.strip() for c in entry.captions), spec
        assert isinstance(entry.metadata.get("tag"), str) and entry.metadata["tag"], spec
        assert entry.metadata.get("title"), spec
        assert entry.metadata.get("source") == SOURCES[spec.partition(":")[0]], spec


def test_every_image_is_installed_and_decodes(manifest):
    hashes = set()
    for spec in manifest.entries:
        path = resolve_package_path(spec)
        assert path.is_file(), spec
        info = probe(path.read_bytes())
        assert info.width >= 64 and info.height >= 64, spec
        hashes.add(info.sha256)
    assert len(hashes) == len(manifest.entries)  # ingest would merge identical bytes


@pytest.mark.parametrize("spec", ["skimage", "skimage:", ":data/astronaut.png", "skimage:../setup.py",
                                  "no_such_package_pgclip:x.png", "skimage:data/no_such_image.png"])
def test_bad_specs_are_invalid_input(spec):
    with pytest.raises(InvalidInput, match="demo image"):
        resolve_package_path(spec)


def test_materialize_writes_absolute_paths_that_ingest_finds(tmp_path, manifest):
    written = materialize_demo(tmp_path / "demo")
    assert written.parent == tmp_path / "demo"
    local = load_manifest(written)
    assert local.problem_count == 0
    paths = [Path(key) for key in local.entries]
    assert all(p.is_absolute() and p.is_file() for p in paths)
    assert [e.captions for e in local.entries.values()] == [e.captions for e in manifest.entries.values()]
    assert [e.metadata for e in local.entries.values()] == [e.metadata for e in manifest.entries.values()]
    # What `pgclip ingest --captions <written>` with no PATH would ingest: all of them, nothing skipped.
    found, skipped, missing = discover([local.resolve(key) for key in local.entries])
    assert (len(found), skipped, missing) == (len(paths), 0, [])
    # Written again (a second `pgclip demo`): same content, no leftovers.
    assert materialize_demo(tmp_path / "demo").read_text() == written.read_text()
    assert sorted(p.name for p in written.parent.iterdir()) == ["demo.jsonl"]
    assert json.loads(written.read_text().splitlines()[0])["path"] == str(paths[0])
