"""db/sql/search.sql is what a migrated database runs, and NULL arguments mean defaults."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from pgclip.db.queries import SQL_DIR

FUNCTIONS = ("pgclip.filter_sql(jsonb)", "pgclip.filter_share(jsonb)",
             "pgclip.search(vector, text, jsonb, int, int, jsonb)", "pgclip.similar(bigint, int, jsonb, int, jsonb)")


def assert_migrated_as_written(conn: psycopg.Connection, filename: str, functions: tuple[str, ...],
                               migration: str) -> None:
    """Each of ``functions`` in the migrated database is what ``db/sql/<filename>`` defines: a
    change to the file needs a migration applying a copy of it (like ``migration``)."""
    def definitions() -> dict[str, str]:
        return {f: conn.execute("SELECT pg_get_functiondef(%s::regprocedure)", [f]).fetchone()[0] for f in functions}

    migrated = definitions()
    with conn.transaction(force_rollback=True):
        conn.execute((SQL_DIR / filename).read_text())
        from_file = definitions()
    for name in functions:
        assert migrated[name] == from_file[name], (
            f"{name} in db/sql/{filename} differs from the migrated database: "
            f"add a migration that applies a copy of the changed file (see migrations/versions/{migration})"
        )


def test_the_migrated_functions_are_the_ones_in_search_sql(conn):
    assert_migrated_as_written(conn, "search.sql", FUNCTIONS, "0017_file_images.py")


@pytest.mark.parametrize("call", [
    "pgclip.search(NULL, 'dog', NULL, NULL, NULL, NULL)",
    "pgclip.search(NULL, 'dog', '{}', 10, 0, '{}')",
    "pgclip.search(NULL, 'dog')",
])
def test_null_for_an_optional_argument_is_its_default(conn, call):
    conn.execute("INSERT INTO pgclip.images (sha256, source, width, height, format, mime, byte_size) "
                 "VALUES (repeat('a', 64), 'a.jpg', 4, 3, 'JPEG', 'image/jpeg', 10)")
    image_id = conn.execute("SELECT id FROM pgclip.images").fetchone()[0]
    conn.execute("INSERT INTO pgclip.captions (image_id, text) VALUES (%s, 'a dog')", [image_id])
    rows = conn.execute(f"SELECT image_id FROM {call}").fetchall()
    assert rows == [(image_id,)]


def test_no_active_model_is_one_error_from_python_and_from_sql(conn):
    """The same state gets the same answer (NotReady: the API's 409) whichever path meets it."""
    from pgclip.core.errors import NotReady
    from pgclip.db.models import require_active_model
    from pgclip.db.search import translate

    conn.execute("UPDATE pgclip.models SET state = 'retired'")
    with pytest.raises(NotReady, match="no active model"):
        require_active_model(conn)
    with pytest.raises(psycopg.Error) as raised:
        conn.execute("SELECT * FROM pgclip.search(NULL, 'dog')")
    assert isinstance(translate(raised.value), NotReady)
    assert "no active model" in str(translate(raised.value))


@pytest.mark.parametrize(("call", "message"), [
    ("pgclip.search(array_fill(0::real, ARRAY[{dim}])::vector)", "query vector must be a non-zero list"),
    ("pgclip.search(NULL, NULL)", "give a query vector or a caption query"),
    ("pgclip.search(NULL, '  ')", "give a query vector or a caption query"),
    ("pgclip.search_text(NULL, NULL)", "give a query text or a caption query"),
    ("pgclip.search_text(' ', '')", "give a query text or a caption query"),
    ("pgclip.search(NULL, 'dog', '{{}}', 2147483647)", "k must be between 1 and 100, got 2147483647"),
    ("pgclip.search(NULL, 'dog', '{{\"exclude_ids\": 5}}')", "exclude_ids must be a list of image ids, got 5"),
    ("pgclip.search(NULL, 'dog', '{{\"exclude_ids\": [1, \"a\"]}}')", "exclude_ids must be a list of image ids"),
    ("pgclip.search(NULL, 'dog', '{{\"exclude_ids\": [1.5]}}')", "exclude_ids must be a list of image ids"),
    ("pgclip.search(NULL, 'dog', '{{\"taken_after\": \"not a date\"}}')",
     'taken_after must be a date and time \\(ISO 8601, e.g. 2024-05-01T12:00:00Z\\), got "not a date"'),
    ("pgclip.search(NULL, 'dog', '{{\"taken_before\": \"yesterday\"}}')", "taken_before must be a date and time"),
    ("pgclip.search(NULL, 'dog', '{{\"taken_after\": \"2024-13-45\"}}')", "taken_after must be a date and time"),
    ("pgclip.search(NULL, 'dog', '{{\"format\": []}}')", "format must be a format name or a non-empty list"),
    ("pgclip.search(NULL, 'dog', '{{\"format\": [1]}}')", "format must be a format name or a non-empty list"),
])
def test_sql_arguments_the_api_refuses_are_refused_in_sql_too(conn, call, message):
    """Each is one clear error (22023, the API's 400), not an empty result, NaN scores or a
    cast error quoting the generated query."""
    from pgclip.db.models import active_model

    dim = active_model(conn).dimension
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        conn.execute(f"SELECT * FROM {call.format(dim=dim)}")
    conn.rollback()


def test_a_query_vector_far_from_unit_length_ranks_as_its_direction(conn):
    from pgclip.db.models import active_model

    model = active_model(conn)
    rng = np.random.default_rng(5)
    ids = []
    for n in range(5):
        conn.execute("INSERT INTO pgclip.images (sha256, source, width, height, format, mime, byte_size, taken_at) "
                     "VALUES (%s, %s, 4, 3, 'JPEG', 'image/jpeg', 10, '2024-05-02')", [f"{n:064x}", f"{n}.jpg"])
        image_id = conn.execute("SELECT max(id) FROM pgclip.images").fetchone()[0]
        v = rng.normal(size=model.dimension).astype(np.float32)
        conn.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)",
                     [image_id, model.id, v / np.linalg.norm(v)])
        ids.append(image_id)
    query = rng.normal(size=model.dimension).astype(np.float32)
    query /= np.linalg.norm(query)
    unit = conn.execute("SELECT image_id, similarity FROM pgclip.search(%s, NULL, '{\"taken_after\": "
                        "\"2024-05-01\"}', 5)", [query]).fetchall()
    assert {i for i, _ in unit} == set(ids)
    for scale in (1e30, 1e-30):
        scaled = conn.execute("SELECT image_id, similarity FROM pgclip.search(%s, NULL, '{}', 5)",
                              [(query.astype(np.float64) * scale).astype(np.float32)]).fetchall()
        assert [i for i, _ in scaled] == [i for i, _ in unit]
        assert [s for _, s in scaled] == pytest.approx([s for _, s in unit], abs=1e-5)
