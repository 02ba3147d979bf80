"""``pgclip.search`` in a migrated database agrees with the search request's definition
(``pgclip.core.search_request``): the plpgsql cannot import it, so this holds it to it.

Every filter and option the definition places in SQL is taken there, under that name; an
unknown one is refused; each bound is enforced at the same value (the bound itself taken,
one past it refused), by the SQL and by the checks ``db/search.py`` makes before any SQL;
and an option left out or null behaves as its documented default.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg.types.json import Jsonb

from pgclip.core.errors import InvalidInput
from pgclip.core.search_request import FILTERS, OPTIONS, PARAMS, QUERY, Param, default_window
from pgclip.db.search import SearchParams, translate
from tests.searchdata import add_image, at_angle, axis, model, unit

SQL_PARAMS = [p for p in (*QUERY, *OPTIONS) if p.sql in ("argument", "option")]
# One value of each filter, of the kind the definition gives it.
FILTER_SAMPLES = {
    "taken_after": "2020-01-01T00:00:00+00:00", "taken_before": "2030-01-01T00:00:00+00:00", "min_width": 1,
    "min_height": 1, "orientation": "landscape", "format": ["JPEG"], "metadata": {"tag": "dog"},
    "has_caption": True, "exclude_ids": [1], "folder": "/photos",
}
# A value of each option that changes the answer on ``collection`` (so the SQL reads that very
# key), with the options it needs to matter. Options whose effect is on plans only are listed apart.
CONTRASTS: dict[str, tuple[Any, dict[str, Any]]] = {
    "k": (3, {}), "offset": (1, {}), "fusion": ("weighted", {}), "weight": (0.9, {"fusion": "weighted"}),
    "min_similarity": (0.9, {}), "max_drop": (0.1, {}), "order": ("newest", {}), "rrf_k": (1, {}),
    "ts_config": ("simple", {}), "window": (2, {}),
}
PLAN_ONLY = {"exact_threshold", "ef_search", "probes"}  # recall and speed, not results, on a few rows
OMIT = object()


def search(conn: psycopg.Connection, *, vector: np.ndarray | None, caption: str | None = "dogs",
           filters: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
           k: Any = OMIT, offset: Any = OMIT) -> list[tuple]:
    """``pgclip.search`` in named notation, so that an argument left out is really left out."""
    args = {"query_vector": vector, "caption_query": caption}
    if filters is not None:
        args["filters"] = Jsonb(filters)
    if options is not None:
        args["options"] = Jsonb(options)
    if k is not OMIT:
        args["k"] = k
    if offset is not OMIT:
        args["offset"] = offset
    call = ", ".join(f'"{name}" => %({name})s' for name in args)  # "offset" is a keyword: quoted
    with conn.transaction():  # a savepoint: a refused call leaves the test's transaction usable
        return conn.execute(f"SELECT * FROM pgclip.search({call})", args).fetchall()


def refused(conn: psycopg.Connection, **call: Any) -> str:
    """The InvalidInput message of a call the SQL must refuse."""
    with pytest.raises(psycopg.Error) as raised:
        search(conn, **call)
    error = translate(raised.value)
    assert isinstance(error, InvalidInput), f"not refused as invalid input: {raised.value!r}"
    return str(error)


@pytest.fixture
def collection(conn) -> np.ndarray:
    """Six images whose rankings differ: similarity falls with the angle, caption matches rise
    with it up to the last image, the only one whose caption says "dogs" (a match only once
    stemmed), which is also the newest."""
    dim = model(conn).dimension
    for n, angle in enumerate((0, 15, 30, 45, 60, 75)):
        add_image(conn, vector=at_angle(angle, dim), width=400 + 100 * n, height=500,
                  captions=["dogs in a park" if n == 5 else " ".join(["a dog"] * (n + 1))],
                  taken_at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=30 * n),
                  metadata={"tag": "dog"})
    return axis(0, dim)


def _cases(params: list[Param]) -> list:
    """(name, value, taken) for each bound and choice of ``params``: the bound taken, one past it refused."""
    values = []
    for p in params:
        for bound, past in ((p.minimum, -1), (p.maximum, +1)):
            if bound is not None:
                values += [(p.name, bound, True), (p.name, bound + past, False)]
        values += [(p.name, choice, True) for choice in p.choices]
        values += [(p.name, "nonesuch", False)] if p.choices else []
    return [pytest.param(name, value, taken, id=f"{name}={value}") for name, value, taken in values]


def _call_with(p: Param, value: Any) -> dict[str, Any]:
    """The keyword arguments of ``search`` that give ``p`` this value, where the definition places it."""
    if p.sql == "filter":
        return {"filters": {p.name: [value] if p.kind == "ids" else value}}
    if p.sql == "argument":
        return {p.name: value}
    return {"options": {p.name: value}}


# --- names ------------------------------------------------------------------------------------


def test_the_sql_knows_exactly_the_filters_of_the_definition(conn):
    assert set(FILTER_SAMPLES) == {p.name for p in FILTERS}, "give the new filter a sample value above"
    with pytest.raises(psycopg.Error) as raised:
        conn.execute("SELECT pgclip.filter_sql('{\"colour\": \"red\"}')")
    known = re.search(r"\(known: (.*)\)", str(translate(raised.value))).group(1)
    assert known.split(", ") == [p.name for p in FILTERS]


def test_the_sql_arguments_are_the_definitions(conn):
    names = conn.execute("SELECT proargnames[1:pronargs] FROM pg_proc"
                         " WHERE oid = 'pgclip.search(vector, text, jsonb, int, int, jsonb)'::regprocedure").fetchone()[0]
    arguments = [p.sql_name or p.name for p in SQL_PARAMS if p.sql == "argument"]
    assert set(names) == {*arguments, "filters", "options"}


@pytest.mark.parametrize("name", [p.name for p in FILTERS])
def test_each_filter_is_taken_by_the_sql(conn, collection, name):
    search(conn, vector=collection, filters={name: FILTER_SAMPLES[name]})  # a refusal raises


def test_an_unknown_filter_is_refused(conn, collection):
    assert "unknown filter" in refused(conn, vector=collection, filters={"colour": "red"})


def test_an_unknown_option_is_refused(conn, collection):
    assert "fusoin" in refused(conn, vector=collection, options={"fusoin": "weighted"})


# --- bounds -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value", "taken"), _cases([*SQL_PARAMS, *FILTERS]))
def test_each_bound_is_enforced_by_the_sql_at_the_same_value(conn, collection, name, value, taken):
    call = _call_with(PARAMS[name], value)
    if taken:
        search(conn, vector=collection, **call)
    else:
        assert name in refused(conn, vector=collection, **call)


# The bounds of what an API or CLI caller sets, which db/search.py checks before any SQL.
CHECKED_IN_PYTHON = [p for p in (*OPTIONS, *FILTERS) if p.api and (p.minimum is not None or p.choices)]


@pytest.mark.parametrize(("name", "value", "taken"), _cases(CHECKED_IN_PYTHON))
def test_each_bound_is_enforced_before_any_sql_at_the_same_value(name, value, taken):
    p = PARAMS[name]
    params = SearchParams(caption_query="dogs", **(_call_with(p, value) if p.sql == "filter" else {name: value}))
    if taken:
        params.validate()
    else:
        with pytest.raises(InvalidInput, match=name):
            params.validate()


# --- defaults -----------------------------------------------------------------------------------


def test_every_option_of_the_sql_is_checked_for_its_default():
    covered = set(CONTRASTS) | PLAN_ONLY | {"model_id", "vector", "caption_query"}  # the last two: the query
    assert {p.name for p in SQL_PARAMS} <= covered, "say above how the new option changes an answer"


@pytest.mark.parametrize("name", sorted(CONTRASTS))
def test_an_option_left_out_or_null_is_its_documented_default(conn, collection, name):
    p = PARAMS[name]
    contrast, context = CONTRASTS[name]

    def answer(value: Any = OMIT) -> list[tuple]:
        if p.sql == "argument":
            return search(conn, vector=collection, options=context, **({} if value is OMIT else {name: value}))
        return search(conn, vector=collection, options={**context, **({} if value is OMIT else {name: value})})

    left_out = answer()
    assert answer(None) == left_out
    default = default_window(PARAMS["k"].default) if name == "window" else p.default
    if default is not None:
        assert answer(default) == left_out
    assert answer(contrast) != left_out, f"{name}={contrast!r} should change this answer"


def test_the_default_window_is_the_documented_one(conn):
    """Past the window a query has no more pages: with k=1 it ends at 200 results, with k=100 at 400."""
    rng = np.random.default_rng(16)
    dim = model(conn).dimension
    for _ in range(401):
        add_image(conn, vector=unit(rng.normal(size=dim)))
    query = unit(rng.normal(size=dim))
    for k in (1, 100):
        window = default_window(k)
        assert len(search(conn, vector=query, caption=None, k=k, offset=window - 1)) == 1
        assert search(conn, vector=query, caption=None, k=k, offset=window) == []


def test_the_default_model_is_the_active_one(conn, collection):
    active = model(conn).id
    assert search(conn, vector=collection, options={"model_id": active}) == search(conn, vector=collection)
    assert "no model" in refused(conn, vector=collection, options={"model_id": active + 1000})
