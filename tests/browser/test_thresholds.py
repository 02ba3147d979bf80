"""The similarity cut-offs on the search page: "Minimum similarity" (min_similarity) and "Largest
drop from the best" (max_drop), in the filters panel and the shareable URL, with the strip that
shows where each cut falls among the results' similarities.

The test model's similarities mean nothing, but they are real numbers the API reports, so the
expected results are computed from the API's own answer to the same query.
"""

from __future__ import annotations

import re

import pytest

from tests.browser.conftest import screenshot
from tests.browser.test_pages import card_ids, query_of

sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package")
expect = sync_api.expect
expect.set_options(timeout=10_000)

pytestmark = pytest.mark.slow


def a_drop_that_cuts(similarities: list[float]) -> float:
    """A max_drop (3 decimals, as a user types it) that keeps the best few hits and cuts the rest,
    falling well inside the widest gap between two of the top 20, so no similarity sits on it."""
    best = similarities[0]
    gaps = [(similarities[i - 1] - similarities[i], i) for i in range(2, 20)]
    width, i = max(gaps)
    assert width > 0.002, f"the test collection's similarities are too even: {similarities[:20]}"
    return round(best - (similarities[i - 1] + similarities[i]) / 2, 3)


def test_a_largest_drop_narrows_the_results_is_in_the_url_and_survives_a_reload(page, served, console):
    answer = served.client.post("/api/search", json={"text": "dog", "k": 100}).json()
    similarities = [r["similarity"] for r in answer["results"]]
    drop = a_drop_that_cuts(similarities)
    kept = [r["id"] for r in answer["results"] if r["similarity"] >= similarities[0] - drop]
    assert 2 <= len(kept) < 24

    page.goto("/?q=dog&mode=vector")
    expect(page.locator("#grid .card")).to_have_count(24)
    # With no cut set, the strip shows where the results' similarities lie, to pick one from.
    expect(page.locator("#sim-strip .tick")).to_have_count(24)
    expect(page.locator("#sim-strip .cut")).to_have_count(0)

    page.locator("#filters summary").click()
    page.get_by_label("Largest drop from the best").fill(str(drop))
    page.get_by_label("Largest drop from the best").press("Enter")
    expect(page.locator("#grid .card")).to_have_count(len(kept))
    assert card_ids(page) == kept
    assert query_of(page.url) == {"q": ["dog"], "mode": ["vector"], "max_drop": [str(drop)]}
    expect(page.locator("#filter-count")).to_have_text("(1 active)")
    expect(page.locator("#sim-strip .tick")).to_have_count(len(kept))
    expect(page.locator("#cut-drop")).to_have_attribute("title", re.compile(rf"{similarities[0]:.3f} − {drop}"))
    screenshot(page, "search-thresholds")

    page.reload()  # the link carries the cut: the form shows it and the results stay narrowed
    expect(page.locator("#grid .card")).to_have_count(len(kept))
    assert card_ids(page) == kept
    expect(page.get_by_label("Largest drop from the best")).to_have_value(str(drop))
    expect(page.locator("#filters")).to_have_attribute("open", "")

    # Back to the uncut search, then forward again: history walks the cut too.
    page.go_back()
    expect(page.locator("#grid .card")).to_have_count(24)
    expect(page.get_by_label("Largest drop from the best")).to_have_value("")
    page.go_forward()
    expect(page.locator("#grid .card")).to_have_count(len(kept))

    page.get_by_role("button", name="Clear filters").click()
    expect(page.locator("#grid .card")).to_have_count(24)
    assert "max_drop" not in query_of(page.url)
    console.assert_clean()


def test_a_minimum_similarity_cuts_and_an_out_of_range_one_shows_the_apis_message(page, served, console):
    answer = served.client.post("/api/search", json={"text": "dog", "k": 100}).json()
    best = answer["results"][0]["similarity"]
    above_best = round(best + 0.01, 2)
    page.goto(f"/?q=dog&mode=vector&min_similarity={above_best}")
    expect(page.locator("#results .empty")).to_contain_text("No results")
    expect(page.get_by_label("Minimum similarity")).to_have_value(str(above_best))

    console.allow("status of 400")  # the browser logs the refused request itself
    page.get_by_label("Minimum similarity").fill("1.5")
    page.get_by_label("Minimum similarity").press("Enter")
    error = page.locator("#results .error")
    expect(error).to_contain_text("min_similarity")  # the API's own words, naming the field and its bound
    expect(error).to_contain_text("<= 1.0")
    expect(error).to_have_attribute("role", "alert")
    assert query_of(page.url)["min_similarity"] == ["1.5"]

    page.goto("/?q=dog&mode=vector&max_drop=lots")  # a hand-edited link: not a number at all
    expect(page.locator("#notice")).to_contain_text("values the page cannot read, left out: max_drop=lots")
    expect(page.locator("#grid .card").first).to_be_visible()  # searched without it
    console.assert_clean()
