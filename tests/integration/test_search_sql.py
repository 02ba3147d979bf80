"""db/sql/search.sql is what a migrated database runs, and NULL arguments mean defaults."""

from __future__ import annotations

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
    assert_migrated_as_written(conn, "search.sql", FUNCTIONS, "0012_broad_filters.py")


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
