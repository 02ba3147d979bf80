"""Changing the collection from the page: edits, deletion, the API key dialog, near-duplicates.

Every test here works on images this module uploads itself (the ``mine`` fixture) and deletes
again at the end, so the shared collection the other browser tests count on is left as it was.
"""

from __future__ import annotations

import io
import json
import re

import httpx
import pytest
from PIL import Image

from tests.browser.conftest import API_KEY, family_jpeg, screenshot
from tests.images import jpeg_bytes
from tests.waiting import wait_for

sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package")
expect = sync_api.expect
expect.set_options(timeout=10_000)

pytestmark = pytest.mark.slow


def _upload(client: httpx.Client, name: str, data: bytes, captions=(), metadata=None) -> int:
    response = client.post("/api/images", files={"file": (name, data, "image/jpeg")},
                           data={"captions": json.dumps(list(captions)), "metadata": json.dumps(metadata or {})})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["created"], f"{name} is already in the collection: the test would change a shared image"
    return body["id"]


def _copy(data: bytes) -> bytes:
    """The same picture at half the size, re-encoded at a lower quality."""
    image = Image.open(io.BytesIO(data))
    out = io.BytesIO()
    image.resize((image.width // 2, image.height // 2), Image.LANCZOS).save(out, "JPEG", quality=70)
    return out.getvalue()


@pytest.fixture(scope="module")
def mine(served):
    """This module's own images, uploaded at once (the running worker embeds them together)."""
    client = served.client
    original = family_jpeg(7, 0, (200, 150))
    ids = {
        "edit": _upload(client, "boat.jpg", jpeg_bytes(6101, (160, 120)), ["a wooden rowing boat"],
                        {"tag": "boat", "year": 2019}),
        "delete": _upload(client, "quokka.jpg", jpeg_bytes(6102, (160, 120)), ["a grinning quokka"]),
        "keyed": _upload(client, "lantern.jpg", jpeg_bytes(6103, (160, 120)), ["a paper lantern"]),
        "original": _upload(client, "original.jpg", original),
        "copy": _upload(client, "copy.jpg", _copy(original)),
    }
    wait_for(lambda: all(client.get(f"/api/images/{i}").json()["embedded"] for i in ids.values()),
             60, 0.2, "the worker embedding this module's uploads")
    yield ids
    for image_id in ids.values():  # 204, or 404 for the one a test deleted
        assert client.delete(f"/api/images/{image_id}").status_code in (204, 404)


def card_ids(page) -> list[int]:
    return [int(i) for i in page.locator("#grid .card").evaluate_all("cards => cards.map(c => c.dataset.id)")]


def test_metadata_captions_and_date_are_edited_on_the_image_page(page, served, mine, console):
    image_id = mine["edit"]
    page.goto(f"/images/{image_id}")
    expect(page).to_have_title(f"a wooden rowing boat · Image {image_id} · pgclip")
    expect(page.locator("#metadata")).to_contain_text("boat")

    # Metadata: change one value, remove a key, add one; unchanged keys are not sent at all.
    page.get_by_role("button", name="Edit metadata").click()
    expect(page.get_by_role("textbox", name="Key 1")).to_be_focused()
    page.get_by_label('Value of “tag”').fill("canoe")
    page.get_by_role("button", name='Remove key “year”').click()
    page.get_by_role("button", name="Add a key").click()
    expect(page.get_by_role("textbox", name="Key 2")).to_be_focused()
    page.keyboard.type("colour")
    page.keyboard.press("Tab")
    page.keyboard.type("red")
    page.get_by_role("button", name="Add a key").click()
    page.keyboard.type("huge")
    page.keyboard.press("Tab")
    page.keyboard.type("1e999")  # Infinity to JSON.parse, which JSON would store as null: kept as text
    page.keyboard.press("Enter")  # submits the editor
    expect(page.locator("#metadata")).to_contain_text("canoe")
    expect(page.locator("#metadata")).to_contain_text("colour")
    expect(page.locator("#metadata")).not_to_contain_text("2019")
    expect(page.get_by_role("button", name="Edit metadata")).to_be_focused()
    assert served.client.get(f"/api/images/{image_id}").json()["metadata"] == \
        {"tag": "canoe", "colour": "red", "huge": "1e999"}

    # Captions: add one by keyboard, remove the old one with its own button.
    page.get_by_label("New caption").fill("a teal submarine periscope")
    page.keyboard.press("Enter")
    expect(page.locator("#captions li")).to_have_count(2)
    expect(page.get_by_label("New caption")).to_have_value("")
    page.get_by_role("button", name="Remove caption “a wooden rowing boat”").click()
    expect(page.locator("#captions li")).to_have_count(1)
    expect(page.locator("#captions")).to_have_text(re.compile("a teal submarine periscope"))
    expect(page).to_have_title(f"a teal submarine periscope · Image {image_id} · pgclip")
    expect(page.locator("#action-status")).to_have_text("Caption “a wooden rowing boat” removed.")
    expect(page.get_by_role("button", name="Remove caption “a teal submarine periscope”")).to_be_focused()

    # The date taken: set, then cleared.
    page.locator("#taken-at").fill("2020-05-17T10:30")
    page.get_by_role("button", name="Set date").click()
    expect(page.locator("#taken")).to_contain_text("2020")
    assert served.client.get(f"/api/images/{image_id}").json()["taken_at"].startswith("2020-05-1")
    screenshot(page, "image-edited")
    page.get_by_role("button", name="Clear date").click()
    expect(page.locator("#taken")).to_have_text("unknown")
    expect(page.locator("#taken-at")).to_have_value("")

    # Search sees the edits at once: the new caption finds it, the removed one does not.
    page.goto("/?q=periscope&mode=text&meta=tag%20%3D%20canoe")
    expect(page.locator("#grid .card")).to_have_count(1)
    assert card_ids(page) == [image_id]
    page.goto("/?q=rowing&mode=text")
    expect(page.locator("#results .empty")).to_contain_text("No results")
    console.assert_clean()


def test_a_deleted_image_is_gone_from_search(page, served, mine, console):
    image_id = mine["delete"]
    page.goto("/?q=quokka&mode=text")
    expect(page.locator("#grid .card")).to_have_count(1)
    page.locator("#grid .card").first.click()
    expect(page).to_have_url(re.compile(rf"/images/{image_id}$"))

    # The confirm step: a modal dialog whose safe choice has the focus; Escape backs out.
    page.get_by_role("button", name="Delete image…").click()
    dialog = page.get_by_role("dialog", name=f"Delete image {image_id}?")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    screenshot(page, "image-delete-confirm")
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    expect(page.get_by_role("button", name="Delete image…")).to_be_focused()
    assert served.client.get(f"/api/images/{image_id}").status_code == 200

    page.get_by_role("button", name="Delete image…").click()
    dialog.get_by_role("button", name="Delete image").click()
    # Back to the search it came from, with a notice; the image is no longer found.
    expect(page).to_have_url(re.compile(r"/\?q=quokka&mode=text$"))
    expect(page.locator("#deleted-notice")).to_have_text(f"Image {image_id} was deleted.")
    expect(page.locator("#results .empty")).to_contain_text("No results")
    assert served.client.get(f"/api/images/{image_id}").status_code == 404
    console.assert_clean()


def test_a_write_to_a_server_with_keys_asks_for_the_key(keyed_page, served, mine, tmp_path, console):
    page = keyed_page
    image_id = mine["keyed"]
    console.allow("status of 401")  # the browser logs each refused request itself
    page.goto(f"/images/{image_id}")
    expect(page.get_by_role("button", name="Set API key")).to_be_visible()

    # No key yet: the write is refused, the page asks (focus in the key field) and retries.
    page.get_by_label("New caption").fill("a lantern in the rain")
    page.get_by_role("button", name="Add caption").click()
    dialog = page.get_by_role("dialog", name="API key needed")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("send Authorization: Bearer")  # the API's own reason
    expect(dialog.get_by_label("API key")).to_be_focused()
    screenshot(page, "api-key-dialog")
    page.keyboard.type("not-the-key")
    page.keyboard.press("Enter")
    expect(dialog).to_have_count(0)
    error = page.locator("#edit-error .error")
    expect(error).to_contain_text("the API key is not valid")
    expect(error).to_have_attribute("role", "alert")
    assert page.evaluate("localStorage.getItem('pgclip-api-key')") is None  # a refused key is not kept
    assert len(served.client.get(f"/api/images/{image_id}").json()["captions"]) == 1

    # Again, with the right key: the caption is added and the key kept for the next write.
    page.get_by_role("button", name="Add caption").click()
    dialog.get_by_label("API key").fill(API_KEY)
    dialog.get_by_role("button", name="Use this key").click()
    expect(page.locator("#captions li")).to_have_count(2)
    expect(page.locator("#edit-error")).to_be_empty()
    assert page.evaluate("localStorage.getItem('pgclip-api-key')") == API_KEY
    page.get_by_role("button", name="Remove caption “a lantern in the rain”").click()  # no dialog now
    expect(page.locator("#captions li")).to_have_count(1)
    expect(dialog).to_have_count(0)

    # The upload page sends the kept key too.
    picture = tmp_path / "kite.jpg"
    picture.write_bytes(jpeg_bytes(6104, (120, 90)))
    page.goto("/upload")
    page.locator("#files").set_input_files(str(picture))
    page.get_by_role("button", name="Upload").click()
    item = page.locator("#uploads li").first
    expect(item).to_contain_text("added")
    uploaded = int(item.get_attribute("data-id"))
    try:
        expect(dialog).to_have_count(0)
        expect(item.locator(".badge")).to_have_text("embedded", timeout=30_000)  # before it is deleted again
    finally:
        served.client.delete(f"/api/images/{uploaded}")

    # Forgetting the key: the next write asks again; cancelling shows why it was refused.
    page.goto(f"/images/{image_id}")
    page.get_by_role("button", name="Forget API key").click()
    expect(page.get_by_role("button", name="Set API key")).to_be_focused()
    expect(page.locator("#key-status")).to_have_text("API key forgotten.")
    assert page.evaluate("localStorage.getItem('pgclip-api-key')") is None
    page.get_by_label("New caption").fill("another lantern")
    page.get_by_label("New caption").press("Enter")
    expect(dialog).to_be_visible()
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    expect(page.locator("#edit-error .error")).to_contain_text("send Authorization: Bearer")
    expect(page.get_by_label("New caption")).to_be_focused()
    assert len(served.client.get(f"/api/images/{image_id}").json()["captions"]) == 1
    console.assert_clean()


def test_the_duplicates_page_groups_a_resized_copy(page, served, mine, console):
    probe = served.client.get("/api/duplicates", params={"threshold": 0.99})
    assert probe.status_code == 200, probe.text
    pair = sorted([mine["original"], mine["copy"]])
    page.goto("/")
    page.get_by_role("navigation", name="Pages").get_by_role("link", name="Duplicates").click()
    expect(page).to_have_url(re.compile(r"/duplicates$"))
    expect(page.get_by_role("link", name="Duplicates")).to_have_attribute("aria-current", "page")
    expect(page).to_have_title("Near-duplicates ≥ 0.95 · pgclip")
    expect(page.locator("#threshold")).to_have_value("0.95")
    # The test model finds most pictures alike at 0.95; the copy is among them.
    expect(page.locator(f'.dup-thumb[data-id="{mine["copy"]}"]')).to_have_count(1)

    # Stricter, typed in: the picture and its resized copy are a group of their own.
    page.locator("#threshold").fill("0.99")
    page.locator("#threshold").press("Enter")
    expect(page).to_have_url(re.compile(r"/duplicates\?threshold=0\.99$"))
    expect(page).to_have_title("Near-duplicates ≥ 0.99 · pgclip")
    group = page.locator(".dup-group").filter(has=page.locator(f'.dup-thumb[data-id="{mine["copy"]}"]'))
    expect(group).to_have_count(1)
    expect(group).to_have_attribute("data-ids", ",".join(map(str, pair)))
    expect(group.locator(".dup-sim")).to_have_text(re.compile(r"^similarity (0\.99\d|1\.000)$"))
    expect(group.locator(f'.dup-thumb[data-id="{mine["copy"]}"] .dup-facts')).to_contain_text("100×75 JPEG")
    expect(group.locator(f'.dup-thumb[data-id="{mine["original"]}"] .dup-facts')).to_contain_text("200×150 JPEG")
    page.wait_for_function("ids => ids.every(id => { const i = document.querySelector(`.dup-thumb[data-id='${id}'] img`);"
                           " return i && i.complete && i.naturalWidth > 0; })", arg=pair)
    screenshot(page, "duplicates")

    # By keyboard: the slider's End key goes to 1.00, and the URL follows.
    page.locator("#threshold-range").focus()
    page.keyboard.press("End")
    expect(page).to_have_url(re.compile(r"/duplicates\?threshold=1\.00$"))
    expect(page.locator("#threshold")).to_have_value("1.00")
    expect(page.locator("#dup-root .empty")).to_contain_text("No near-duplicates at this threshold")

    # A threshold the API refuses shows its reason; a link with a threshold restores it.
    console.allow("status of 400")
    page.locator("#threshold").fill("0.3")
    page.locator("#threshold").press("Enter")
    expect(page.locator("#dup-root .error")).to_contain_text("threshold")
    page.goto("/duplicates?threshold=0.99")
    expect(page.locator("#threshold-range")).to_have_value("0.99")
    link = page.locator(f'.dup-thumb[data-id="{mine["original"]}"]')
    link.focus()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(rf"/images/{mine['original']}$"))
    console.assert_clean()


def test_an_image_link_that_is_no_id_is_the_image_page_saying_so(page, console):
    console.allow("status of 404")
    for path in ("/images/abc", "/images/1.5"):
        page.goto(path)  # was Litestar's raw JSON 404
        expect(page.locator("#main .error")).to_contain_text("is not an image id")
        expect(page).to_have_title("Image not found · pgclip")
    page.goto("/images/999999")
    expect(page.locator("#main .error")).to_contain_text("no image with id 999999")
    console.assert_clean()


def test_the_duplicates_threshold_reaches_down_to_what_the_api_takes(page, console):
    page.goto("/duplicates?threshold=0.5")
    expect(page.locator("#threshold")).to_have_value("0.50")
    expect(page.locator("#threshold-range")).to_have_value("0.5")  # it stopped at 0.8
    console.assert_clean()


def _page_width(page) -> int:
    return page.evaluate("document.documentElement.scrollWidth")


def test_no_page_grows_wider_than_the_window(page, served, console):
    """Sideways scrolling found by a new-user pass: the header on a phone, a 10,000-character
    caption on the image page, a large duplicates group."""
    image_id = _upload(served.client, "wide.jpg", jpeg_bytes(6104, (160, 120)), ["x" * 10_000])
    try:
        for width in (1280, 375):
            page.set_viewport_size({"width": width, "height": 800})
            for path in ("/", f"/images/{image_id}", "/duplicates?threshold=0.5", "/status"):
                page.goto(path)
                page.wait_for_load_state("networkidle")
                assert _page_width(page) <= width, (path, width, _page_width(page))
        page.set_viewport_size({"width": 1280, "height": 800})
        page.goto(f"/images/{image_id}")
        expect(page.locator(".remove-caption")).to_be_in_viewport()  # the long caption's Remove button
    finally:
        assert served.client.delete(f"/api/images/{image_id}").status_code == 204
    console.assert_clean()
