"""Frames of videos on the page, in a real Chromium: search results say where in its video a
frame is, and a frame's image page plays the video from that moment, fetched with Range requests."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.acceptance.test_cli_db import run
from tests.browser.conftest import Console, _answers, _context, _pgclip, free_port, screenshot
from tests.videos import write_video
from tests.waiting import wait_for

sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package")
expect = sync_api.expect
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def video_site(databases, tmp_path_factory) -> Iterator[tuple[str, dict[str, int]]]:
    """``pgclip serve`` over one 12 s WebM ingested and embedded by the CLI: (URL, frame id by second)."""
    tmp = tmp_path_factory.mktemp("video-page")
    db_url = databases.clone_template()
    port = free_port()
    env = {"PGCLIP_DATABASE_URL": db_url, "PGCLIP_DATA_DIR": str(tmp / "data"), "PGCLIP_MODEL": "test-tiny",
           "PGCLIP_PORT": str(port)}
    write_video(tmp / "media", "cartoon.webm", 21, seconds=12, size=(160, 120), fps=8)
    run("ingest", str(tmp / "media"), env=env, check=True)
    run("worker", "--until-empty", env=env, check=True, timeout=300)
    server = _pgclip(["serve"], env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{url}/readyz"), 90, 0.2, "pgclip serve coming up", [server])
        import psycopg

        with psycopg.connect(db_url) as conn:
            frames = {int(ts): image_id for image_id, ts in conn.execute(
                "SELECT id, video_ts FROM pgclip.images WHERE video_id IS NOT NULL")}
        yield url, frames
    finally:
        server.terminate()
        server.wait(timeout=15)
        databases.drop(db_url)


@pytest.fixture
def video_page(browser, video_site, console: Console):
    context = _context(browser, video_site[0], console)
    yield context.new_page()
    context.close()


def test_search_results_show_each_frames_time_in_its_video(video_page, video_site, console):
    page = video_page
    page.goto("/?q=a%20cartoon&mode=vector")
    cards = page.locator("#grid .card.frame")
    expect(cards).to_have_count(3)
    times = sorted(cards.locator(".video-ts").all_inner_texts())
    assert times == ["▶ 0:00", "▶ 0:05", "▶ 0:10"]
    card = page.locator(f'#grid .card[data-id="{video_site[1][5]}"]')
    assert "cartoon.webm at 0:05" in card.get_attribute("aria-label")
    screenshot(page, "video-search-results")
    console.assert_clean()


def test_a_frames_page_plays_its_video_from_the_frames_time_with_range_requests(video_page, video_site, console):
    page = video_page
    ranges: list[tuple[int, str | None]] = []
    page.on("response", lambda r: ranges.append((r.status, r.request.headers.get("range")))
            if "/api/videos/" in r.url else None)
    page.goto(f"/images/{video_site[1][5]}")
    video = page.locator("#video")
    expect(video).to_be_visible()
    expect(page.locator("#video-note")).to_contain_text("Frame at 0:05 of cartoon.webm")
    expect(page.locator("#frame-of")).to_have_text("frame at 0:05 (5 s)")
    # The player is positioned at the frame's time once it knows the video (it has not played).
    page.wait_for_function("() => document.querySelector('#video').readyState >= 1")
    assert abs(video.evaluate("v => v.currentTime") - 5.0) < 0.3
    assert video.evaluate("v => v.duration") == pytest.approx(12.0, abs=0.3)
    page.locator("#play-from").click()
    page.wait_for_function("() => document.querySelector('#video').currentTime > 5.05")
    assert any(status == 206 and header and header.startswith("bytes=") for status, header in ranges), ranges
    screenshot(page, "video-frame-page")
    console.assert_clean()


def test_the_upload_page_takes_a_video_and_links_its_first_frame(video_page, tmp_path, console):
    # Last in this module: the upload adds frames the searches above do not expect.
    page = video_page
    clip = write_video(tmp_path, "upload.webm", 22, seconds=7, size=(96, 72))
    page.goto("/upload")
    page.locator("#files").set_input_files(str(clip))
    expect(page.locator("#drop-text")).to_contain_text("1 file chosen: upload.webm")
    page.get_by_role("button", name="Upload").click()
    item = page.locator("#uploads li").first
    expect(item).to_contain_text("upload.webm")
    expect(item).to_contain_text("frames · added")
    link = item.locator("a")
    expect(link).to_have_text(re.compile(r"^video \d+, 2 frames$"))
    link.click()
    expect(page.locator("#frame-of")).to_have_text("frame at 0:00 (0 s)")
    console.assert_clean()
