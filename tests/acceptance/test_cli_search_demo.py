"""`pgclip demo` and `pgclip search` as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import psycopg
import pytest

from tests.acceptance.test_api import free_port
from tests.acceptance.test_cli_db import assert_one_line_error, run
from tests.images import jpeg_bytes
from tests.waiting import wait_for

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
    with psycopg.connect(demo_env["PGCLIP_DATABASE_URL"]) as conn:  # nothing registered for it
        assert conn.execute("SELECT count(*) FROM pgclip.models WHERE name = 'ViT-B-32'").fetchone()[0] == 0


def test_demo_with_the_test_model_embeds_every_demo_image(demo_env):
    result = run("demo", "--test-model", "--no-serve", env=demo_env, check=True, timeout=300)
    assert "random weights" in result.stdout
    # ... and how ingest and workers use the same model (they embed for the configured one otherwise).
    assert "PGCLIP_MODEL=test-tiny PGCLIP_PRETRAINED=random pgclip ingest" in result.stdout
    with psycopg.connect(demo_env["PGCLIP_DATABASE_URL"]) as conn:
        states = dict(conn.execute(
            "SELECT j.state, count(*) FROM pgclip.embedding_jobs j JOIN pgclip.models m ON m.id = j.model_id"
            " WHERE m.state = 'active' GROUP BY j.state").fetchall())
        images = conn.execute("SELECT count(*) FROM pgclip.images").fetchone()[0]
    assert images >= 25 and states == {"done": images}
    again = run("demo", "--test-model", "--no-serve", env=demo_env, check=True, timeout=300)
    assert "0 added" in again.stdout  # a second run reuses what is there


def test_cli_search_after_the_test_model_demo_answers_with_the_active_model(demo_env):
    # A new user's next command after `pgclip demo --test-model`, with nothing set: the configured
    # model (ViT-B-32) has no weights here, the active one (test-tiny) answers.
    found = json.loads(run("search", "a cup of coffee", "--json", env=demo_env, check=True).stdout)
    assert found["model"] == "test-tiny" and found["results"]
    # ... and leaves no ViT-B-32 "building" beside it, for whose vectors every later ingest would queue
    # jobs that no worker of this user takes.
    with psycopg.connect(demo_env["PGCLIP_DATABASE_URL"]) as conn:
        names = [name for (name,) in conn.execute("SELECT name FROM pgclip.models")]
    assert "ViT-B-32" not in names, names


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
    # A text longer than the query-text cache holds (1000 characters) is searched, just not cached.
    long = json.loads(run("search", "a cup " * 200, "-k", "2", "--json", env=env, check=True).stdout)
    assert len(long["results"]) == 2


def test_the_serving_demo_answers_text_searches_in_sql_and_embeds_images_added_with_sql(demo_env, tmp_path):
    """The README's first SQL example, as the issue's analyst runs it after `make demo`: the
    demo keeps a worker beside the page, so `pgclip.search_text` gets its text vectors and an
    image added with SQL is embedded, with nothing else running."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}
    demo = subprocess.Popen([sys.executable, "-m", "pgclip.cli", "demo", "--test-model"],
                            env={**env, **demo_env, "PGCLIP_PORT": str(port)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = demo_env["PGCLIP_DATABASE_URL"]
    analyst = f"analyst_{port}"
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/readyz"), 300, 0.2, "the demo serving", [demo])
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {analyst} LOGIN")
            conn.execute(f"GRANT pgclip_analyst, pgclip_writer TO {analyst}")
        with psycopg.connect(psycopg.conninfo.make_conninfo(url, user=analyst), autocommit=True) as conn:
            rows = conn.execute("SELECT s.image_id FROM pgclip.search_text('a cat', NULL, '{}', 5) AS s").fetchall()
            assert len(rows) == 5
            added = conn.execute("SELECT pgclip.add_image(%s, 'etl/lantern.jpg', ARRAY['a paper lantern'])",
                                 [jpeg_bytes(7301, (120, 90))]).fetchone()[0]
        with psycopg.connect(url, autocommit=True) as conn:
            wait_for(lambda: conn.execute("SELECT count(*) FROM pgclip.embeddings WHERE image_id = %s",
                                          [added]).fetchone()[0] == 1, 60, what="the SQL-added image embedded")
            assert conn.execute("SELECT width, height FROM pgclip.images WHERE id = %s", [added]).fetchone() == (120, 90)
    finally:
        demo.send_signal(signal.SIGINT)
        demo.communicate(timeout=60)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {analyst}")
            conn.execute(f"DROP ROLE IF EXISTS {analyst}")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
