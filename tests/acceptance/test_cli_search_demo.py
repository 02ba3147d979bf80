"""`pgclip demo --no-serve` and `pgclip search` as a user runs them."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.acceptance.test_cli_db import assert_one_line_error, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_env(databases, tmp_path_factory):
    db_url = databases.clone_template()
    env = {"PGCLIP_DATABASE_URL": db_url, "PGCLIP_DATA_DIR": str(tmp_path_factory.mktemp("demo"))}
    yield env
    databases.drop(db_url)


def test_demo_without_weights_says_so_and_offers_the_test_model(demo_env):
    result = run("demo", "--no-serve", env={**demo_env, "PGCLIP_MODEL": "ViT-B-32"})
    assert_one_line_error(result, "ViT-B-32", "--test-model")


def test_demo_with_the_test_model_embeds_every_demo_image(demo_env):
    result = run("demo", "--test-model", "--no-serve", env=demo_env, check=True, timeout=300)
    assert "random weights" in result.stdout
    with psycopg.connect(demo_env["PGCLIP_DATABASE_URL"]) as conn:
        states = dict(conn.execute(
            "SELECT j.state, count(*) FROM pgclip.embedding_jobs j JOIN pgclip.models m ON m.id = j.model_id"
            " WHERE m.state = 'active' GROUP BY j.state").fetchall())
        images = conn.execute("SELECT count(*) FROM pgclip.images").fetchone()[0]
    assert images >= 25 and states == {"done": images}
    again = run("demo", "--test-model", "--no-serve", env=demo_env, check=True, timeout=300)
    assert "0 added" in again.stdout  # a second run reuses what is there


def test_cli_search_finds_demo_captions_and_filters(demo_env):
    env = {**demo_env, "PGCLIP_MODEL": "test-tiny"}
    found = json.loads(run("search", "--caption", "cat", "--json", env=env, check=True).stdout)
    assert found["model"] == "test-tiny"
    assert any("chelsea" in (r["source"] or "") for r in found["results"])
    space = json.loads(run("search", "stars", "--filter", "metadata.tag=space", "-k", "20", "--json", env=env,
                           check=True).stdout)
    assert space["results"] and all(r["metadata"]["tag"] == "space" for r in space["results"])
    text = run("search", "a cup of coffee", "-k", "3", env=env, check=True).stdout
    assert text.count("score") == 3
    assert_one_line_error(run("search", "dog", "--filter", "colour=red", env=env), "unknown filter")
    assert_one_line_error(run("search", "dog", "--filter", "min_width=wide", env=env), "min_width")
    assert_one_line_error(run("search", "dog + ./missing.jpg", env=env), "cannot read image")
