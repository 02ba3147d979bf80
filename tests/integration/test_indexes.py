"""Index choices per model (`pgclip index rebuild`): each kind is used by the search and finds
the neighbours, a rebuild never interrupts searches, and bad choices are refused."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from pgclip.cli.main import main as cli_main
from pgclip.core.errors import ConfigError, InvalidInput
from pgclip.db import indexes
from pgclip.db import migrate as migrations
from pgclip.db import models as models_db
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
        ({"kind": "hnsw", "m": 40, "ef_construction": 64}, "ef_construction must be at least twice m \\(80\\), got 64"),
        ({"m": 8, "by_size": True}, "by_size chooses m and ef_construction from the collection's size: give it or m, not both"),
        ({"kind": "ivfflat", "by_size": True}, "by_size applies to HNSW's m and ef_construction, not to kind ivfflat"),
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


def test_the_hnsw_graph_follows_the_collection_size_unless_someone_fixed_it(collection):
    m = current(collection.url)
    assert "m" not in m.index_params and "ef_construction" not in m.index_params  # nobody fixed them
    small, large = indexes.choose(m, 100_000), indexes.choose(m, 1_000_000)
    assert (small.params["m"], small.params["ef_construction"], small.sized) == (16, 64, ("m", "ef_construction"))
    assert (large.params["m"], large.params["ef_construction"], large.sized) == (16, 128, ("m", "ef_construction"))
    assert "by the collection's size" in large.describe()
    # What is given is fixed from then on; the rest still follows the size (never under 2 m).
    one = indexes.choose(m, 1_000_000, m=24)
    assert (one.params["m"], one.params["ef_construction"], one.sized) == (24, 128, ("ef_construction",))
    assert one.fixed["m"] == 24 and "ef_construction" not in one.fixed
    assert indexes.choose(m, 10, m=40).params["ef_construction"] == 80
    fixed = dataclasses.replace(m, index_params={"m": 32, "ef_construction": 200})
    assert (indexes.choose(fixed, 1_000_000).params["m"], indexes.choose(fixed, 1_000_000).sized) == (32, ())
    again = indexes.choose(fixed, 1_000_000, by_size=True)  # forget the fixed ones
    assert (again.params["m"], again.params["ef_construction"], again.sized) == (16, 128, ("m", "ef_construction"))


def outgrown_collection(url: str, monkeypatch) -> None:
    """The graph bounds scaled down to the collection (4,000 vectors), and its index as a build by
    size left it when the collection held fewer than 1,000 vectors (8/32)."""
    monkeypatch.setattr(models_db, "HNSW_BY_SIZE", ((1000, {"m": 8, "ef_construction": 32}),
                                                    (None, {"m": 12, "ef_construction": 48})))
    m = rebuild(url, kind="hnsw", halfvec=False, m=8, ef_construction=32).model
    with connect(url) as conn:
        conn.execute("UPDATE pgclip.models SET index_params = index_params - 'm' - 'ef_construction' WHERE id = %s",
                     [m.id])
        conn.commit()


def test_a_collection_that_outgrew_its_graph_is_told_and_a_plain_rebuild_builds_the_denser_one(
        collection, monkeypatch):
    outgrown_collection(collection.url, monkeypatch)
    with connect(collection.url) as conn:
        (info,) = indexes.describe_indexes(conn)
    assert info.built == {"m": 8, "ef_construction": 32}
    assert info.outgrown == {"m": 12, "ef_construction": 48}
    report = rebuild(collection.url)  # nothing given: by size
    assert report.built and "m" not in report.model.index_params  # still by size, not fixed
    with connect(collection.url) as conn:
        (info,) = indexes.describe_indexes(conn)
        assert indexes.built_params(conn, report.model) == {"m": 12, "ef_construction": 48}
    assert info.outgrown is None and info.choice.sized == ("m", "ef_construction")
    assert not rebuild(collection.url).built  # the graph the size asks for is there already
    q = collection.queries[0]
    assert len(set(ids(collection.url, q)[0]) & set(exact_neighbours(collection, q))) >= 9  # searches use it


def test_pgclip_index_says_so_and_its_rebuild_follows(collection, monkeypatch, capsys):
    outgrown_collection(collection.url, monkeypatch)
    monkeypatch.setenv("PGCLIP_DATABASE_URL", collection.url)
    assert cli_main(["index"]) == 0
    listed = capsys.readouterr().out
    assert "hnsw over vector (m=8, ef_construction=32" in listed  # (and the ef_search an earlier test set)
    assert "; m and ef_construction by the collection's size)" in listed
    assert "the collection outgrew this graph: `pgclip index rebuild test-tiny` builds m=12, ef_construction=48" \
        in listed
    assert cli_main(["index", "rebuild", "test-tiny"]) == 0
    rebuilt = capsys.readouterr().out
    assert "-> hnsw over vector (m=12, ef_construction=48" in rebuilt and "built in" in rebuilt
    assert cli_main(["index", "rebuild", "test-tiny"]) == 0
    assert "nothing to change: the index is built as asked" in capsys.readouterr().out
    assert cli_main(["index"]) == 0
    assert "outgrew" not in capsys.readouterr().out


def test_a_deferred_build_takes_its_graph_from_the_vectors_it_indexes(collection, monkeypatch):
    monkeypatch.setattr(models_db, "HNSW_BY_SIZE", ((1000, {"m": 8, "ef_construction": 32}),
                                                    (None, {"m": 10, "ef_construction": 40})))
    m = current(collection.url)
    with connect(collection.url, autocommit=True) as conn:
        conn.execute(f"DROP INDEX pgclip.{m.index_name}")
    report = indexes.build_deferred(collection.url, m, wait=True)
    assert report is not None and report.vectors == N
    with connect(collection.url) as conn:
        assert indexes.built_params(conn, m) == {"m": 10, "ef_construction": 40}


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
        # 0004 recorded pgvector's defaults, 0014 turned them into "by the collection's size"; the
        # index itself keeps the graph it was built with.
        assert (m.index_kind, m.storage, m.index_params) == ("hnsw", "vector", {})
        with connect(url) as conn:
            assert conn.execute("SELECT to_regclass(%s)", [f"pgclip.{m.index_name}"]).fetchone()[0]
            assert indexes.built_params(conn, m) == {"m": 16, "ef_construction": 64}
    finally:
        databases.drop(url)
