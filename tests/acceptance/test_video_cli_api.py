"""Videos end to end with the real CLI and ``pgclip serve``: a video in the folder is searchable by
its frames, with their times, from ``pgclip search`` and the API; the API serves the video with
Range requests and takes video uploads."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.acceptance.test_api import assert_error, free_port, start_server
from tests.acceptance.test_cli_db import run
from tests.images import jpeg_bytes
from tests.videos import video_bytes, write_video

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def collection(databases, tmp_path_factory):
    """A folder with two videos, a photo and a damaged video, ingested and embedded by the CLI;
    (env, folder, what `pgclip ingest` printed)."""
    tmp = tmp_path_factory.mktemp("videos")
    db_url = databases.clone_template()
    port = free_port()
    env = {"PGCLIP_DATABASE_URL": db_url, "PGCLIP_DATA_DIR": str(tmp / "data"), "PGCLIP_MODEL": "test-tiny",
           "PGCLIP_PORT": str(port), "PGCLIP_UPLOAD_MAX_BYTES": "100000", "PGCLIP_VIDEO_UPLOAD_MAX_BYTES": "3000000"}
    folder = tmp / "media"
    write_video(folder, "cartoon.webm", 1, seconds=12)
    write_video(folder / "old", "home movie.mp4", 2, fmt="mp4", seconds=66)
    (folder / "photo.jpg").write_bytes(jpeg_bytes(3))
    (folder / "broken.mp4").write_bytes(video_bytes(4, fmt="mp4")[:3000])
    ingested = run("ingest", str(folder), env=env, timeout=300)
    run("worker", "--until-empty", env=env, check=True, timeout=300)
    yield env, folder, ingested, port
    databases.drop(db_url)


@pytest.fixture(scope="module")
def api(collection):
    env, _, _, port = collection
    proc, url = start_server(env, port)
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client
    proc.terminate()
    proc.wait(timeout=10)


def test_ingest_reports_the_videos_and_the_damaged_one_in_one_line(collection):
    _, folder, ingested, _ = collection
    assert ingested.returncode == 1  # one file rejected
    assert "added 1, already present 0" in ingested.stdout
    assert "videos: added 2 (17 frames), already present 0" in ingested.stdout  # 3 + 14 (0, 5, ... 65 s)
    assert f"rejected {folder / 'broken.mp4'}: not a video, or damaged (moov atom not found)" in ingested.stdout
    assert "Traceback" not in ingested.stderr


def test_pgclip_search_prints_each_frame_as_its_video_at_its_time(collection):
    env, folder, _, _ = collection
    found = run("search", "a cartoon", "-k", "50", env=env, check=True)
    lines = [line for line in found.stdout.splitlines() if re.match(r"\s*\d+\. #", line)]
    assert len(lines) == 18  # every frame and the photo
    assert any(line.endswith(f"{folder / 'cartoon.webm'} @ 0:05") for line in lines), found.stdout
    assert any(line.endswith(f"{folder / 'old' / 'home movie.mp4'} @ 1:05") for line in lines), found.stdout
    assert any(line.endswith(f"{folder / 'photo.jpg'}") for line in lines), found.stdout
    as_json = run("search", "a cartoon", "-k", "50", "--json", env=env, check=True)
    assert '"timestamp": 65.0' in as_json.stdout and '"mime": "video/webm"' in as_json.stdout


def test_the_api_returns_each_frames_video_and_time_and_serves_the_video_from_any_byte(api, collection):
    _, folder, _, _ = collection
    results = api.post("/api/search", json={"vector": [1.0] * 64, "k": 50}).json()["results"]
    frames = {(Path(r["video"]["source"]).name, r["video"]["timestamp"]): r for r in results if r["video"]}
    assert len(frames) == 17 and sum(1 for r in results if r["video"] is None) == 1
    frame = frames[("cartoon.webm", 10.0)]
    video = frame["video"]
    assert (video["mime"], video["duration_s"]) == ("video/webm", 12.0)
    detail = api.get(frame["url"]).json()
    assert detail["video"] == video  # the image page's answer names the same video and time
    assert api.get(video["url"].replace("/original", "")).json()["frames"] == 3
    original = (folder / "cartoon.webm").read_bytes()
    whole = api.get(video["url"])
    assert (whole.status_code, whole.headers["content-type"], whole.headers["accept-ranges"]) == (200, "video/webm", "bytes")
    assert whole.content == original
    part = api.get(video["url"], headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-1099/{len(original)}"
    assert part.content == original[100:1100]
    tail = api.get(video["url"], headers={"Range": "bytes=-16"})
    assert (tail.status_code, tail.content) == (206, original[-16:])
    past = api.get(video["url"], headers={"Range": f"bytes={len(original)}-"})
    assert_error(past, 416, "starts past the end")
    assert past.headers["content-range"] == f"bytes */{len(original)}"
    assert_error(api.get("/api/videos/999999/original"), 404, "no video with id 999999")


def test_a_video_uploaded_to_the_api_is_stored_with_its_frames_and_a_damaged_one_is_a_400(api):
    data = video_bytes(9, fmt="matroska", seconds=6)
    answer = api.post("/api/images", files={"file": ("clip.mkv", data, "video/x-matroska")},
                      data={"captions": '["a red balloon"]'})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["created"] and len(body["frame_ids"]) == 2 and body["video"]["source"] == "clip.mkv"
    frame = api.get(f"/api/images/{body['frame_ids'][1]}").json()
    assert (frame["video"]["timestamp"], frame["captions"][0]["text"], frame["queue_state"]) == (5.0, "a red balloon", "pending")
    again = api.post("/api/images", files={"file": ("same.mkv", data, "video/x-matroska")}).json()
    assert (again["created"], again["frame_ids"]) == (False, body["frame_ids"])
    cut = api.post("/api/images", files={"file": ("cut.webm", video_bytes(10, seconds=20)[:2500], "video/webm")})
    assert_error(cut, 400, "the upload is not a usable video")
    fake = api.post("/api/images", files={"file": ("fake.mp4", b"\x00" * 4000, "video/mp4")})
    assert_error(fake, 400, "not a video")
    # Videos may be larger than images (PGCLIP_VIDEO_UPLOAD_MAX_BYTES), images keep their limit.
    assert len(data) > 0 and api.post("/api/images", files={"file": ("big.jpg", b"\xff" * 200_000)}).status_code == 413
    too_big = api.post("/api/images", files={"file": ("huge.webm", b"\x1a\x45\xdf\xa3" + b"\x00" * 3_100_000)})
    assert too_big.status_code == 413
    assert api.delete(f"/api/videos/{body['video']['id']}").status_code == 204
    assert_error(api.get(f"/api/images/{body['frame_ids'][0]}"), 404, "no image")
