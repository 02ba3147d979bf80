"""The search's ``folder`` filter (what `pgclip search --in DIR` searches): images of synced files
under a folder, whole path components only, missing files left out; and its plans."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from pgclip.core.errors import InvalidInput
from pgclip.db.engine import connect
from pgclip.db.search import SearchParams, search
from tests.searchdata import add_image, axis, bulk_load, explaining, low_rank_vectors, model, vector_hits_plan

PATHS = ["/a/b/1.jpg", "/a/b/c/2.jpg", "/a/bc/3.jpg", "/a/b.jpg", "/x/4.jpg", "/a/b/gone.jpg"]


@pytest.fixture
def synced(conn) -> dict[str, int]:
    """One image per path, each with its file row; /a/b/gone.jpg is marked missing."""
    dim = model(conn).dimension
    ids = {}
    for n, path in enumerate(PATHS):
        image = add_image(conn, vector=axis(n, dim))
        conn.execute("INSERT INTO pgclip.files (path, path_bytes, image_id, owns_image, size, mtime_ns, sha256,"
                     " missing_since) VALUES (%s, %s, %s, true, 1, 1, 'x', %s)",
                     [path, path.encode(), image.id, "2026-01-01" if "gone" in path else None])
        ids[path] = image.id
    add_image(conn, vector=axis(len(PATHS), dim))  # an upload: in no folder
    return ids


def found(conn: psycopg.Connection, folder: str) -> set[int]:
    rows = conn.execute("SELECT image_id FROM pgclip.search(%s, NULL, %s, 100)",
                        [axis(0, model(conn).dimension), json.dumps({"folder": folder})]).fetchall()
    return {r[0] for r in rows}


@pytest.mark.parametrize(("folder", "expected"), [
    ("/a/b", ["/a/b/1.jpg", "/a/b/c/2.jpg"]),  # not /a/bc, not /a/b.jpg, not the missing one
    ("/a/b/", ["/a/b/1.jpg", "/a/b/c/2.jpg"]),
    ("/a/b/c", ["/a/b/c/2.jpg"]),
    ("/a", ["/a/b/1.jpg", "/a/b/c/2.jpg", "/a/bc/3.jpg", "/a/b.jpg"]),
    ("/a/b.jpg", ["/a/b.jpg"]),  # a file is its own folder
    ("/", ["/a/b/1.jpg", "/a/b/c/2.jpg", "/a/bc/3.jpg", "/a/b.jpg", "/x/4.jpg"]),
    ("/a/", ["/a/b/1.jpg", "/a/b/c/2.jpg", "/a/bc/3.jpg", "/a/b.jpg"]),
    ("/nowhere", []),
])
def test_the_folder_filter_holds_whole_path_components_and_no_missing_file(conn, synced, folder, expected):
    assert found(conn, folder) == {synced[path] for path in expected}


def test_the_folder_filter_is_the_same_in_sql_and_from_python(conn, synced):
    page = search(conn, SearchParams(vector=axis(0, model(conn).dimension), filters={"folder": "/a/b"}, k=100))
    assert {h.image_id for h in page.hits} == found(conn, "/a/b")


@pytest.mark.parametrize("folder", ["a/b", "", "./a", 7])
def test_a_folder_that_is_not_an_absolute_path_is_refused_everywhere(conn, folder):
    with pytest.raises(InvalidInput, match="folder must be an absolute path"):
        SearchParams(caption_query="x", filters={"folder": folder}).validate()
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="folder must be an absolute path"), \
            conn.transaction():
        conn.execute("SELECT * FROM pgclip.search(NULL, 'x', %s)", [json.dumps({"folder": folder})])


def test_the_analyst_role_can_search_by_folder(conn, synced):
    conn.commit()
    with conn.transaction():
        conn.execute("SET LOCAL ROLE pgclip_analyst")
        assert found(conn, "/a/b/c") == {synced["/a/b/c/2.jpg"]}


# --- plans --------------------------------------------------------------------------------------

N = 12_000  # more than the exact threshold's 10,000: a folder holding everything goes by the index
RARE_EVERY = 100  # one image in 100 is under /photos/rare


@pytest.fixture(scope="module")
def foldered(databases) -> Iterator[str]:
    url = databases.clone_template()
    rng = np.random.default_rng(11)
    with connect(url, role="test") as conn:
        vectors, _ = low_rank_vectors(rng, N, model(conn).dimension)
        ids = bulk_load(conn, vectors, [{}] * N)
        conn.execute(
            "INSERT INTO pgclip.files (path, path_bytes, image_id, owns_image, size, mtime_ns, sha256)"
            " SELECT p, convert_to(p, 'UTF8'), id, true, 1, 1, 'x' FROM"
            " (SELECT id, CASE WHEN id %% %s = 0 THEN '/photos/rare/' ELSE '/photos/all/' END || id || '.jpg' AS p"
            "  FROM unnest(%s::bigint[]) AS t(id)) f", [RARE_EVERY, ids])
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE pgclip.files")
    yield url
    databases.drop(url)


def test_plans_of_the_folder_filter(foldered):
    with explaining(foldered) as (conn, notices):
        hnsw = model(conn).index_name
        q = low_rank_vectors(np.random.default_rng(12), 1, model(conn).dimension)[0][0]
        call = "SELECT * FROM pgclip.search(%s, NULL, %s, 10, 0, '{}')"
        # A folder of few images: filter first, through the path index, and rank them exactly.
        rare = vector_hits_plan(conn, notices, call, [q, json.dumps({"folder": "/photos/rare"})])
        assert hnsw not in rare and "files_path_idx" in rare
        # A folder holding (nearly) everything: the vector index, walked past the rest.
        broad = vector_hits_plan(conn, notices, call, [q, json.dumps({"folder": "/photos"})])
        assert hnsw in broad
