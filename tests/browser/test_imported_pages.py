"""Pages of images that came from `pgclip import`, which brings no bytes: the image page shows
the thumbnail and says why, and a frame's page says its video is not stored here (its own
server over a database filled by a real export and import)."""

from __future__ import annotations

import io

import numpy as np
import psycopg
import pytest
from PIL import Image

from tests.acceptance.test_api import free_port, start_server
from tests.browser.conftest import _context
from tests.conftest import make_settings
from tests.integration.test_exchange import add_video, fill

sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package")
expect = sync_api.expect

pytestmark = pytest.mark.slow


def _webp(seed: int) -> tuple[bytes, int, int]:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "WEBP")
    return out.getvalue(), 64, 48


@pytest.fixture
def imported(databases, tmp_path):
    """(base URL, a picture's id, a frame's id) on a server whose database holds only imported rows."""
    from pgclip.application.exchange import export_parquet, import_parquet
    from pgclip.db.engine import connect

    source, target = databases.clone_template(), databases.clone_template()
    proc = None
    try:
        with connect(source, role="test") as conn:
            ids = fill(conn, 2, unembedded=0)
            for image_id in ids:
                data, w, h = _webp(image_id)
                conn.execute("INSERT INTO pgclip.thumbnails (image_id, width, height, data) VALUES (%s, %s, %s, %s)"
                             " ON CONFLICT (image_id) DO UPDATE SET data = EXCLUDED.data, width = %s, height = %s",
                             [image_id, w, h, data, w, h])
            conn.commit()
            add_video(conn, {ids[1]: 4.0})
        export_parquet(source, tmp_path / "set")
        import_parquet(target, tmp_path / "set", make_settings(target, tmp_path))
        with psycopg.connect(target) as conn:
            picture = conn.execute("SELECT id FROM pgclip.images WHERE video_id IS NULL").fetchone()[0]
            frame = conn.execute("SELECT id FROM pgclip.images WHERE video_id IS NOT NULL").fetchone()[0]
        port = free_port()
        proc, url = start_server({"PGCLIP_DATABASE_URL": target, "PGCLIP_DATA_DIR": str(tmp_path / "data"),
                                  "PGCLIP_MODEL": "test-tiny", "PGCLIP_PORT": str(port)}, port)
        yield url, picture, frame
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        databases.drop(source)
        databases.drop(target)


def test_an_imported_image_and_frame_show_their_thumbnail_and_say_why(browser, imported, console):
    url, picture, frame = imported
    console.allow("404")  # the original's and the video's bytes are asked for, and are not there
    context = _context(browser, url, console)
    try:
        page = context.new_page()
        page.goto(f"/images/{picture}")
        expect(page.locator("#no-original")).to_contain_text("not stored in this database")
        expect(page.locator("#original")).to_have_attribute("src", f"/api/images/{picture}/thumbnail")
        assert page.locator("#original").evaluate("img => img.naturalWidth") == 64  # the thumbnail, drawn

        page.goto(f"/images/{frame}")
        expect(page.locator("#video-note")).to_contain_text("Frame at 0:04 of clip.mp4, whose bytes are not stored")
        still = page.locator(".frame-player img")
        expect(still).to_have_attribute("src", f"/api/images/{frame}/thumbnail")
    finally:
        context.close()
    console.assert_clean()
