"""Query composition: parsing rclip-style queries and combining their vectors."""

from __future__ import annotations

import numpy as np
import pytest

from pgclip.core.errors import InvalidInput
from pgclip.workers.compose import Term, combine, is_composite, parse_query


def text(value: str, weight: float = 1.0) -> Term:
    return Term("text", value, weight)


def image(path: str, weight: float = 1.0) -> Term:
    return Term("image", path, weight)


@pytest.mark.parametrize(
    ("query", "terms"),
    [
        # rclip's own examples, as its README writes them (shell quotes kept or dropped)
        ('"2:golden retriever" + ./pool.jpg - fruit', [text("golden retriever", 2), image("./pool.jpg"), text("fruit", -1)]),
        ("2:golden retriever + ./pool.jpg - fruit", [text("golden retriever", 2), image("./pool.jpg"), text("fruit", -1)]),
        ("cat - 0.5:./cat-sleeps-on-a-chair.jpg", [text("cat"), image("./cat-sleeps-on-a-chair.jpg", -0.5)]),
        # hyphens inside words, and + or - without spaces around, are text
        ("a black-and-white t-shirt", [text("a black-and-white t-shirt")]),
        ("dog+cat - x-ray", [text("dog+cat"), text("x-ray", -1)]),
        ("  cat\t+\tdog  ", [text("cat"), text("dog")]),
        # quotes keep + - : literal; an explicit weight outside makes the whole inside literal
        ('"a + b - c" + d', [text("a + b - c"), text("d")]),
        ('2:"golden retriever"', [text("golden retriever", 2)]),
        ('1:"3:10 to Yuma"', [text("3:10 to Yuma")]),
        ('"4k: wallpaper"', [text("4k: wallpaper")]),
        ('"./pool.jpg"', [text("./pool.jpg")]),
        ('a sign saying "no + entry"', [text('a sign saying "no + entry"')]),
        # weights
        ("0.5:dog + .25:cat - 3:bird", [text("dog", 0.5), text("cat", 0.25), text("bird", -3)]),
        ("cat + -2:dog", [text("cat"), text("dog", -2)]),
        ("2 : dog", [text("2 : dog")]),
        ("meeting at 10:30", [text("meeting at 10:30")]),
        # negation of the first term
        ("-cat", [text("cat", -1)]),
        ("- cat + dog", [text("cat", -1), text("dog")]),
        ("-2:cat", [text("cat", -2)]),
        # stored image ids; a hashtag is text
        ("0.5:dog + #12 - id:7", [text("dog", 0.5), Term("id", 12, 1), Term("id", 7, -1)]),
        ("2:#3", [Term("id", 3, 2)]),
        ("#sunset", [text("#sunset")]),
        # paths versus text
        ("holiday.JPG + ~/x/y.png", [image("holiday.JPG"), image("~/x/y.png")]),
        ("../a/b + /abs/photo", [image("../a/b"), image("/abs/photo")]),
        ("scan.TIFF - old.webp", [image("scan.TIFF"), image("old.webp", -1)]),
        ("photo of a jpg file", [text("photo of a jpg file")]),
        ("./my photos/pool.jpeg", [image("./my photos/pool.jpeg")]),
    ],
)
def test_queries_parse_into_weighted_terms(query, terms):
    assert parse_query(query) == terms


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "empty query"),
        ("   ", "empty query"),
        ("cat + ", r"empty term in 'cat \+'"),
        ("+ cat", "empty term"),
        ("cat +  - dog", "empty term"),
        ("-", "empty term"),
        ('cat + ""', "empty quoted term"),
        ("0:dog", r"weight 0 in '0:dog'"),
        ("cat - 0.0:dog", "weight 0"),
        ("2x:dog", r"weight '2x' is not a number in '2x:dog'"),
        ("1.2.3:dog", r"weight '1.2.3' is not a number"),
        ("1e999:dog", r"weight '1e999' is not a number"),
        ("1e308:dog", r"weight 1e308 in '1e308:dog' is outside -1000 to 1000"),  # not "the parts cancel out"
        ("cat - 1001:dog", r"weight 1001 in '1001:dog' is outside"),
        ("2: + x", r"weight 2 has no term after it in '2:'"),
        ('"open', "unterminated quote in '\"open'"),
        ('"a" + "b', "unterminated quote"),
        ("id:abc", r"image id must be a whole number: 'id:abc'"),
    ],
)
def test_malformed_queries_name_the_problem(query, message):
    with pytest.raises(InvalidInput, match=message):
        parse_query(query)


def test_only_plain_text_takes_the_fast_path():
    assert not is_composite("a dog on a beach")
    assert not is_composite("  a black-and-white t-shirt ")
    for query in ("dog + beach", "2:dog", "-dog", "#3", "./x.jpg", '"dog"'):
        assert is_composite(query), query
    with pytest.raises(InvalidInput):
        is_composite("cat + ")


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


A, B = unit(1, 0, 0, 0), unit(0, 1, 0, 0)


def test_combine_is_a_weighted_unit_sum():
    v = combine([text("a", 2), text("b")], [A, B])
    assert v.dtype == np.float32 and np.linalg.norm(v) == pytest.approx(1.0, abs=1e-6)
    assert v @ A > v @ B > 0
    np.testing.assert_allclose(v, unit(2, 1, 0, 0), atol=1e-6)


def test_combine_subtracts_negative_terms_and_rescales_inputs():
    v = combine([text("a"), text("b", -1)], [A, B])
    assert v @ B < 0 < v @ A
    np.testing.assert_allclose(combine([text("a")], [3 * A]), A)  # inputs count at unit length
    np.testing.assert_allclose(combine([text("a", 0.5)], [A]), A)  # one term: only its direction


def test_terms_that_cancel_out_are_a_user_error():
    with pytest.raises(InvalidInput, match=r"the terms cancel out \(a, a\)"):
        combine([text("a"), text("a", -1)], [A, A])
    with pytest.raises(InvalidInput, match="cancel out"):
        combine([text("a", 2), text("b", -1), text("b", -1)], [A, A, A])


def test_mismatched_vectors_are_a_programming_error():
    with pytest.raises(ValueError, match="one dimension"):
        combine([text("a"), text("b")], [A, unit(1, 0, 0)])
    with pytest.raises(ValueError, match="one vector per term"):
        combine([text("a"), text("b")], [A])
    with pytest.raises(ValueError, match="one vector per term"):
        combine([], [])
    with pytest.raises(ValueError, match="all zeros"):
        combine([text("a")], [np.zeros(4, dtype=np.float32)])
