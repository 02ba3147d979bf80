"""The web page in a real Chromium, against a real ``pgclip serve`` and worker.

Each test ends with no unexpected console error and leaves a screenshot in
``test-artifacts/screenshots/``. The test model's vectors mean nothing, so the
assertions lean on what it does guarantee: identical images get identical
vectors, and captions, filters and dates are exact.
"""

from __future__ import annotations

import math
import re
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.browser.conftest import fake_map, screenshot
from tests.images import jpeg_bytes

sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package")
expect = sync_api.expect
expect.set_options(timeout=10_000)

pytestmark = pytest.mark.slow


def card_ids(page) -> list[int]:
    return [int(i) for i in page.locator("#grid .card").evaluate_all("cards => cards.map(c => c.dataset.id)")]


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def test_a_typed_query_shows_results_and_its_link_restores_them(page, served, browser, console):
    page.goto("/")
    expect(page).to_have_title("Search · pgclip")
    page.locator("#q").fill("dog")
    page.keyboard.press("Enter")  # Enter submits
    expect(page.locator("#grid .card")).to_have_count(24)
    # Hybrid: both captioned dogs match the words and the vector, so they lead.
    assert set(card_ids(page)[:2]) == {served.ids["img0000.jpg"], served.ids["img0001.jpg"]}
    first = page.locator("#grid .card").first
    expect(first.locator(".score")).to_contain_text(re.compile(r"score \d\.\d{4}"))
    expect(first.locator(".caption")).to_contain_text("dog")
    expect(page).to_have_title(re.compile("dog"))
    assert query_of(page.url) == {"q": ["dog"]}
    screenshot(page, "search")

    # The search field hands focus to the button by keyboard, with a visible focus ring.
    page.locator("#q").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "search-button"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"

    # The address is a bookmark: a new tab (no shared state) and a reload show the same search.
    shown = card_ids(page)
    other = browser.new_context(base_url=served.url).new_page()
    other.goto(page.url)
    expect(other.locator("#grid .card")).to_have_count(24)
    assert card_ids(other) == shown and other.locator("#q").input_value() == "dog"
    other.context.close()
    page.reload()
    expect(page.locator("#grid .card")).to_have_count(24)
    assert card_ids(page) == shown

    # Scrolling to the end loads the next page by itself (30 images in all).
    page.locator("#more").scroll_into_view_if_needed()
    expect(page.locator("#grid .card")).to_have_count(30)
    expect(page.locator("#result-count")).to_have_text("30 results")
    expect(page.locator("#more")).to_be_hidden()
    assert len(set(card_ids(page))) == 30
    console.assert_clean()


def test_the_mode_toggle_and_the_filters_change_the_results(page, served, console):
    ids = served.ids
    page.goto("/?q=picnic&mode=text")  # text only: the caption words decide
    expect(page.locator("#grid .card")).to_have_count(2)
    assert set(card_ids(page)) == {ids["summer2019.jpg"], ids["summer2023.jpg"]}
    expect(page.locator('input[name="mode"][value="text"]')).to_be_checked()

    page.get_by_text("Vector only").click()  # the same text as a CLIP query: every image ranks
    expect(page.locator("#grid .card")).to_have_count(24)
    assert query_of(page.url)["mode"] == ["vector"]

    page.locator("#filters summary").click()
    page.locator("#orientation").select_option("portrait")
    expect(page.locator("#grid .card")).to_have_count(1)
    assert card_ids(page) == [ids["tall.jpg"]] and query_of(page.url)["orientation"] == ["portrait"]

    page.locator("#orientation").select_option("")
    page.locator("#meta").fill("tag = animal")
    page.locator("#meta").press("Enter")
    expect(page.locator("#grid .card")).to_have_count(2)
    assert set(card_ids(page)) == {ids["img0000.jpg"], ids["img0001.jpg"]}

    page.locator("#meta").fill("")
    page.locator("#after").fill("2022-01-01")  # only one picture was taken after that
    expect(page.locator("#grid .card")).to_have_count(1)
    assert card_ids(page) == [ids["summer2023.jpg"]]
    expect(page.locator("#grid .card .date")).to_have_text("2023-08-02")
    expect(page.locator("#filter-count")).to_have_text("(1 active)")
    screenshot(page, "search-filters")
    console.assert_clean()


def test_searching_by_a_chosen_or_dropped_image_finds_that_image_first(page, served, console):
    page.goto("/")
    page.locator("#file").set_input_files(str(served.photos / "img0005.jpg"))
    first = page.locator("#grid .card").first
    expect(first).to_have_attribute("data-id", str(served.ids["img0005.jpg"]))
    expect(first.locator(".score")).to_contain_text("sim 1.000")
    expect(page.locator("#drop-name")).to_have_text("img0005.jpg")
    assert query_of(page.url)["image"] == ["img0005.jpg"]
    screenshot(page, "search-by-image")

    page.reload()  # the picture is kept for this tab, so a reload repeats the search
    expect(page.locator("#grid .card").first).to_have_attribute("data-id", str(served.ids["img0005.jpg"]))

    page.get_by_role("button", name="Remove image").click()
    dropped = list((served.photos / "img0007.jpg").read_bytes())
    page.evaluate(
        """bytes => {
            const data = new DataTransfer();
            data.items.add(new File([new Uint8Array(bytes)], "dropped.jpg", {type: "image/jpeg"}));
            const drop = new DragEvent("drop", {dataTransfer: data, bubbles: true});
            document.querySelector("#dropzone").dispatchEvent(drop);
        }""",
        dropped,
    )
    expect(page.locator("#grid .card").first).to_have_attribute("data-id", str(served.ids["img0007.jpg"]))
    console.assert_clean()


def test_the_search_page_keeps_its_state_straight(page, served, tmp_path, console):
    """What a new-user pass found: a stray page 2 under an error, old results after Back to an
    empty search, a literal "null" in the similarity strip, raw JavaScript errors for hand-edited
    links, and a picture link that turned into a text search without a word."""
    page.goto("/?q=a+photo&mode=vector")
    expect(page.locator("#grid .card")).to_have_count(24)
    expect(page.locator("#sim-strip")).not_to_contain_text("null")
    (tmp_path / "notes.txt").write_text("not a picture")
    page.locator("#file").set_input_files(str(tmp_path / "notes.txt"))
    expect(page.locator("#results .error")).to_contain_text("notes.txt is not an image")
    page.mouse.wheel(0, 5000)  # where infinite scroll would fetch page 2
    page.wait_for_timeout(1500)
    expect(page.locator("#grid")).to_have_count(0)
    expect(page.locator("#more")).to_be_hidden()

    page.goto("/")
    page.goto("/?q=a+dog&mode=vector")
    expect(page.locator("#grid .card").first).to_be_visible()
    page.go_back()
    expect(page.locator("#results .empty")).to_contain_text("Find pictures by what they show")
    expect(page.locator("#grid")).to_have_count(0)

    page.goto("/?q=a+dog&mode=vector&before=garbage&min_similarity=zz")
    expect(page.locator("#notice")).to_contain_text("left out: before=garbage, min_similarity=zz")
    expect(page.locator("#grid .card").first).to_be_visible()  # searched without them
    expect(page.locator("#results .error")).to_have_count(0)

    page.goto("/?q=" + "dog+" * 400 + "&mode=text")  # longer than a search takes: the field's maxlength is not a link's
    expect(page.locator("#notice")).to_contain_text("longer than 1000 characters, the most a search takes")
    expect(page.locator("#results .error")).to_have_count(0)
    assert len(page.locator("#q").input_value()) == 1000

    page.goto("/?q=a+dog&mode=vector&image=elsewhere.jpg")  # a picture this tab does not keep
    expect(page.locator("#grid .card").first).to_be_visible()
    expect(page.locator("#notice")).to_contain_text("searched by a picture (elsewhere.jpg) that links cannot carry")
    console.assert_clean()


def test_a_search_in_flight_says_so_over_the_previous_results(page, served, console):
    """The old results stayed as they were, with no sign that a new search was running."""
    page.goto("/?q=a+photo&mode=vector")
    expect(page.locator("#grid .card")).to_have_count(24)
    held = []
    page.route("**/api/search", lambda route: held.append(route))  # the next search waits for us
    page.locator("#q").fill("a dog")
    page.locator("#q").press("Enter")
    results = page.locator("#results")
    expect(results).to_have_attribute("aria-busy", "true")
    page.wait_for_function("getComputedStyle(document.querySelector('#grid')).opacity < 0.6")
    shown = page.evaluate("getComputedStyle(document.querySelector('#results'), '::before').content")
    assert shown == '"Searching…"', shown
    screenshot(page, "search-in-flight")
    held[0].continue_()
    page.unroute("**/api/search")
    expect(results).to_have_attribute("aria-busy", "false")
    expect(page.locator("#grid .card").first).to_be_visible()
    assert page.evaluate("getComputedStyle(document.querySelector('#grid')).opacity") == "1"
    console.assert_clean()


def test_no_results_and_api_errors_are_shown_as_such(page, console):
    page.goto("/?q=zebra&mode=text")
    expect(page.locator("#results .empty")).to_contain_text("No results")

    console.allow("status of 400")  # the browser logs the failed request itself
    page.goto("/?q=" + "dog%20%2B%20./secret.jpg" + "&mode=vector")
    error = page.locator("#results .error")
    expect(error).to_contain_text("CLI only")  # the API's own detail message
    expect(error).to_have_attribute("role", "alert")
    screenshot(page, "search-error")
    console.assert_clean()


def test_an_image_page_shows_its_facts_and_leads_to_more_like_this(page, served, console):
    soup = served.ids["img0002.jpg"]
    page.goto("/?q=soup&mode=text")
    page.locator("#grid .card").first.click()
    expect(page).to_have_url(re.compile(rf"/images/{soup}$"))
    expect(page.locator("h1")).to_have_text(f"Image {soup}")
    expect(page).to_have_title(f"a bowl of soup · Image {soup} · pgclip")
    expect(page.locator("#captions")).to_contain_text("a bowl of soup")
    expect(page.locator("#model")).to_have_text("test-tiny")
    expect(page.locator("#queue-state")).to_have_text("embedded")
    expect(page.locator(".image-layout")).to_contain_text("food")
    page.wait_for_function("document.querySelector('#original').naturalWidth === 160")
    similar = page.locator("#similar-grid .card")
    expect(similar).to_have_count(12)
    assert soup not in card_ids_in(page, "#similar-grid")
    screenshot(page, "image")

    target = similar.first.get_attribute("data-id")
    similar.first.click()
    expect(page).to_have_url(re.compile(rf"/images/{target}$"))
    expect(page.locator("h1")).to_have_text(f"Image {target}")
    expect(page.locator("#similar-grid .card")).to_have_count(12)
    console.assert_clean()


def card_ids_in(page, grid: str) -> list[int]:
    return [int(i) for i in page.locator(f"{grid} .card").evaluate_all("cards => cards.map(c => c.dataset.id)")]


def test_a_failed_image_shows_its_reason(page, served, console):
    broken = served.ids["broken.jpg"]
    page.goto(f"/images/{broken}")
    expect(page.locator("#queue-state")).to_have_text("failed")
    expect(page.locator("#last-error")).to_contain_text("truncated")
    expect(page.locator("#similar")).to_contain_text("no vector")
    console.assert_clean()


def test_the_map_draws_every_vector_and_hovering_a_point_shows_its_thumbnail(page, served, console):
    points = served.client.get("/api/map").json()["points"]
    page.goto("/map")
    expect(page.locator("#map-canvas")).to_have_attribute("data-points", str(len(points)))
    expect(page).to_have_title(f"Map of {len(points)} images · pgclip")
    # The most isolated point, so that the cursor cannot be nearer to another one.
    loneliest = max(points, key=lambda p: min(math.dist((p["x"], p["y"]), (q["x"], q["y"]))
                                              for q in points if q is not p))
    where = page.evaluate("id => pgclipMap.screenPoint(id)", loneliest["id"])
    page.mouse.move(where["x"] + 1, where["y"] + 1)
    tooltip = page.locator("#tooltip")
    expect(tooltip).to_be_visible()
    expect(tooltip).to_have_attribute("data-id", str(loneliest["id"]))
    expect(page.locator("#tooltip-img")).to_have_attribute("src", f"/api/images/{loneliest['id']}/thumbnail")
    page.wait_for_function("(img => img.complete && img.naturalWidth > 0)(document.querySelector('#tooltip-img'))")
    screenshot(page, "map")

    page.mouse.move(5, 5)
    expect(tooltip).to_be_hidden()
    page.mouse.click(where["x"], where["y"])
    expect(page).to_have_url(re.compile(rf"/images/{loneliest['id']}$"))
    console.assert_clean()


def test_the_map_draws_20000_points_and_still_answers_the_mouse(page, served, console):
    """The largest map the API sends (20000 points, sampled beyond): one canvas, no node per point."""
    real = served.ids["tall.jpg"]
    fake_map(page, real, 20_000, seed=0)
    page.goto("/map")
    expect(page.locator("#map-canvas")).to_have_attribute("data-points", "20000")
    frame_ms = page.evaluate("""async () => {
        const canvas = document.querySelector("#map-canvas");
        const box = canvas.getBoundingClientRect();
        const start = performance.now();
        for (let i = 0; i < 10; i++) {
            canvas.dispatchEvent(new WheelEvent("wheel", {
                deltaY: i < 5 ? -60 : 60, clientX: box.x + box.width / 2, clientY: box.y + box.height / 2,
                bubbles: true, cancelable: true}));
            await new Promise(resolve => requestAnimationFrame(() => requestAnimationFrame(resolve)));
        }
        return (performance.now() - start) / 10;
    }""")
    paint_ms = page.evaluate("pgclipMap.lastPaintMs()")
    print(f"map with 20000 points: {frame_ms:.1f} ms per zoom step (two frames), {paint_ms:.1f} ms to paint")
    page.locator("#reset").click()
    where = page.evaluate("id => pgclipMap.screenPoint(id)", real)
    page.mouse.move(where["x"], where["y"])
    expect(page.locator("#tooltip")).to_have_attribute("data-id", str(real))
    assert page.locator("#map-wrap *").count() < 10  # the points are pixels, not elements
    screenshot(page, "map-20000")
    console.assert_clean()


def test_a_map_selection_opens_the_similarity_heat_map(page, served, console):
    page.goto("/map")
    expect(page.locator("#map-canvas")).to_have_attribute("data-points", re.compile(r"\d+"))
    box = page.locator("#map-canvas").bounding_box()
    page.keyboard.down("Shift")  # Shift + drag selects
    page.mouse.move(box["x"] + 2, box["y"] + 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=4)
    page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] - 2, steps=4)
    page.mouse.up()
    page.keyboard.up("Shift")
    expect(page.locator("#compare")).to_be_enabled()
    page.locator("#compare").click()
    expect(page).to_have_url(re.compile(r"/similarity\?ids=[\d,]+$"))
    n = len(query_of(page.url)["ids"][0].split(","))
    assert n == min(25, len(served.client.get("/api/map").json()["points"]))
    expect(page.locator("#heat .cell")).to_have_count(n * n)
    # The diagonal is each image against itself.
    values = page.locator("#heat .cell").evaluate_all("cells => cells.map(c => Number(c.dataset.value))")
    assert all(values[i * n + i] == pytest.approx(1.0) for i in range(n))
    page.get_by_text("Grouped").click()
    expect(page.locator("#heat .cell")).to_have_count(n * n)
    page.wait_for_function("[...document.querySelectorAll('#heat img')].every(i => i.complete && i.naturalWidth > 0)")
    screenshot(page, "similarity")
    console.assert_clean()


def test_search_results_link_to_their_heat_map(page, served, console):
    page.goto("/?q=animal&mode=vector&meta=tag%20%3D%20animal")
    expect(page.locator("#grid .card")).to_have_count(2)
    page.get_by_role("link", name=re.compile("Similarity heat-map")).click()
    expect(page.locator("#heat .cell")).to_have_count(4)
    console.assert_clean()


def test_the_status_page_shows_the_queue_and_its_failures(page, served, console):
    status = served.client.get("/api/status").json()
    counts = status["models"][0]["counts"]
    page.goto("/status")
    expect(page).to_have_title("Queue status · pgclip")
    row = page.locator("#models tbody tr").first
    expect(row.locator('[data-state="done"]')).to_have_text(str(counts["done"]))
    expect(row.locator('[data-state="failed"]')).to_have_text("1")
    expect(row).to_contain_text("test-tiny")
    expect(page.locator("#failure-table")).to_contain_text("broken.jpg")
    expect(page.locator("#failure-table")).to_contain_text("truncated")
    expect(page.locator("#updated")).to_contain_text("queue idle")
    screenshot(page, "status")
    console.assert_clean()


def test_an_upload_is_queued_embedded_by_the_worker_and_then_found(page, served, tmp_path, console):
    """Last: it adds an image to the shared collection."""
    before = served.client.get("/api/status").json()["models"][0]["counts"]["done"]
    picture = tmp_path / "giraffe.jpg"
    picture.write_bytes(jpeg_bytes(4242, (120, 120)))
    status_tab = page.context.new_page()  # left open: it must notice the new image by itself
    status_tab.clock.install()  # its refresh timers run when the test says so
    status_tab.goto("/status")
    done_cell = status_tab.locator('#models [data-state="done"]')
    expect(done_cell).to_have_text(str(before))
    page.goto("/upload")
    expect(page).to_have_title("Add images · pgclip")
    expect(page.locator("#queue-line")).to_contain_text(f"{before} done")
    (tmp_path / "giraffe again.jpg").write_bytes(picture.read_bytes())  # the same picture twice in one batch
    (tmp_path / "notes.txt").write_text("not a picture")
    page.locator("#files").set_input_files([str(picture), str(tmp_path / "giraffe again.jpg"), str(tmp_path / "notes.txt")])
    expect(page.locator("#files-left-out")).to_have_text("Left out, not pictures or videos: notes.txt")
    page.locator("#captions").fill("a purple giraffe statue")
    page.locator("#metadata").fill("tag = upload, year = 2024")
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#uploads li")).to_have_count(2)
    item = page.locator("#uploads li").last
    expect(item).to_contain_text("giraffe.jpg")
    expect(item).to_contain_text("added")
    expect(page.locator("#uploads li").first).to_contain_text("already in the collection")
    new_id = int(item.get_attribute("data-id"))
    # The running worker embeds it; the page follows it until then, on both rows.
    for row in (item, page.locator("#uploads li").first):
        expect(row.locator(".badge")).to_have_text("embedded", timeout=30_000)
        expect(row.locator("img.thumb")).to_be_visible()
    expect(page.locator("#queue-line")).to_contain_text(f"{before + 1} done")
    screenshot(page, "upload")
    for _ in range(10):  # each step is more than the idle refresh interval
        status_tab.clock.run_for(16_000)
        if done_cell.text_content() == str(before + 1):
            break
        status_tab.wait_for_timeout(300)
    expect(done_cell).to_have_text(str(before + 1))

    detail = served.client.get(f"/api/images/{new_id}").json()
    assert detail["metadata"] == {"tag": "upload", "year": 2024}
    page.goto("/?q=giraffe&mode=text")
    expect(page.locator("#grid .card")).to_have_count(1)
    assert card_ids(page) == [new_id]
    console.assert_clean()
