"""The map page in Chromium: PCA or UMAP, colours by a metadata key with a legend that selects,
thumbnails once few points are on screen, and a selection sent to the heat-maps."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.browser.conftest import _queue_empty, fake_map, screenshot
from tests.waiting import wait_for

sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package")
expect = sync_api.expect

pytestmark = pytest.mark.slow

UMAP_TIMEOUT_MS = 180_000  # the server's first UMAP imports umap-learn and compiles it (numba)


def shown(page, attribute: str, value) -> None:
    expect(page.locator("#map-canvas")).to_have_attribute(attribute, value)


def test_switching_to_umap_redraws_the_map_and_the_url_keeps_it(page, served, console):
    wait_for(lambda: _queue_empty(served.client), 60, 0.2, "uploads of earlier tests embedded (the map holds still)")
    page.goto("/map")
    shown(page, "data-method", "pca")
    some = served.ids["img0003.jpg"]
    before = page.evaluate("id => pgclipMap.screenPoint(id)", some)
    page.evaluate("""() => {
        window.summaries = [];
        new MutationObserver(() => summaries.push(document.querySelector("#map-summary").textContent))
            .observe(document.querySelector("#map-summary"), {childList: true, characterData: true, subtree: true});
    }""")
    page.locator("#projection").select_option("umap")
    expect(page.locator("#map-canvas")).to_have_attribute("data-method", "umap", timeout=UMAP_TIMEOUT_MS)
    assert any(s.startswith("Computing UMAP") for s in page.evaluate("summaries"))
    expect(page.locator("#map-summary")).to_contain_text("UMAP")
    assert page.url.endswith("/map?projection=umap")
    after = page.evaluate("id => pgclipMap.screenPoint(id)", some)
    assert after != before
    screenshot(page, "map-umap")

    page.reload()  # the URL is the state: a shared link opens the same map
    shown(page, "data-method", "umap")
    expect(page.locator("#projection")).to_have_value("umap")
    assert page.evaluate("id => pgclipMap.screenPoint(id)", some) == after  # the same picture again
    page.go_back()
    shown(page, "data-method", "pca")
    expect(page.locator("#projection")).to_have_value("pca")
    console.assert_clean()


def test_colouring_by_a_key_shows_a_legend_whose_entries_select_their_images(page, served, console):
    page.goto("/map")
    shown(page, "data-method", "pca")
    expect(page.locator("#legend")).to_be_hidden()
    expect(page.locator("#color-keys option[value='tag']")).to_have_count(1)  # the key is suggested
    page.locator("#color").fill("tag")
    page.locator("#color").press("Enter")
    shown(page, "data-color", "tag")
    assert query_of(page.url) == {"color": ["tag"]}
    api = served.client.get("/api/map", params={"color": "tag"}).json()
    legend = page.locator("#legend .legend-item")
    expect(legend).to_have_count(len(api["legend"]))
    texts = [t.split("\n") for t in legend.all_inner_texts()]
    assert [(v, int(c)) for v, c in texts] == [("(no value)" if e["value"] is None else e["value"], e["count"])
                                            for e in api["legend"]]
    animal = legend.filter(has_text="animal")
    expect(animal).to_contain_text("2")

    animal.click()
    animals = sorted(p["id"] for p in api["points"] if p["value"] == "animal")
    assert page.evaluate("pgclipMap.selectedIds()") == animals == sorted([served.ids["img0000.jpg"], served.ids["img0001.jpg"]])
    expect(animal).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#compare")).to_have_text("Compare selected (2)")
    food = legend.filter(has_text="food")
    food.click(modifiers=["Shift"])  # Shift adds to the selection
    assert page.evaluate("pgclipMap.selectedIds()") == sorted([*animals, served.ids["img0002.jpg"]])
    screenshot(page, "map-legend")
    food.click()  # a plain click starts over
    assert page.evaluate("pgclipMap.selectedIds()") == [served.ids["img0002.jpg"]]
    expect(animal).to_have_attribute("aria-pressed", "false")
    console.assert_clean()


def test_compare_with_captions_opens_the_images_x_captions_heat_map_of_the_selection(page, served, console):
    page.goto("/map?color=tag")
    shown(page, "data-color", "tag")
    page.locator("#legend .legend-item", has_text="people").click()
    page.locator("#compare-captions").click()
    expect(page).to_have_url(re.compile(r"/similarity\?ids=[\d,]+&captions=true$"))
    chosen = [int(i) for i in query_of(page.url)["ids"][0].split(",")]
    assert sorted(chosen) == sorted([served.ids["summer2019.jpg"], served.ids["summer2023.jpg"]])
    expect(page.locator("#heat .cell")).to_have_count(4)  # 2 images x their 2 first captions
    captions = {served.ids["summer2019.jpg"]: "a picnic in the park", served.ids["summer2023.jpg"]: "a picnic by the lake"}
    expect(page.locator("#heat .text-axis")).to_have_text([f"#{i}: {captions[i]}" for i in chosen])
    console.assert_clean()


def test_compare_with_captions_of_a_selection_with_an_uncaptioned_image_draws_it_as_a_row(page, served, console):
    captioned, bare = served.ids["img0002.jpg"], served.ids["img0005.jpg"]  # img0005: no caption
    page.goto(f"/similarity?ids={bare},{captioned}&captions=true")  # what the map's button opens
    expect(page.locator("#heat .cell")).to_have_count(2)
    expect(page.locator("#heat .text-axis")).to_have_text([f"#{captioned}: a bowl of soup"])
    expect(page.locator("#uncaptioned")).to_have_text(f"no caption: #{bare} (a row, no column)")
    console.assert_clean()


def test_zooming_in_until_few_points_show_draws_their_thumbnails(page, served, console):
    real = served.ids["tall.jpg"]
    fake_map(page, real, 2000, seed=1)
    page.goto("/map")
    shown(page, "data-points", "2000")
    shown(page, "data-thumbnails-drawn", "0")  # 2000 points on screen: dots

    def colour_beside(where) -> list[int]:
        """The canvas pixel 10 px right and 8 px below the point: past its dot, inside a thumbnail."""
        return page.evaluate("""([x, y]) => {
            const canvas = document.querySelector("#map-canvas"), box = canvas.getBoundingClientRect();
            const dpr = window.devicePixelRatio || 1;
            return [...canvas.getContext("2d").getImageData(Math.round((x - box.left + 10) * dpr),
                                                              Math.round((y - box.top + 8) * dpr), 1, 1).data];
        }""", [where["x"], where["y"]])

    where = page.evaluate("id => pgclipMap.screenPoint(id)", real)
    assert colour_beside(where) == [255, 255, 255, 255]  # background beside a dot
    page.mouse.move(where["x"], where["y"])
    for _ in range(5):  # the wheel zooms around the cursor: the point stays under it
        page.mouse.wheel(0, -600)
    expect(page.locator("#map-canvas")).not_to_have_attribute("data-thumbnails-drawn", "0")
    where = page.evaluate("id => pgclipMap.screenPoint(id)", real)
    page.wait_for_function("pgclipMap.thumbnailsDrawn() >= 1")
    assert colour_beside(where) != [255, 255, 255, 255]  # the picture, not the background
    screenshot(page, "map-thumbnails")
    page.locator("#reset").click()
    shown(page, "data-thumbnails-drawn", "0")
    console.assert_clean()


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)
