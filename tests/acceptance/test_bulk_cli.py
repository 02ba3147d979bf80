"""Bulk mode from the CLI (#19): `pgclip ingest --bulk`, the index states `pgclip models` and
`pgclip index` show, a worker building the index once at the end, `models activate` building a
deferred index first, and a re-embed whose new model gets its index only when its queue drains."""

from __future__ import annotations

import pytest

from tests.acceptance.test_cli_db import assert_one_line_error, run
from tests.images import write_jpegs

pytestmark = pytest.mark.slow


def line_of(listing: str, model: str) -> str:
    return next(line for line in listing.splitlines() if line.startswith(f"{model} "))


def test_bulk_ingest_reembed_and_activation_from_the_cli(db_url, tmp_path):
    env = {"PGCLIP_DATABASE_URL": db_url, "PGCLIP_DATA_DIR": str(tmp_path / "data"), "PGCLIP_MODEL": "test-tiny"}
    write_jpegs(tmp_path / "first", 20)
    write_jpegs(tmp_path / "second", 10, start=100)

    # A fresh collection: the first ingest goes in without the index.
    first = run("ingest", "--bulk", str(tmp_path / "first"), env=env, check=True)
    assert "has no index yet; it is built once the workers have embedded this ingest" in first.stderr
    assert "deferred (exact search)" in line_of(run("models", env=env, check=True).stdout, "test-tiny")
    assert "deferred: built once the backlog drains" in run("index", env=env, check=True).stdout
    # Searches answer meanwhile (exactly).
    found = run("search", "a photo", "-k", "3", env=env, check=True)
    assert found.stdout.strip()

    worker = run("worker", "--until-empty", env=env, check=True, timeout=300)
    assert "built the index of test-tiny" in worker.stderr and "20 vectors" in worker.stderr
    listing = run("index", env=env, check=True).stdout
    assert "built in" in line_of(listing, "test-tiny") and "20 vectors" in line_of(listing, "test-tiny")
    assert line_of(run("models", env=env, check=True).stdout, "test-tiny").rstrip().endswith(
        "built  <- answers searches")

    # --bulk into a model with a built index says that it drops it, and what that costs.
    second = run("ingest", "--bulk", str(tmp_path / "second"), env=env, check=True)
    assert "bulk mode: dropped the index of test-tiny" in second.stderr and "(20 vectors)" in second.stderr
    assert "exactly (slower)" in second.stderr
    # Activation builds a deferred index before switching (here: the model already answers).
    activated = run("models", "activate", "test-tiny", env=env, check=True)
    assert "built the index of test-tiny" in activated.stdout and "20 vectors" in activated.stdout
    run("worker", "--until-empty", env=env, check=True, timeout=300)
    assert "30/30 (100%)" in line_of(run("models", env=env, check=True).stdout, "test-tiny")

    # --bulk with nothing new: the index it dropped is built again at once (no worker would).
    again = run("ingest", "--bulk", str(tmp_path / "second"), env=env, check=True)
    assert "nothing new to embed; building the index of test-tiny (random-seed-0) again now" in again.stderr
    assert "built in" in line_of(run("index", env=env, check=True).stdout, "test-tiny")

    # A re-embed: the new model has no index until its queue drains; activation refuses before that.
    queued = run("reembed", "test-tiny-alt", env=env, check=True)
    assert "30 images queued" in queued.stdout and "index is built once they are embedded" in queued.stdout
    assert "deferred (exact search)" in line_of(run("models", env=env, check=True).stdout, "test-tiny-alt")
    assert_one_line_error(run("models", "activate", "test-tiny-alt", env=env), "0 of 30", "--force")
    assert "deferred" in line_of(run("models", env=env, check=True).stdout, "test-tiny-alt")  # nothing built
    worker = run("worker", "--model", "test-tiny-alt", "--until-empty", env=env, check=True, timeout=300)
    assert "built the index of test-tiny-alt" in worker.stderr
    assert "built" in line_of(run("models", env=env, check=True).stdout, "test-tiny-alt")
    switched = run("models", "activate", "test-tiny-alt", env=env, check=True)
    assert "built the index" not in switched.stdout and "test-tiny-alt" in switched.stdout
