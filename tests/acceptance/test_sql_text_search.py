"""An analyst's own login role, granted pgclip_analyst, searches by text in SQL while a real
`pgclip worker` process runs; with no worker it gets an error that says to start one."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.acceptance.test_cli_db import run
from tests.acceptance.test_readme_sql import sql_examples
from tests.acceptance.test_workers import env_for, job_states, listening_workers, start_worker
from tests.images import write_jpegs
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def analyst_url(db_url: str) -> Iterator[str]:
    """A login role that is granted pgclip_analyst and nothing else (roles are server-wide: dropped after)."""
    role = f"analyst_{os.getpid()}"
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(f"DROP ROLE IF EXISTS {role}")
        admin.execute(f"CREATE ROLE {role} LOGIN IN ROLE pgclip_analyst")
    parts = urlsplit(db_url)
    yield urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rsplit('@', 1)[-1]}"))
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(f"DROP ROLE {role}")


def test_an_analyst_searches_by_text_with_a_worker_running_and_is_told_when_none_runs(db_url, analyst_url, tmp_path):
    env = env_for(db_url, tmp_path)
    write_jpegs(tmp_path / "photos", 8)
    run("ingest", str(tmp_path / "photos"), env=env, check=True)
    worker = start_worker(env)
    wait_for(lambda: job_states(db_url) == {"done": 8}, timeout=120, processes=[worker])

    with psycopg.connect(analyst_url, autocommit=True) as analyst:
        assert analyst.execute("SELECT current_user = session_user").fetchone() == (True,)  # no SET ROLE here
        rows = analyst.execute("SELECT image_id, similarity FROM pgclip.search_text('a cat', NULL, '{}', 5)").fetchall()
        assert len(rows) == 5 and all(similarity is not None for _, similarity in rows)
        readme_example = sql_examples()[0]  # the README's first: its text search
        assert "pgclip.search_text('a cat'" in readme_example
        assert len(analyst.execute(readme_example).fetchall()) == 5
        # The same in a REPEATABLE READ transaction, with a text the worker has not seen.
        with analyst.transaction():
            analyst.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            analyst.execute("SELECT count(*) FROM pgclip.images")
            assert len(analyst.execute("SELECT * FROM pgclip.search_text('a dog', NULL, '{}', 3)").fetchall()) == 3

    worker.send_signal(signal.SIGTERM)
    worker.communicate(timeout=60)
    wait_for(lambda: listening_workers(db_url) == 0, timeout=30)
    with psycopg.connect(analyst_url, autocommit=True) as analyst:
        # Asked before: answered from the shared cache without a worker.
        assert len(analyst.execute("SELECT * FROM pgclip.search_text('a cat', NULL, '{}', 5)").fetchall()) == 5
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="no pgclip worker answered") as raised:
            analyst.execute("SELECT pgclip.embed_text('a bird', NULL, 500)")
        assert "`pgclip worker`" in raised.value.diag.message_hint
