"""Index choices per model (`pgclip index rebuild`): each kind is used by the search and finds
the neighbours, a rebuild never interrupts searches, and bad choices are refused."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from pgclip.core.errors import ConfigError, InvalidInput
from pgclip.db import indexes
from pgclip.db import migrate as migrations
from pgclip.db.engine import connect
from pgclip.db.models import ModelRow
from pgclip.db.search import SearchParams, search
from tests.searchdata import (
    Collection,
    bulk_load,
    exact_neighbours,
    explaining,
    low_rank_vectors,
    model,
    vector_hits_plan,
)

N = 4000
DIM = 64  # the test-tiny model's dimension
RARE = {"metadata": {"tag": "rare"}}  # 1 % of the images
CALL = "SELECT * FROM pgclip.search(%s, NULL, %s, 10, 0, '{}')"


@pytest.fixture(scope="module")
def collection(databases) -> Iterator[Collection]:
    url = databases.clone_template()
    rng = np.random.default_rng(7)
    vectors, basis = low_rank_vectors(rng, N, DIM)
    queries, _ = low_rank_vectors(rng, 8, DIM, basis=basis)
    n = np.arange(N)
    rare, tenth = n % 100 == 7, n % 10 == 3
    with connect(url, role="test") as conn:
        image_ids = np.asarray(bulk_load(conn, vectors, [{"tag": "rare"} if r else {} for r in rare]))
    yield Collection(url, image_ids, vectors, rare, tenth, queries)
    databases.drop(url)


def current(url: str) -> ModelRow:
    with connect(url) as conn:
        return model(conn)


def rebuild(url: str, **options) -> indexes.RebuildReport:
    with connect(url) as conn:
        m = model(conn)
        choice = indexes.choose(m, indexes.vector_count(conn, m), **options)
    return indexes.rebuild(url, m, choice)


def ids(url: str, q: np.ndarray, filters: dict | None = None) -> tuple[list[int], list[float]]:
    with connect(url) as conn:
        page = search(conn, SearchParams(vector=q.tolist(), filters=filters or {}, k=10))
    return [h.image_id for h in page.hits], [h.similarity for h in page.hits]


@pytest.mark.parametrize(
    ("options", "uses_index"),
    [
        ({"kind": "hnsw", "halfvec": False}, True),
        ({"kind": "hnsw", "halfvec": True}, True),
        ({"kind": "ivfflat", "halfvec": False, "lists": 20, "probes": 5}, True),
        ({"kind": "ivfflat", "halfvec": True, "lists": 20, "probes": 5}, True),
        ({"kind": "none"}, False),
    ],
    ids=["hnsw", "hnsw-halfvec", "ivfflat", "ivfflat-halfvec", "none"],
)
def test_each_index_choice_answers_searches_through_its_index(collection, options, uses_index):
    report = rebuild(collection.url, **options)
    m = report.model
    assert (m.index_kind, m.storage) == (options["kind"], "halfvec" if options.get("halfvec") else "vector")

    with explaining(collection.url) as (conn, notices):
        plan = vector_hits_plan(conn, notices, CALL, [collection.queries[0], "{}"])
    assert (m.index_name in plan) is uses_index, plan

    recalls = []
    for q in collection.queries:
        found, sims = ids(collection.url, q)
        truth = exact_neighbours(collection, q)
        recalls.append(len(set(found) & set(truth)) / 10)
        # Candidates come from the index (halfvec there), but are ranked and reported at full precision.
        exact = collection.vectors[np.asarray(found) - 1].astype(np.float64) @ q.astype(np.float64)
        assert sims == pytest.approx(exact.tolist(), abs=1e-5)
        assert sims == sorted(sims, reverse=True)
        # A filter that keeps 1 % of the images still gives k exact results.
        assert ids(collection.url, q, RARE)[0] == exact_neighbours(collection, q, collection.rare)
    assert np.mean(recalls) >= (1.0 if options["kind"] == "none" else 0.9), recalls


def test_a_rebuild_never_interrupts_searches(collection):
    rebuild(collection.url, kind="hnsw", halfvec=False)
    errors: list[BaseException] = []
    answered = [0]
    stop = threading.Event()

    def searching() -> None:
        q = collection.queries[1]
        while not stop.is_set():
            try:
                found, _ = ids(collection.url, q)
                assert len(found) == 10
                answered[0] += 1
            except BaseException as exc:  # noqa: BLE001 - every failure counts
                errors.append(exc)

    thread = threading.Thread(target=searching)
    thread.start()
    try:
        for options in ({"halfvec": True}, {"kind": "ivfflat", "lists": 10}, {"kind": "none"},
                        {"kind": "hnsw", "halfvec": False}):
            rebuild(collection.url, **options)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert answered[0] > 0
    with connect(collection.url) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'pgclip' AND tablename = 'embeddings'"
            " AND indexname ~ '^embeddings_m[0-9]+_'")]
    assert names == [current(collection.url).index_name], "old and staged indexes are gone"


def test_query_time_settings_change_without_a_build(collection):
    rebuild(collection.url, kind="hnsw", halfvec=False)
    with connect(collection.url) as conn:
        oid = conn.execute("SELECT to_regclass(%s)::oid", [f"pgclip.{current(collection.url).index_name}"]).fetchone()
    report = rebuild(collection.url, ef_search=120)
    assert not report.built
    assert report.model.index_params["ef_search"] == 120
    with connect(collection.url) as conn:
        assert conn.execute("SELECT to_regclass(%s)::oid", [f"pgclip.{report.model.index_name}"]).fetchone() == oid
        # An analyst may override it per call; out of range is a clear error.
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="ef_search must be between 1 and 1000"):
            conn.execute("SELECT * FROM pgclip.search(%s, NULL, '{}', 10, 0, '{\"ef_search\": 0}')",
                         [collection.queries[0]]).fetchall()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "hnsw", "lists": 10}, "lists does not apply to kind hnsw \\(it takes m, ef_construction, ef_search\\)"),
        ({"kind": "ivfflat", "m": 8}, "m does not apply to kind ivfflat"),
        ({"kind": "none", "halfvec": True}, "halfvec applies to an index"),
        ({"kind": "hnsw", "m": 1}, "m must be between 2 and 100"),
        ({"kind": "hnsw", "m": 40}, "ef_construction must be at least twice m \\(80\\), got 64"),
        ({"kind": "hnsw", "ef_search": 5000}, "ef_search must be between 1 and 1000"),
        ({"kind": "btree"}, "index kind must be one of hnsw, ivfflat, none"),
    ],
)
def test_a_bad_choice_is_refused_with_what_to_change(collection, options, message):
    with pytest.raises(InvalidInput, match=message):
        rebuild(collection.url, **options)


def test_a_bad_build_memory_is_refused_and_nothing_changes(collection):
    m = current(collection.url)
    with connect(collection.url) as conn:
        choice = indexes.choose(m, indexes.vector_count(conn, m), kind="hnsw", m=8, ef_construction=32)
    with pytest.raises(InvalidInput, match="--memory 'lots'.*512MB or 2GB"):
        indexes.rebuild(collection.url, m, choice, build_memory="lots")
    assert current(collection.url) == m


def test_ivfflat_lists_follow_the_collection_size_unless_given(collection):
    m = current(collection.url)
    assert indexes.choose(m, 250_000, kind="ivfflat").params == {"lists": 250, "probes": 16}
    assert indexes.choose(m, 4_000_000, kind="ivfflat").params == {"lists": 2000, "probes": 45}
    assert indexes.choose(m, 10, kind="ivfflat", lists=3).params == {"lists": 3, "probes": 2}


def test_one_rebuild_of_a_model_at_a_time(collection):
    m = current(collection.url)
    with connect(collection.url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", [indexes._LOCK_CLASS, m.id])
        with pytest.raises(ConfigError, match="another `pgclip index rebuild` of .* is running"):
            rebuild(collection.url, halfvec=True)
    assert current(collection.url).storage == m.storage  # nothing changed


def test_an_interrupted_rebuilds_leftover_is_cleared(collection):
    m = current(collection.url)
    with connect(collection.url, autocommit=True) as conn:
        conn.execute(f"CREATE INDEX embeddings_m{m.id}_next ON pgclip.embeddings (image_id) WHERE model_id = {m.id}")
    report = rebuild(collection.url, kind="hnsw", halfvec=not (m.storage == "halfvec"), m=8, ef_construction=32)
    assert report.built
    with connect(collection.url) as conn:
        assert conn.execute("SELECT to_regclass(%s)", [f"pgclip.embeddings_m{m.id}_next"]).fetchone() == (None,)


def test_the_migration_renames_existing_indexes_and_records_their_parameters(databases):
    url = databases.clone_template()  # migrated, test-tiny registered with its index
    try:
        migrations.downgrade(url, "0003")
        with connect(url) as conn:
            m_id = conn.execute("SELECT id FROM pgclip.models").fetchone()[0]
            assert conn.execute("SELECT to_regclass(%s)", [f"pgclip.embeddings_m{m_id}_hnsw"]).fetchone()[0]
        migrations.upgrade(url)
        m = current(url)
        assert (m.index_kind, m.storage, m.index_params) == ("hnsw", "vector", {"m": 16, "ef_construction": 64})
        with connect(url) as conn:
            assert conn.execute("SELECT to_regclass(%s)", [f"pgclip.{m.index_name}"]).fetchone()[0]
    finally:
        databases.drop(url)
