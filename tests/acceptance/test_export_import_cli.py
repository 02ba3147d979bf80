"""Real `pgclip` processes: ingest, embed, `pgclip export --format parquet`, then `pgclip
import` into a fresh database, and both databases answer `pgclip search` the same.
Refusals are one line on stderr with nothing written."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psycopg
import pytest

from tests.acceptance.test_cli_db import run
from tests.images import write_jpegs

pytestmark = pytest.mark.slow

TABLES = ("images", "captions", "embeddings", "embedding_jobs", "thumbnails", "models")


def env_for(db_url: str, tmp_path: Path) -> dict[str, str]:
    return {"PGCLIP_DATABASE_URL": db_url, "PGCLIP_DATA_DIR": str(tmp_path / "data"), "PGCLIP_MODEL": "test-tiny",
            "PGCLIP_TORCH_THREADS": "1", "PGCLIP_ENCODER": "torch"}


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM pgclip.{t}").fetchone()[0] for t in TABLES}


def one_line_error(result, status: int, fragment: str) -> None:
    assert result.returncode == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pgclip: error: ") and fragment in lines[0], result.stderr


def searched(env: dict[str, str], *args: str) -> list[tuple]:
    result = run("search", *args, "--json", env=env, check=True)
    return [(h["source"], round(h["score"], 6), h["similarity"] and round(h["similarity"], 6), h["text_rank"])
            for h in json.loads(result.stdout)["results"]]


@pytest.fixture
def fresh_url(databases):
    """An empty database, migrated by a real `pgclip migrate` below."""
    url = databases.create_empty()
    yield url
    databases.drop(url)


def test_export_then_import_into_a_fresh_database_searches_the_same(db_url, fresh_url, tmp_path):
    photos = write_jpegs(tmp_path / "photos", 8)
    with (tmp_path / "captions.jsonl").open("w") as f:
        for i, path in enumerate(photos):
            f.write(json.dumps({"path": f"photos/{path.name}", "captions": [f"a photo of a {['dog', 'cat'][i % 2]}"],
                                "metadata": {"roll": i // 3}}) + "\n")
    source = env_for(db_url, tmp_path)
    run("ingest", str(tmp_path / "photos"), "--captions", str(tmp_path / "captions.jsonl"), env=source, check=True)
    run("worker", "--until-empty", env=source, check=True, timeout=300)
    folder = tmp_path / "export"

    exported = run("export", "--format", "parquet", str(folder), "--rows-per-file", "3", env=source, check=True)

    assert "exported 8 vectors of test-tiny (random-seed-0)" in exported.stdout
    assert sorted(p.name for p in (folder / "img_emb").iterdir()) == ["img_emb_0.npy", "img_emb_1.npy", "img_emb_2.npy"]
    assert np.load(folder / "img_emb/img_emb_2.npy").shape == (2, 64)

    target = env_for(fresh_url, tmp_path)
    run("migrate", env=target, check=True)
    imported = run("import", str(folder), env=target, check=True)

    assert "imported 8 rows for test-tiny (random-seed-0): 8 images added" in imported.stdout
    assert "8 vectors added" in imported.stdout and "8 captions added" in imported.stdout
    queries = (["a dog on the grass"], ["cat", "--caption", "cat"], ["--image", str(photos[3])],
               ["--caption", "dog", "-k", "3"], ["photo", "--filter", "metadata.roll=1"])
    with ThreadPoolExecutor(2) as pool:  # the two databases asked at once: each `pgclip search` is seconds of imports
        answers = [(pool.submit(searched, source, *q), pool.submit(searched, target, *q)) for q in queries]
        for query, (expected, got) in zip(queries, answers):
            assert expected.result() and got.result() == expected.result(), query
    # Nothing left for a worker: every imported image has its vector and a done job, and no bytes.
    assert counts(fresh_url)["embeddings"] == 8
    with psycopg.connect(fresh_url) as conn:
        assert conn.execute("SELECT count(*) FROM pgclip.image_blobs").fetchone()[0] == 0
        assert conn.execute("SELECT state, count(*) FROM pgclip.embedding_jobs GROUP BY state").fetchall() == [("done", 8)]

    # Again: nothing new.
    again = run("import", str(folder), env=target, check=True)
    assert "0 images added, 8 already present; 0 vectors added (8 kept as they were), 0 captions" in again.stdout

    # A re-embed there says up front that imported images (no bytes) cannot be embedded by the new model.
    int8 = {**target, "PGCLIP_ENCODER": "onnx-int8", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    reembedded = run("reembed", "test-tiny", env=int8, check=True, timeout=300)
    assert "8 images have no stored bytes (they came from `pgclip import`): its workers cannot embed them" \
        in reembedded.stdout, reembedded.stdout


def test_refusals_are_one_line_and_write_nothing(db_url, databases, tmp_path):
    photos = write_jpegs(tmp_path / "photos", 3)
    source = env_for(db_url, tmp_path)
    run("ingest", *map(str, photos), env=source, check=True)
    run("worker", "--until-empty", env=source, check=True, timeout=300)
    folder = tmp_path / "export"
    run("export", str(folder), env=source, check=True)
    target_url = databases.clone_template()
    try:
        target = env_for(target_url, tmp_path)
        before = counts(target_url)

        one_line_error(run("import", str(folder), "--model", "test-tiny-alt", env=target), 1, "model mismatch")
        one_line_error(run("import", str(tmp_path / "nowhere"), env=target), 2, "no such folder")
        one_line_error(run("export", str(folder), env=source), 2, "not an empty folder")
        npy = folder / "img_emb/img_emb_0.npy"
        npy.write_bytes(npy.read_bytes()[:-64])
        one_line_error(run("import", str(folder), env=target), 1, "img_emb_0.npy: its sha256 differs")
        (folder / "pgclip-export.json").unlink()
        one_line_error(run("import", str(folder), env=target), 1, "holds no pgclip export")

        assert counts(target_url) == before
    finally:
        databases.drop(target_url)
