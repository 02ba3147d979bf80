"""The checks every client value passes (api/schemas.py) and the 503's Retry-After (api/errors.py)."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar, get
from litestar.testing import TestClient

from pgclip.api.errors import HANDLERS, RETRY_AFTER_SECONDS
from pgclip.api.schemas import MAX_JSON_DEPTH, Filters, check_json_depth, check_text, decode_json
from pgclip.core.errors import DatabaseUnavailable, InvalidInput, ModelLoadError, SchemaNotReady


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_depth_up_to_the_limit_passes_and_one_more_is_refused():
    check_json_depth(nested(MAX_JSON_DEPTH), "x")
    with pytest.raises(InvalidInput, match=f"x: JSON nested deeper than {MAX_JSON_DEPTH} levels"):
        check_json_depth(nested(MAX_JSON_DEPTH + 1), "x")


@pytest.mark.parametrize("text", [
    '"' + "[" * 5000 + '"',                     # brackets inside a string do not nest
    '{"a\\"[[[[": "' + "{" * 5000 + '"}',        # nor after an escaped quote
    "]" + "[" * 5000,                            # malformed: left to the parser, which stops at once
])
def test_brackets_that_do_not_nest_are_not_counted(text):
    check_json_depth(text, "x")


def test_unclosed_deep_json_is_refused_before_parsing():
    with pytest.raises(InvalidInput, match="deeper"):
        decode_json("[" * 100_000, Any, "metadata")


@pytest.mark.parametrize(("value", "field", "named"), [
    ("a\x00", "caption_query", "caption_query: NUL"),
    ({"a": ["x", {"b": "\x00"}]}, "metadata", "metadata.a[1].b: NUL"),
    ({"a\x00": 1}, "metadata", 'metadata."a\\u0000" (a key): NUL'),
    ({"k": "\ud800"}, "metadata", "metadata.k: lone UTF-16 surrogates"),
])
def test_nul_and_lone_surrogates_are_refused_naming_where(value, field, named):
    with pytest.raises(InvalidInput) as info:
        check_text(value, field)
    assert str(info.value).startswith(named), str(info.value)


def test_text_that_postgres_can_store_passes():
    check_text({"emoji": "\U0001f600", "list": [1, 2**70, None, "ok"]}, "metadata")


def test_decode_json_names_the_field_and_the_problem():
    with pytest.raises(InvalidInput, match="lone UTF-16 surrogate"):
        decode_json('{"a": "\\ud800"}', dict[str, Any], "metadata")
    with pytest.raises(InvalidInput, match=r"filters: Object contains unknown field `colour`"):
        decode_json('{"colour": 1}', Filters, "filters")
    with pytest.raises(InvalidInput, match=r"metadata.a: NUL"):
        decode_json('{"a": "\\u0000"}', dict[str, Any], "metadata")
    assert decode_json('{"a": %d}' % 2**70, dict[str, Any], "metadata") == {"a": 2**70}


@pytest.mark.parametrize("error", [DatabaseUnavailable, SchemaNotReady, ModelLoadError])
def test_a_503_says_when_to_retry(error):
    @get("/boom")
    async def boom() -> None:
        raise error("down for a moment")

    with TestClient(Litestar([boom], exception_handlers=HANDLERS)) as client:
        response = client.get("/boom")
    assert response.status_code == 503
    assert response.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    assert response.json() == {"status_code": 503, "detail": "down for a moment"}


def test_a_400_has_no_retry_after():
    @get("/bad")
    async def bad() -> None:
        raise InvalidInput("no")

    with TestClient(Litestar([bad], exception_handlers=HANDLERS)) as client:
        response = client.get("/bad")
    assert response.status_code == 400 and "retry-after" not in response.headers


@pytest.mark.timeout(30)
def test_the_depth_check_is_linear_in_the_body_whatever_it_holds():
    """An unterminated string full of escaped quotes made a string-literal regex backtrack
    quadratically (a 160 KB body held the event loop for a minute); a hang fails this test."""
    check_json_depth(b'"' + b'\\"' * 2_000_000, "the request body")  # malformed: left to the parser
    with pytest.raises(InvalidInput, match="deeper than"):
        check_json_depth(b'{"a": "\\"[[[[", "b": ' + b"[" * (MAX_JSON_DEPTH + 1), "the request body")
