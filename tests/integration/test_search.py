"""``pgclip.search`` on a real PostgreSQL: exact answers on constructed data, every filter,
caption full-text, the fusion formulas, cut-offs, ordering, paging, filtered recall on 20,000
vectors, the plans behind it, "more like this", the analyst role and the images view.

Data goes straight into the tables (tests/searchdata.py), so every expectation is computed
beside it in Python, never read back from the function under test.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import math
from collections.abc import Callable, Iterator

import numpy as np
import psycopg
import pytest

from pgclip.core.errors import InvalidInput, NotFound
from pgclip.db.engine import connect
from pgclip.db.models import ensure_model
from pgclip.db.search import NotReady, Page, SearchParams, search, similar
from tests.searchdata import (
    Collection,
    ImageSpec,
    add_image,
    at_angle,
    axis,
    bulk_load,
    cosine,
    exact_neighbours,
    explaining,
    jsonb_contains,
    low_rank_vectors,
    model,
    unit,
    vector_hits_plan,
)

DIM = 64  # the test-tiny model's dimension
UTC = dt.UTC
RRF_K = 60
SIM_TOL = 1e-5  # pgvector computes cosine distance in single precision


def run(conn: psycopg.Connection, **params) -> Page:
    return search(conn, SearchParams(**params))


def ids(page: Page) -> list[int]:
    return [h.image_id for h in page.hits]


def caption_ranks(
    conn: psycopg.Connection, specs: list[ImageSpec], query: str, ts_config: str = "english"
) -> dict[int, float]:
    """Each image's expected text_rank: ts_rank_cd of every matching caption, summed (computed
    caption by caption, outside pgclip.search)."""
    ranks: dict[int, float] = {}
    for spec in specs:
        for text in spec.captions:
            matches, rank = conn.execute(
                "SELECT to_tsvector(%(c)s::regconfig, %(t)s) @@ websearch_to_tsquery(%(c)s::regconfig, %(q)s),"
                " ts_rank_cd(to_tsvector(%(c)s::regconfig, %(t)s), websearch_to_tsquery(%(c)s::regconfig, %(q)s))",
                {"c": ts_config, "t": text, "q": query},
            ).fetchone()
            if matches:
                ranks[spec.id] = ranks.get(spec.id, 0.0) + rank
    return ranks


def positions(keyed: dict[int, float]) -> dict[int, int]:
    """1-based rank by value descending, image id ascending (the functions' tie-break)."""
    return {i: n for n, i in enumerate(sorted(keyed, key=lambda i: (-keyed[i], i)), start=1)}


# --- 1. exact vector search --------------------------------------------------------------


def test_vector_search_returns_the_nearest_images_in_order_with_their_cosine_similarity(conn):
    angles = [50, 10, 30, 10, 70, 90, 120, 180]  # two images at 10 degrees: a tie
    specs = [add_image(conn, vector=at_angle(a, DIM)) for a in angles]
    expected = sorted(zip(angles, (s.id for s in specs)), key=lambda p: (p[0], p[1]))

    page = run(conn, vector=axis(0, DIM), k=5)

    assert ids(page) == [i for _, i in expected[:5]]
    assert ids(page)[:2] == sorted(s.id for s, a in zip(specs, angles) if a == 10)  # tie: lower id first
    for n, (hit, (angle, _)) in enumerate(zip(page.hits, expected), start=1):
        assert hit.similarity == pytest.approx(math.cos(math.radians(angle)), abs=SIM_TOL)
        assert hit.vector_rank == n
        assert hit.score == hit.similarity  # vector-only: the score is the similarity
        assert hit.text_rank is None and hit.text_rank_position is None
    everything = run(conn, vector=3.0 * axis(0, DIM), k=100)  # length does not matter to cosine
    assert ids(everything) == [i for _, i in expected]
    assert everything.hits[-1].similarity == pytest.approx(-1.0, abs=SIM_TOL)
    assert everything.next_cursor is None


def test_a_query_vector_of_the_wrong_size_or_with_nan_is_invalid_input(conn):
    add_image(conn, vector=axis(0, DIM))
    with pytest.raises(InvalidInput, match="dimensions"):
        run(conn, vector=axis(0, DIM + 1))
    with pytest.raises(InvalidInput, match="non-finite"):
        run(conn, vector=np.full(DIM, np.nan, dtype=np.float32))
    with pytest.raises(InvalidInput, match="k must be"):
        run(conn, vector=axis(0, DIM), k=101)


# --- 2. filters ------------------------------------------------------------------------------

T0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
T_MID = T0 + dt.timedelta(days=90)  # exactly one image's taken_at: the boundary case
T_LATE = T0 + dt.timedelta(days=300)
SIZES = [(400, 300), (300, 400), (500, 500), (1200, 800), (800, 1200), (1000, 1000), (640, 480), (100, 100)]


@dataclasses.dataclass(frozen=True)
class Corpus:
    url: str
    specs: list[ImageSpec]


@pytest.fixture(scope="module")
def corpus(databases) -> Iterator[Corpus]:
    """48 images with varied sizes, formats, dates, metadata and captions (read-only)."""
    url = databases.clone_template()
    rng = np.random.default_rng(11)
    specs = []
    with connect(url, role="test") as conn:
        for i in range(48):
            width, height = SIZES[i % len(SIZES)]
            metadata: dict = {}
            camera = ["Canon", "Nikon", "O'Brien", None][int(rng.integers(4))]
            if camera:
                metadata["camera"] = camera
            tags = [t for t in ("dog", "beach", "snow") if rng.random() < 0.5]
            if tags:
                metadata["tags"] = tags
            if i % 4 == 1:
                metadata["exif"] = {"iso": [100, 400][i % 8 == 1], "lens": "50mm"}
            specs.append(add_image(
                conn, vector=unit(rng.normal(size=DIM)), width=width, height=height,
                format=["JPEG", "PNG", "WEBP", "GIF"][int(rng.integers(4))],
                taken_at=None if i % 6 == 5 else T0 + dt.timedelta(days=9 * i),
                metadata=metadata, captions=() if i % 3 == 0 else (f"photo number {i}",),
            ))
        conn.commit()
    assert any(s.taken_at == T_MID for s in specs)
    yield Corpus(url, specs)
    databases.drop(url)


@pytest.fixture
def corpus_conn(corpus: Corpus) -> Iterator[psycopg.Connection]:
    with connect(corpus.url, role="test") as conn:
        yield conn


Keep = Callable[[ImageSpec], bool]


def _combined(specs: list[ImageSpec]) -> tuple[dict, Keep]:
    def base(s: ImageSpec) -> bool:
        return (s.width > s.height and s.format in ("JPEG", "PNG", "WEBP") and s.taken_at is not None
                and s.taken_at >= T_MID and bool(s.captions) and jsonb_contains(s.metadata, {"tags": ["dog"]}))

    excluded = next(s.id for s in specs if base(s))
    filters = {"orientation": "landscape", "format": ["jpeg", "Png", "WEBP"], "taken_after": T_MID.isoformat(),
               "has_caption": True, "metadata": {"tags": ["dog"]}, "exclude_ids": [excluded]}
    return filters, lambda s: base(s) and s.id != excluded


# name -> specs -> (filters, which images must pass)
FILTER_CASES: dict[str, Callable[[list[ImageSpec]], tuple[dict, Keep]]] = {
    "taken_after": lambda _: ({"taken_after": T_MID.isoformat()},
                              lambda s: s.taken_at is not None and s.taken_at >= T_MID),
    "taken_before": lambda _: ({"taken_before": T_MID.isoformat()},
                               lambda s: s.taken_at is not None and s.taken_at < T_MID),
    "taken_between": lambda _: ({"taken_after": T_MID.isoformat(), "taken_before": T_LATE.isoformat()},
                                lambda s: s.taken_at is not None and T_MID <= s.taken_at < T_LATE),
    "min_width": lambda _: ({"min_width": 640}, lambda s: s.width >= 640),
    "min_height": lambda _: ({"min_height": 800}, lambda s: s.height >= 800),
    "landscape": lambda _: ({"orientation": "landscape"}, lambda s: s.width > s.height),
    "portrait": lambda _: ({"orientation": "portrait"}, lambda s: s.width < s.height),
    "square": lambda _: ({"orientation": "square"}, lambda s: s.width == s.height),
    "format_string_lowercase": lambda _: ({"format": "jpeg"}, lambda s: s.format == "JPEG"),
    "format_list_mixed_case": lambda _: ({"format": ["png", "WebP"]}, lambda s: s.format in ("PNG", "WEBP")),
    "metadata_value": lambda _: ({"metadata": {"camera": "Canon"}}, lambda s: s.metadata.get("camera") == "Canon"),
    "metadata_with_a_quote": lambda _: ({"metadata": {"camera": "O'Brien"}},
                                        lambda s: s.metadata.get("camera") == "O'Brien"),
    "metadata_array_containment": lambda _: ({"metadata": {"tags": ["beach", "dog"]}},
                                             lambda s: jsonb_contains(s.metadata, {"tags": ["beach", "dog"]})),
    "metadata_nested": lambda _: ({"metadata": {"exif": {"iso": 400}}},
                                  lambda s: jsonb_contains(s.metadata, {"exif": {"iso": 400}})),
    "has_caption_true": lambda _: ({"has_caption": True}, lambda s: bool(s.captions)),
    "has_caption_false": lambda _: ({"has_caption": False}, lambda s: not s.captions),
    "exclude_ids": lambda specs: ({"exclude_ids": [specs[0].id, specs[7].id, 10**12]},
                                  lambda s: s.id not in (specs[0].id, specs[7].id)),
    "combined": _combined,
}


@pytest.mark.parametrize("name", FILTER_CASES)
def test_each_filter_keeps_exactly_the_matching_images(corpus, corpus_conn, name):
    filters, keep = FILTER_CASES[name](corpus.specs)
    expected = {s.id for s in corpus.specs if keep(s)}
    assert 0 < len(expected) < len(corpus.specs), "the corpus must make this filter discriminate"

    by_vector = run(corpus_conn, vector=unit(np.ones(DIM)), filters=filters, k=100)
    by_caption = run(corpus_conn, caption_query="photo", filters=filters, k=100)

    assert sorted(ids(by_vector)) == sorted(expected)  # sorted lists: no duplicates either
    assert sorted(ids(by_caption)) == sorted(s.id for s in corpus.specs if s.id in expected and s.captions)
    sims = [h.similarity for h in by_vector.hits]
    assert sims == sorted(sims, reverse=True)


def test_no_filter_and_empty_filters_keep_everything(corpus, corpus_conn):
    everything = sorted(s.id for s in corpus.specs)
    assert sorted(ids(run(corpus_conn, vector=unit(np.ones(DIM)), k=100))) == everything
    assert sorted(ids(run(corpus_conn, vector=unit(np.ones(DIM)), filters={"metadata": {}}, k=100))) == everything


def test_filter_values_are_data_not_sql(corpus, corpus_conn):
    hostile = "JPEG'); DELETE FROM pgclip.images; --"
    assert run(corpus_conn, vector=axis(0, DIM), filters={"format": hostile}).hits == []
    assert run(corpus_conn, vector=axis(0, DIM), filters={"metadata": {"camera": hostile}}).hits == []
    assert corpus_conn.execute("SELECT count(*) FROM pgclip.images").fetchone()[0] == len(corpus.specs)


BAD_FILTERS = {
    "unknown_key": {"colour": "red"},
    "min_width_not_a_number": {"min_width": "abc"},
    "min_height_out_of_range": {"min_height": 10**12},
    "orientation_diagonal": {"orientation": "diagonal"},
    "taken_after_not_a_date": {"taken_after": "not a date"},
    "taken_before_not_a_date": {"taken_before": "yesterday-ish"},
    "metadata_not_an_object": {"metadata": ["tag"]},
    "has_caption_not_a_boolean": {"has_caption": "maybe"},
    "exclude_ids_not_ids": {"exclude_ids": ["seven"]},
    "exclude_ids_not_a_list": {"exclude_ids": 7},
}


@pytest.mark.parametrize("how", ["vector", "caption"])
@pytest.mark.parametrize("name", BAD_FILTERS)
def test_a_malformed_filter_is_invalid_input_not_a_driver_error(corpus_conn, name, how):
    query = {"vector": axis(0, DIM)} if how == "vector" else {"caption_query": "photo"}
    with pytest.raises(InvalidInput):
        run(corpus_conn, filters=BAD_FILTERS[name], **query)
    assert corpus_conn.execute("SELECT 1").fetchone() == (1,)  # the connection is still usable


def test_the_sql_function_names_an_unknown_filter_and_the_known_ones(corpus_conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r'unknown filter "colour" \(known: taken_after'):
        corpus_conn.execute("SELECT * FROM pgclip.search(NULL, 'photo', '{\"colour\": \"red\"}')")
    corpus_conn.rollback()
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="filters must be a JSON object"):
        corpus_conn.execute("SELECT * FROM pgclip.search(NULL, 'photo', '[1, 2]')")


def test_a_null_filter_value_is_invalid_input_or_ignored(corpus, corpus_conn):
    try:
        page = run(corpus_conn, vector=axis(0, DIM), filters={"min_width": None}, k=100)
    except InvalidInput:
        return
    assert len(page.hits) == len(corpus.specs)


# --- 3. caption full-text -----------------------------------------------------------------


@pytest.fixture
def captioned(conn) -> dict[str, ImageSpec]:
    captions = {
        "beach_dog": ["A dog running on the beach"],
        "cat_and_dog": ["A cat and a dog sleeping"],
        "black_cat": ["A black cat on a sofa"],
        "two_captions": ["The dog park", "Dog days of summer"],
        "two_dogs": ["Big dog, small dog"],
        "black_and_white": ["A black and white cat"],
        "koshka": ["Кошка спит на диване"],
    }
    specs = {name: add_image(conn, captions=texts) for name, texts in captions.items()}
    specs["koshki_ru"] = add_image(conn, captions=["Кошки спят на диване"], ts_config="russian")
    specs["no_caption"] = add_image(conn, vector=axis(0, DIM))
    return specs


def _names(page: Page, specs: dict[str, ImageSpec]) -> set[str]:
    by_id = {s.id: name for name, s in specs.items()}
    return {by_id[i] for i in ids(page)}


@pytest.mark.parametrize(("query", "expected"), [
    ("dog -cat", {"beach_dog", "two_captions", "two_dogs"}),
    ('"black cat"', {"black_cat"}),  # a phrase: "black and white cat" is not one
    ('"cat black"', set()),
    ("dog or sofa", {"beach_dog", "cat_and_dog", "black_cat", "two_captions", "two_dogs"}),
    ("dogs", {"beach_dog", "cat_and_dog", "two_captions", "two_dogs"}),  # stemmed
    ("the of and", set()),  # stop words only: nothing to match, not everything
    ("кошка", {"koshka"}),
    ("КОШКА", {"koshka"}),
])
def test_caption_queries_use_websearch_syntax(conn, captioned, query, expected):
    assert _names(run(conn, caption_query=query, k=100), captioned) == expected


def test_a_caption_stored_with_another_language_is_found_in_that_language(conn, captioned):
    page = run(conn, caption_query="кошка", ts_config="russian", k=100)  # stems to кошк, as "Кошки" did
    assert _names(page, captioned) == {"koshki_ru"}


def test_caption_ranks_are_summed_over_an_images_captions(conn, captioned):
    page = run(conn, caption_query="dog", k=100)
    expected = caption_ranks(conn, list(captioned.values()), "dog")
    assert expected[captioned["two_captions"].id] == pytest.approx(
        2 * expected[captioned["beach_dog"].id])  # two one-"dog" captions count twice one
    order = positions(expected)

    assert ids(page) == sorted(expected, key=order.get)
    for hit in page.hits:
        assert hit.text_rank == pytest.approx(expected[hit.image_id], rel=1e-6)
        assert hit.text_rank_position == order[hit.image_id]
        assert hit.score == hit.text_rank  # caption-only: the score is the text rank
        assert hit.similarity is None and hit.vector_rank is None
    shown = {h.image_id: h.caption for h in page.hits}
    assert shown[captioned["two_captions"].id] == "The dog park"  # an image's first caption
    assert page.hits[0].image_id in (captioned["two_captions"].id, captioned["two_dogs"].id)


def test_a_blank_search_is_invalid_input(conn):
    with pytest.raises(InvalidInput, match="give a text"):
        run(conn, caption_query="   ")


# --- 4. fusion -------------------------------------------------------------------------------


@pytest.fixture
def hybrid(conn) -> list[ImageSpec]:
    """Vectors at known angles to axis 0, captions with more or fewer dogs, two images with a
    caption but no vector yet."""
    layout = [(5, []), (15, ["a dog"]), (25, ["dog dog dog"]), (35, []), (45, ["a dog and another dog"]),
              (55, ["a cat"]), (65, ["dog"]), (75, ["the dog", "dog park"]), (85, ["dog dog"])]
    specs = [add_image(conn, vector=at_angle(a, DIM), captions=c) for a, c in layout]
    specs += [add_image(conn, captions=["a dog running"]), add_image(conn, captions=["dog"])]
    return specs


def _similarities(specs: list[ImageSpec], query: np.ndarray) -> dict[int, float]:
    return {s.id: cosine(s.vector, query) for s in specs if s.vector is not None}


def test_rrf_score_is_the_sum_of_reciprocal_ranks(conn, hybrid):
    q = axis(0, DIM)
    sims = _similarities(hybrid, q)
    ranks = caption_ranks(conn, hybrid, "dog")
    vector_position, text_position = positions(sims), positions(ranks)
    expected = {i: (1 / (RRF_K + vector_position[i]) if i in sims else 0.0)
                + (1 / (RRF_K + text_position[i]) if i in ranks else 0.0) for i in {*sims, *ranks}}

    page = run(conn, vector=q, caption_query="dog", k=100)

    assert ids(page) == sorted(expected, key=lambda i: (-expected[i], i))
    for hit in page.hits:
        assert hit.score == pytest.approx(expected[hit.image_id], abs=1e-12)
        assert hit.vector_rank == vector_position.get(hit.image_id)
        assert hit.text_rank_position == text_position.get(hit.image_id)
        assert hit.text_rank == (pytest.approx(ranks[hit.image_id]) if hit.image_id in ranks else None)
        if hit.image_id in sims:
            assert hit.similarity == pytest.approx(sims[hit.image_id], abs=SIM_TOL)
        else:
            assert hit.similarity is None  # no vector yet: nothing to compare


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.7, 1.0])
def test_weighted_score_blends_similarity_and_normalised_text_rank(conn, hybrid, weight):
    q = axis(0, DIM)
    sims = _similarities(hybrid, q)
    ranks = caption_ranks(conn, hybrid, "dog")
    best = max(ranks.values())
    expected = {i: weight * sims.get(i, 0.0) + (1 - weight) * ranks.get(i, 0.0) / best for i in {*sims, *ranks}}

    page = run(conn, vector=q, caption_query="dog", k=100, fusion="weighted", weight=weight)

    got = {h.image_id: h.score for h in page.hits}
    assert got.keys() == expected.keys()
    for i, score in got.items():
        assert score == pytest.approx(expected[i], abs=SIM_TOL)
    assert [h.score for h in page.hits] == sorted(got.values(), reverse=True)
    if weight == 1.0:
        assert ids(page)[:len(sims)] == sorted(sims, key=lambda i: (-sims[i], i))
    if weight == 0.0:
        assert ids(page)[:len(ranks)] == sorted(ranks, key=positions(ranks).get)


def test_text_only_hits_still_report_their_cosine_similarity(conn, hybrid):
    """With a candidate window of 3 most images are found by one ranking only."""
    q = axis(0, DIM)
    sims = _similarities(hybrid, q)
    ranks = caption_ranks(conn, hybrid, "dog")
    rows = conn.execute(
        "SELECT image_id, score, similarity, text_rank, vector_rank, text_rank_position"
        " FROM pgclip.search(%s, 'dog', '{}', 100, 0, '{\"window\": 3}')", [q],
    ).fetchall()
    vector_top, text_top = positions(sims), positions(ranks)
    vector_top = {i: p for i, p in vector_top.items() if p <= 3}
    text_top = {i: p for i, p in text_top.items() if p <= 3}

    assert {r[0] for r in rows} == {*vector_top, *text_top}
    assert any(r[4] is None and r[0] in sims for r in rows), "the data must give text-only hits with a vector"
    for image_id, score, similarity, _, vector_rank, text_position in rows:
        assert vector_rank == vector_top.get(image_id) and text_position == text_top.get(image_id)
        expected = ((1 / (RRF_K + vector_rank) if vector_rank else 0)
                    + (1 / (RRF_K + text_position) if text_position else 0))
        assert score == pytest.approx(expected, abs=1e-12)
        if image_id in sims:
            assert similarity == pytest.approx(sims[image_id], abs=SIM_TOL)  # text-only hits too
        else:
            assert similarity is None


# --- 5. relevance cut-offs ----------------------------------------------------------------

CUTOFF_ANGLES = [5, 12, 20, 31, 40, 58, 75, 90, 140]


@pytest.mark.parametrize(("min_similarity", "max_drop"), [
    (0.9, None), (0.5, None), (-1.0, None), (None, 0.0), (None, 0.05), (None, 0.15), (None, 0.5),
    (0.6, 0.15), (0.9, 0.5),
])
def test_cut_offs_drop_exactly_the_rows_below_them(conn, min_similarity, max_drop):
    specs = [add_image(conn, vector=at_angle(a, DIM)) for a in CUTOFF_ANGLES]
    sims = _similarities(specs, axis(0, DIM))
    best = max(sims.values())
    expected = [i for i in sorted(sims, key=lambda i: -sims[i])
                if (min_similarity is None or sims[i] >= min_similarity)
                and (max_drop is None or sims[i] >= best - max_drop)]
    cuts = [c for c in (min_similarity, None if max_drop is None else best - max_drop) if c is not None]
    assert all(abs(s - c) > 1e-3 for s in sims.values() if s != best for c in cuts), "no row may sit on a cut"

    page = run(conn, vector=axis(0, DIM), k=100, min_similarity=min_similarity, max_drop=max_drop)

    assert ids(page) == expected


def test_a_similarity_cut_off_does_not_empty_a_caption_only_search(conn, captioned):
    plain = run(conn, caption_query="dog", k=100)
    assert plain.hits
    try:
        cut = run(conn, caption_query="dog", k=100, min_similarity=0.2)
    except InvalidInput:
        return  # refusing the combination is fine too
    assert ids(cut) == ids(plain)


# --- 6. ordering by date ------------------------------------------------------------------


def test_newest_and_oldest_order_the_relevant_results_by_date(conn):
    day = [dt.datetime(2021, 5, 1, tzinfo=UTC), None, dt.datetime(2023, 1, 1, tzinfo=UTC),
           dt.datetime(2022, 6, 1, tzinfo=UTC), dt.datetime(2023, 1, 1, tzinfo=UTC), None,
           dt.datetime(2020, 1, 1, tzinfo=UTC)]
    angles = [40, 10, 70, 20, 50, 30, 60]
    relevant = [add_image(conn, vector=at_angle(a, DIM), taken_at=t) for a, t in zip(angles, day)]
    add_image(conn, vector=at_angle(150, DIM), taken_at=dt.datetime(2025, 1, 1, tzinfo=UTC))  # newest, irrelevant
    q = axis(0, DIM)

    newest = run(conn, vector=q, k=100, order="newest", min_similarity=0.0)
    oldest = run(conn, vector=q, k=100, order="oldest", min_similarity=0.0)

    dated = [s for s in relevant if s.taken_at]
    undated = sorted(s.id for s in relevant if s.taken_at is None)
    assert ids(newest) == [s.id for s in sorted(dated, key=lambda s: (-s.taken_at.timestamp(), s.id))] + undated
    assert ids(oldest) == [s.id for s in sorted(dated, key=lambda s: (s.taken_at, s.id))] + undated
    assert ids(run(conn, vector=q, k=2, order="newest", min_similarity=0.0)) == ids(newest)[:2]
    sims = _similarities(relevant, q)
    for hit in newest.hits:  # still explained by relevance
        assert hit.similarity == pytest.approx(sims[hit.image_id], abs=SIM_TOL)


# --- 7. paging --------------------------------------------------------------------------------


def _walk(conn: psycopg.Connection, **params) -> tuple[list[int], int]:
    seen, cursor, pages = [], None, 0
    while True:
        page = run(conn, cursor=cursor, **params)
        pages += 1
        seen += ids(page)
        assert len(page.hits) <= params["k"]
        if page.next_cursor is None:
            return seen, pages
        assert len(page.hits) == params["k"]  # only a full page promises another
        cursor = page.next_cursor
        assert pages < 100


@pytest.mark.parametrize("query", [
    {"vector": True},
    {"vector": True, "order": "newest"},
    {"vector": True, "caption_query": "dog"},
    {"vector": True, "caption_query": "dog", "fusion": "weighted", "weight": 0.2},
    {"caption_query": "dog"},
    {"vector": True, "filters": {"orientation": "landscape"}, "min_similarity": -0.1},
])
def test_walking_the_cursor_yields_every_result_once_in_order(conn, query):
    rng = np.random.default_rng(5)
    for i in range(60):
        add_image(conn, vector=unit(rng.normal(size=DIM)), width=[300, 400][i % 2], height=300,
                  taken_at=None if i % 5 == 0 else dt.datetime(2020 + i % 4, 1, 1, tzinfo=UTC),
                  captions=["dog " * int(rng.integers(1, 4))] if i % 3 else [])
    params = {**query, "vector": unit(rng.normal(size=DIM)) if query.get("vector") else None}

    one_page = run(conn, k=100, **params)
    walked, pages = _walk(conn, k=7, **params)

    assert len(one_page.hits) >= 20 and one_page.next_cursor is None
    assert walked == ids(one_page)
    assert len(set(walked)) == len(walked)
    assert pages in (math.ceil(len(walked) / 7), len(walked) // 7 + 1)


def test_a_cursor_only_continues_its_own_query(conn):
    for a in range(0, 90, 5):
        add_image(conn, vector=at_angle(a, DIM), width=400, height=300 if a % 2 else 500)
    q = axis(0, DIM)
    cursor = run(conn, vector=q, k=3).next_cursor
    assert cursor is not None
    assert len(run(conn, vector=q, k=3, cursor=cursor).hits) == 3

    for other in ({"vector": axis(1, DIM)}, {"vector": q, "filters": {"orientation": "landscape"}},
                  {"vector": q, "caption_query": "dog"}, {"vector": q, "order": "newest"}):
        with pytest.raises(InvalidInput, match="different query"):
            run(conn, k=3, cursor=cursor, **other)
    fingerprint = json.loads(base64.urlsafe_b64decode(cursor + "=="))["q"]
    forged = [json.dumps({"o": -3, "w": 200, "q": fingerprint}), json.dumps({"o": 3, "w": 0, "q": fingerprint}),
              json.dumps([3, 200]), "{not json"]
    for garbled in ["garbage!!", cursor[:-5], *(base64.urlsafe_b64encode(f.encode()).decode() for f in forged)]:
        with pytest.raises(InvalidInput, match="malformed cursor"):
            run(conn, vector=q, k=3, cursor=garbled)


def test_a_cursor_with_a_huge_offset_is_invalid_input(conn):
    add_image(conn, vector=axis(0, DIM))
    fingerprint = SearchParams(vector=axis(0, DIM), k=3).fingerprint()
    forged = base64.urlsafe_b64encode(json.dumps({"o": 2**31, "w": 200, "q": fingerprint}).encode()).decode()
    try:
        page = run(conn, vector=axis(0, DIM), k=3, cursor=forged)
    except InvalidInput:
        return
    assert page.hits == [] and page.next_cursor is None


def test_a_search_leaves_the_callers_index_settings_alone(conn):
    add_image(conn, vector=axis(0, DIM), width=500)
    conn.execute("SET hnsw.ef_search = 77")
    conn.execute("SET hnsw.iterative_scan = off")
    conn.execute("SELECT * FROM pgclip.search(%s, NULL, '{\"min_width\": 100}', 5)", [axis(0, DIM)]).fetchall()
    settings = conn.execute("SELECT current_setting('hnsw.ef_search'), current_setting('hnsw.iterative_scan')")
    assert settings.fetchone() == ("77", "off")


# --- 10. more like this -------------------------------------------------------------------


def test_similar_returns_an_images_neighbours_without_the_image(conn):
    angles = [0, 10, 25, 40, 60, 100]
    specs = [add_image(conn, vector=at_angle(a, DIM), width=300 if a == 25 else 400, height=350) for a in angles]
    no_vector = add_image(conn)
    of = specs[1]  # at 10 degrees
    expected = sorted((s for s in specs if s is not of), key=lambda s: (abs(angles[specs.index(s)] - 10), s.id))

    page = similar(conn, of.id, SearchParams(k=10))
    assert ids(page) == [s.id for s in expected]
    for hit, s in zip(page.hits, expected):
        assert hit.similarity == pytest.approx(cosine(s.vector, of.vector), abs=SIM_TOL)
    in_sql = conn.execute("SELECT image_id FROM pgclip.similar(%s, 10)", [of.id]).fetchall()
    assert [r[0] for r in in_sql] == ids(page)

    filters = {"orientation": "landscape", "exclude_ids": [specs[0].id]}
    filtered = similar(conn, of.id, SearchParams(k=2, filters=filters))
    assert ids(filtered) == [s.id for s in expected if s.width > s.height and s is not specs[0]][:2]
    in_sql = conn.execute(
        "SELECT image_id FROM pgclip.similar(%s, 2, %s)", [of.id, json.dumps({"exclude_ids": [specs[0].id]})]
    ).fetchall()
    assert [r[0] for r in in_sql] == [s.id for s in expected if s is not specs[0]][:2]

    with pytest.raises(NotFound, match="no image"):
        similar(conn, no_vector.id + 1000, SearchParams())
    with pytest.raises(NotReady, match="no vector"):
        similar(conn, no_vector.id, SearchParams())
    with pytest.raises(psycopg.errors.NoDataFound), conn.transaction():
        conn.execute("SELECT * FROM pgclip.similar(%s)", [no_vector.id + 1000])
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="no vector"), conn.transaction():
        conn.execute("SELECT * FROM pgclip.similar(%s)", [no_vector.id])


# --- 11. the analyst role -----------------------------------------------------------------

FORBIDDEN = [
    ("INSERT INTO pgclip.images (sha256, byte_size, width, height, format, mime)"
     " VALUES (repeat('a', 64), 1, 1, 1, 'PNG', 'image/png')"),
    "UPDATE pgclip.images SET width = width",
    "DELETE FROM pgclip.images",
    "INSERT INTO pgclip.captions (image_id, text) SELECT id, 'x' FROM pgclip.images",
    "UPDATE pgclip.captions SET text = 'x'",
    "DELETE FROM pgclip.captions",
    "INSERT INTO pgclip.embeddings SELECT * FROM pgclip.embeddings",
    "UPDATE pgclip.embeddings SET embedding = embedding",
    "DELETE FROM pgclip.embeddings",
    "INSERT INTO pgclip.models (name, pretrained, dimension) VALUES ('m', 'p', 3)",
    "UPDATE pgclip.models SET state = state",
    "DELETE FROM pgclip.models",
    "INSERT INTO pgclip.embedding_jobs (image_id, model_id) SELECT id, 1 FROM pgclip.images",
    "UPDATE pgclip.embedding_jobs SET attempts = attempts",
    "DELETE FROM pgclip.embedding_jobs",
    "SELECT * FROM pgclip.image_blobs",
    "SELECT * FROM pgclip.thumbnails",
]


def test_the_analyst_role_can_read_and_search_but_not_write_or_read_bytes(conn):
    image = add_image(conn, vector=axis(0, DIM), captions=["a dog on a beach"])
    conn.execute("INSERT INTO pgclip.image_blobs VALUES (%s, 'bytes')", [image.id])
    conn.commit()
    with conn.transaction():
        conn.execute("SET LOCAL ROLE pgclip_analyst")
        view = conn.execute("SELECT id, captions FROM pgclip.images_with_captions").fetchall()
        assert view == [(image.id, ["a dog on a beach"])]
        found = conn.execute("SELECT image_id FROM pgclip.search(%s, 'dog')", [axis(0, DIM)]).fetchall()
        assert found == [(image.id,)]
        assert conn.execute("SELECT count(*) FROM pgclip.similar(%s)", [image.id]).fetchone() == (0,)
        for statement in FORBIDDEN:
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(statement)
        assert conn.execute("SELECT current_user").fetchone() == ("pgclip_analyst",)
    assert conn.execute("SELECT current_user").fetchone() != ("pgclip_analyst",)  # SET LOCAL ended with it
    assert conn.execute("SELECT count(*) FROM pgclip.images").fetchone() == (1,)


# --- 12. the images view ------------------------------------------------------------------


def test_the_view_lists_each_image_with_its_captions_orientation_and_embedding_state(conn):
    m = model(conn)
    wide = add_image(conn, width=800, height=600, captions=["zebra crossing", "apple tree", "mango"])
    tall = add_image(conn, width=600, height=800)
    square = add_image(conn, width=500, height=500, captions=["only"])
    other = ensure_model(conn, "other-model", "none", 3)  # commits; registered as building
    jobs = "INSERT INTO pgclip.embedding_jobs (image_id, model_id, state) VALUES (%s, %s, %s)"
    conn.execute(jobs, [wide.id, m.id, "failed"])
    conn.execute(jobs, [wide.id, m.id, "done"])  # the latest job of the active model counts
    conn.execute(jobs, [wide.id, other.id, "pending"])  # another model's job does not
    conn.execute(jobs, [square.id, m.id, "pending"])

    rows = conn.execute(
        "SELECT id, orientation, captions, embedding_state, width, height, format"
        " FROM pgclip.images_with_captions ORDER BY id"
    ).fetchall()

    assert rows == [
        (wide.id, "landscape", ["zebra crossing", "apple tree", "mango"], "done", 800, 600, "JPEG"),
        (tall.id, "portrait", [], None, 600, 800, "JPEG"),
        (square.id, "square", ["only"], "pending", 500, 500, "JPEG"),
    ]


# --- 8. filtered recall on a larger collection ---------------------------------------------

N_LARGE = 20_000
RARE = {"metadata": {"tag": "rare"}}  # 1% of the collection
TENTH = {"metadata": {"band": "tenth"}}  # 10%


@pytest.fixture(scope="module")
def large(databases) -> Iterator[Collection]:
    """20,000 vectors of low intrinsic dimension, loaded with COPY, indexed, analysed (read-only)."""
    url = databases.clone_template()
    rng = np.random.default_rng(2024)
    vectors, basis = low_rank_vectors(rng, N_LARGE, DIM)
    queries, _ = low_rank_vectors(rng, 10, DIM, basis=basis)
    n = np.arange(N_LARGE)
    rare, tenth = n % 100 == 42, n % 10 == 3
    metadata = [{**({"tag": "rare"} if r else {}), **({"band": "tenth"} if t else {})} for r, t in zip(rare, tenth)]
    with connect(url, role="test") as conn:
        image_ids = np.asarray(bulk_load(conn, vectors, metadata))
    yield Collection(url, image_ids, vectors, rare, tenth, queries)
    databases.drop(url)


@pytest.fixture
def large_conn(large: Collection) -> Iterator[psycopg.Connection]:
    with connect(large.url, role="test") as conn:
        yield conn


def index_path(conn: psycopg.Connection, q: np.ndarray, filters: dict, k: int = 10) -> list[int]:
    """pgclip.search with exact ranking switched off and the planner steered onto the HNSW
    index, as it goes on its own on a collection where sorting the filtered rows costs more
    (at 20,000 rows it prefers the exact filter-first plan; see test_plans)."""
    with conn.transaction():
        conn.execute("SET LOCAL enable_sort = off")
        rows = conn.execute(
            "SELECT image_id FROM pgclip.search(%s, NULL, %s, %s, 0, '{\"exact_threshold\": 0}')",
            [q, json.dumps(filters), k],
        ).fetchall()
    return [r[0] for r in rows]


def test_a_selective_filter_is_ranked_exactly_and_never_returns_fewer_than_k(large, large_conn):
    for q in large.queries:
        page = run(large_conn, vector=q, filters=RARE, k=10)
        assert ids(page) == exact_neighbours(large, q, large.rare)
        sims = large.vectors[np.asarray(ids(page)) - 1].astype(np.float64) @ q.astype(np.float64)
        assert [h.similarity for h in page.hits] == pytest.approx(sims.tolist(), abs=SIM_TOL)


@pytest.mark.parametrize(("filters", "mask"), [(RARE, "rare"), (TENTH, "tenth"), ({}, None)])
def test_the_filtered_index_scan_does_not_starve(large, large_conn, filters, mask):
    keep = getattr(large, mask) if mask else np.ones(N_LARGE, dtype=bool)
    recalls = []
    for q in large.queries:
        got = index_path(large_conn, q, filters)
        assert len(got) == 10, "an iterative scan keeps walking until k rows pass the filter"
        assert keep[np.asarray(got) - 1].all()
        recalls.append(len(set(got) & set(exact_neighbours(large, q, keep))) / 10)
    assert np.mean(recalls) >= 0.9, recalls


def test_the_pages_of_a_broad_filter_on_the_index_follow_each_other_in_order(large, large_conn):
    """A vector-only search reads only the candidates of its page (offset + k) from the index,
    in strict distance order: the pages of one query still never repeat or reorder an image."""
    call = "SELECT image_id FROM pgclip.search(%s, NULL, %s, 10, %s, '{\"exact_threshold\": 0}')"
    recalls = []
    for q in large.queries:
        walked = [r[0] for offset in range(0, 200, 10)  # the whole window, 20 pages
                  for r in large_conn.execute(call, [q, json.dumps(TENTH), offset]).fetchall()]
        assert len(walked) == 200 and len(set(walked)) == 200
        assert large.tenth[np.asarray(walked) - 1].all()
        sims = large.vectors[np.asarray(walked) - 1].astype(np.float64) @ q.astype(np.float64)
        assert (np.diff(sims) <= 1e-6).all(), "each page goes on where the one before it stopped"
        recalls.append(len(set(walked) & set(exact_neighbours(large, q, large.tenth, k=200))) / 200)
    assert np.mean(recalls) >= 0.9, recalls


# --- 9. plans ----------------------------------------------------------------------------------


@pytest.fixture
def explained(large) -> Iterator[tuple[psycopg.Connection, list[str]]]:
    with explaining(large.url) as found:
        yield found


def test_plans(large, explained):
    conn, notices = explained
    hnsw = model(conn).index_name
    q = large.queries[0]
    call = "SELECT * FROM pgclip.search(%s, NULL, %s, 10, 0, %s)"

    unfiltered = vector_hits_plan(conn, notices, call, [q, "{}", "{}"])
    assert hnsw in unfiltered
    # A filter most rows pass (so not ranked exactly): still the index, walked past rejects.
    broad = vector_hits_plan(conn, notices, call, [q, json.dumps({"orientation": "landscape"}), "{}"])
    assert hnsw in broad
    # exact_threshold 0 on a selective filter: the iterative index scan when the planner is not
    # better off sorting (a page's worth of candidates).
    iterative = vector_hits_plan(conn, notices, call, [q, json.dumps(RARE), '{"exact_threshold": 0, "window": 10}'])
    assert hnsw in iterative
    with conn.transaction():  # as index_path() runs it for the recall test
        conn.execute("SET LOCAL enable_sort = off")
        steered = vector_hits_plan(conn, notices, call, [q, json.dumps(RARE), '{"exact_threshold": 0}'])
    assert hnsw in steered
    # The default path on a selective filter: filter first through the metadata index, rank exactly.
    selective = vector_hits_plan(conn, notices, call, [q, json.dumps(RARE), "{}"])
    assert hnsw not in selective
    assert "images_metadata_idx" in selective
    # A broad filter, by the vector alone: the index, for a page's worth of candidates, not the
    # window's (200): a search with caption words still takes the whole window, for the fusion.
    page = json.loads(vector_hits_plan(conn, notices, call, [q, json.dumps(TENTH), '{"exact_threshold": 0}']))
    assert hnsw in json.dumps(page)
    assert page["Plan Rows"] == 10
    fused = vector_hits_plan(conn, notices, "SELECT * FROM pgclip.search(%s, 'dog', %s, 10, 0, %s)",
                             [q, json.dumps(TENTH), '{"exact_threshold": 0}'])
    assert json.loads(fused)["Plan Rows"] == 200


# --- 13. the analyst's text queries (pgclip.embed_text, pgclip.search_text) ------------------------

TEXT_FORBIDDEN = [
    "INSERT INTO pgclip.text_requests (model_id, text) VALUES (1, 'x')",
    "DELETE FROM pgclip.text_requests",
    "INSERT INTO pgclip.text_vectors (model_id, text, embedding) SELECT 1, 'x', embedding FROM pgclip.embeddings",
    "SELECT * FROM pgclip.text_vectors",
    "SELECT pgclip.ask_workers(1, 'x', 'x', 10)",
    "SELECT pgclip.loopback_conninfo()",
    "SELECT pgclip_dblink.dblink_connect('mine', 'dbname=postgres')",
    "SELECT pgclip_dblink.dblink_exec('dbname=postgres', 'DROP TABLE pgclip.images')",
]


def test_the_readme_lists_exactly_what_the_analyst_role_may_read_and_run(conn):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    selects = re.search(r"^\| `SELECT` \| (.*) \|$", readme, re.M)[1].split("(not")[0]
    executes = re.search(r"^\| `EXECUTE` \| (.*) \|$", readme, re.M)[1]
    readable = {name for (name,) in conn.execute(
        "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'pgclip'::regnamespace"
        " AND c.relkind IN ('r', 'v', 'p') AND has_table_privilege('pgclip_analyst', c.oid, 'SELECT')")}
    runnable = {name for (name,) in conn.execute(
        "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'pgclip'::regnamespace"
        " AND has_function_privilege('pgclip_analyst', p.oid, 'EXECUTE')")}
    assert set(re.findall(r"`(\w+)`", selects)) == readable
    assert set(re.findall(r"`(\w+)`", executes)) == runnable


def test_the_analyst_role_searches_by_text_and_gains_no_other_write(conn):
    image = add_image(conn, vector=axis(0, DIM), captions=["a dog on a beach"])
    model_id = conn.execute("SELECT id FROM pgclip.models WHERE state = 'active'").fetchone()[0]
    conn.commit()
    with conn.transaction():
        # Cached (in this transaction): no worker is needed, tests/integration/test_text_in_sql.py has them.
        conn.execute("INSERT INTO pgclip.text_vectors (model_id, text, embedding) VALUES (%s, 'a dog', %s)",
                     [model_id, axis(0, DIM)])
        conn.execute("SET LOCAL ROLE pgclip_analyst")
        assert conn.execute("SELECT pgclip.embed_text('a dog') = %s", [axis(0, DIM)]).fetchone() == (True,)
        found = conn.execute("SELECT image_id FROM pgclip.search_text('a dog', NULL, '{}', 5)").fetchall()
        assert found == [(image.id,)]
        # Oversize input is refused before anything is asked of anyone.
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="at most 1000"), conn.transaction():
            conn.execute("SELECT pgclip.embed_text(repeat('x', 1001))")
        for statement in TEXT_FORBIDDEN:
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(statement)


def test_every_security_definer_function_fixes_its_search_path(conn):
    """A definer function resolving names through its caller's search_path could run the caller's objects."""
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text, p.proconfig FROM pg_proc p"
        " WHERE p.prosecdef AND p.pronamespace = 'pgclip'::regnamespace"
    ).fetchall()
    assert "pgclip.embed_text(text,text,integer)" in {name for name, _ in rows}
    for name, config in rows:
        assert any(c.startswith("search_path=pg_catalog") for c in config or []), name
