"""Every SQL example in the README's "Querying with SQL" section runs, as the analyst role."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.integration.test_schema import add_image

README = Path(__file__).resolve().parents[2] / "README.md"


def sql_examples() -> list[str]:
    text = README.read_text()
    section = text.split("## Querying with SQL", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


def test_the_readme_has_sql_examples():
    assert len(sql_examples()) >= 3


@pytest.mark.parametrize("example", sql_examples(), ids=lambda sql: sql.splitlines()[0][:40])
def test_readme_sql_example_runs_for_the_analyst(conn, example):
    model = conn.execute("SELECT id, dimension FROM pgclip.models WHERE state = 'active'").fetchone()
    rng = np.random.default_rng(0)
    for n in range(6):
        image = add_image(conn, f"readme{n}.jpg")
        v = rng.normal(size=model[1]).astype(np.float32)
        conn.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)",
                     [image, model[0], v / np.linalg.norm(v)])
        conn.execute("INSERT INTO pgclip.captions (image_id, text) VALUES (%s, %s)", [image, f"a dog on a beach, take {n}"])
        conn.execute("INSERT INTO pgclip.embedding_jobs (image_id, model_id, state) VALUES (%s, %s, 'done')", [image, model[0]])
    # The text search example's text is cached, so no worker is needed here (one answers it in
    # tests/acceptance/test_sql_text_search.py).
    v = rng.normal(size=model[1]).astype(np.float32)
    conn.execute("INSERT INTO pgclip.text_vectors (model_id, text, embedding) VALUES (%s, 'a cat', %s)",
                 [model[0], v / np.linalg.norm(v)])
    conn.execute("SET ROLE pgclip_analyst")
    rows = conn.execute(example).fetchall()
    assert rows, example
    conn.rollback()
