"""The README's table of search parameters, `pgclip search --help` and the OpenAPI schema of
the search request all say what ``pgclip.core.search_request`` says: the same names, defaults,
limits and help. (The SQL is held to it by tests/integration/test_search_contract.py.)"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pgclip.api.app import create_app
from pgclip.api.schemas import SearchRequest
from pgclip.cli import build_parser
from pgclip.core.search_request import FILTERS, OPTIONS, PARAMS, QUERY, Param
from pgclip.core.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN = "<!-- search parameters: generated from core/search_request.py; tests/unit/test_search_contract_docs.py -->"
END = "<!-- end of search parameters -->"
REQUEST = [p for p in (*QUERY, *OPTIONS) if p.api]  # the fields of POST /api/search, filters apart


def search_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["search"]


# --- the README --------------------------------------------------------------------------------


def _where(p: Param) -> str:
    """Where a parameter is taken: the API, the CLI (by its real flag), the SQL function."""
    flags = {a.dest: a.option_strings[0] if a.option_strings else "" for a in search_parser()._actions}
    flag = "--filter" if p.sql == "filter" else flags.get(p.name)
    cli = "" if not p.cli else f"CLI `{flag}`" if flag else "CLI argument"
    sql = {"argument": f"SQL argument `{p.sql_name or p.name}`", "option": "SQL `options`",
           "filter": "SQL `filters`", "": ""}[p.sql]
    return ", ".join(place for place in ("API" if p.api else "", cli, sql) if place)


def _table(params: tuple[Param, ...]) -> list[str]:
    rows = ["| name | default | limits | where | what |", "| --- | --- | --- | --- | --- |"]
    rows += [f"| `{p.name}` | {p.default_text} | {p.limits or '—'} | {_where(p)} | {p.help} |" for p in params]
    return rows


def rendered() -> str:
    """The README's block as the definition gives it (paste it there when this test fails)."""
    lines = [BEGIN, "", "What to search for (at least one of `text`, an image, `vector` and `caption_query`):", ""]
    lines += _table(QUERY)
    lines += ["", "Options (those only SQL takes are for analysts who call `pgclip.search` themselves: "
              "pgclip sets them itself, or leaves them to the model's index):", ""]
    lines += _table(OPTIONS)
    lines += ["", "Filters (`filters`, a JSON object; every filter given must hold):", ""]
    lines += _table(FILTERS)
    return "\n".join([*lines, "", END])


def test_the_readme_table_of_search_parameters_is_the_definition():
    searching = README.read_text().split("\n## Searching\n", 1)[1].split("\n## ", 1)[0]
    assert BEGIN in searching and END in searching, "the README's Searching section has lost its table"
    in_readme = BEGIN + searching.split(BEGIN, 1)[1].split(END, 1)[0] + END
    assert in_readme == rendered(), f"README.md's table differs from the definition; it should read:\n{rendered()}"


# --- the CLI -----------------------------------------------------------------------------------


def test_the_cli_flags_are_the_definitions_options():
    actions = {a.dest: a for a in search_parser()._actions}
    offered = {p.name for p in (*QUERY, *OPTIONS) if p.cli}
    assert set(actions) - {"help", "image", "filter", "json", "in_folder"} == offered
    for name in offered:
        p, action = PARAMS[name], actions[name]
        assert action.default == p.default, name
        assert tuple(action.choices or ()) == p.choices, name
        assert p.help in action.help, name
        assert p.bounds in action.help, name


def test_the_cli_filter_help_names_every_filter():
    help = " ".join(search_parser().format_help().split())
    for p in FILTERS:
        assert p.name in help


@pytest.mark.parametrize("p", [p for p in OPTIONS if p.cli and p.minimum is not None], ids=lambda p: p.name)
def test_the_cli_takes_each_bound_and_refuses_one_past_it(p):
    flag = next(a.option_strings[0] for a in search_parser()._actions if a.dest == p.name)
    for bound, past in ((p.minimum, -1), (p.maximum, +1)):
        if bound is None:
            continue
        value = int(bound) if p.kind == "int" else bound
        assert getattr(build_parser().parse_args(["search", "dog", flag, str(value)]), p.name) == value
        with pytest.raises(SystemExit):
            build_parser().parse_args(["search", "dog", flag, str(value + past)])


# --- the API -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    return create_app(Settings()).openapi_schema.to_schema()


def _declares(schema: dict[str, Any], key: str, expected: Any) -> bool:
    # Litestar copies a constraint of a nullable field only when it is truthy: a minimum of 0
    # (max_drop's) never reaches the schema, though msgspec enforces it (see the next test).
    if expected in (None, 0) and key not in schema:
        return True
    return schema.get(key) == expected


def _check_property(p: Param, schema: dict[str, Any]) -> None:
    assert schema.get("description") == p.help, p.name
    assert _declares(schema, "default", p.default), p.name
    if p.kind not in ("ids", "texts"):  # a list's item bounds are not in Litestar's schema
        assert _declares(schema, "minimum", p.minimum) and _declares(schema, "maximum", p.maximum), p.name
    size = "maxLength" if p.kind == "text" else "maxItems"
    assert _declares(schema, size, p.max_length), p.name
    if p.choices:
        assert [c for c in schema["enum"] if c is not None] == list(p.choices), p.name


def test_the_api_search_request_is_the_definitions(openapi):
    schemas = openapi["components"]["schemas"]
    body = openapi["paths"]["/api/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    request = schemas[body["$ref"].rsplit("/", 1)[-1]]["properties"]
    assert set(request) - {"filters"} == {p.name for p in REQUEST}
    assert set(schemas["Filters"]["properties"]) == {p.name for p in FILTERS}
    for p in REQUEST:
        _check_property(p, request[p.name])
    for p in FILTERS:
        _check_property(p, schemas["Filters"]["properties"][p.name])


def test_more_like_this_takes_k_and_cursor_as_the_definition_says(openapi):
    query = {q["name"]: q["schema"] for q in openapi["paths"]["/api/images/{image_id}/similar"]["get"]["parameters"]
             if q["in"] == "query"}
    assert set(query) == {"k", "cursor", "filters"}
    _check_property(PARAMS["k"], query["k"])
    _check_property(PARAMS["cursor"], query["cursor"])


def _request(p: Param, value: Any) -> dict[str, Any]:
    return {"filters": {p.name: value}} if p.sql == "filter" else {p.name: value}


@pytest.mark.parametrize("p", [p for p in (*REQUEST, *FILTERS) if p.minimum is not None or p.maximum is not None
                               or p.max_length is not None or p.choices], ids=lambda p: p.name)
def test_the_api_takes_each_limit_and_refuses_one_past_it(p):
    def taken(value: Any) -> bool:
        try:
            msgspec.convert(_request(p, value), SearchRequest)
        except msgspec.ValidationError:
            return False
        return True

    for bound, past in ((p.minimum, -1), (p.maximum, +1)):
        if bound is not None:
            at, beyond = (int(bound), int(bound) + past) if p.kind in ("int", "ids") else (bound, bound + past)
            if p.kind == "ids":  # the bounds are each id's
                at, beyond = [at], [beyond]
            assert taken(at) and not taken(beyond), (p.name, bound)
    if p.max_length is not None:
        item = {"text": "x", "vector": 0.5, "texts": "JPEG", "ids": 1}[p.kind]
        longest = "x" * p.max_length if p.kind == "text" else [item] * p.max_length
        assert taken(longest) and not taken(longest + longest[:1]), p.name
    for choice in p.choices:
        assert taken(choice), (p.name, choice)
    if p.choices:
        assert not taken("nonesuch"), p.name
