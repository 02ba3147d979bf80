"""``pgclip serve`` over real HTTP, on a collection ingested and embedded by the real CLI."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.acceptance.test_cli_db import run
from tests.images import jpeg_bytes, write_jpegs
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(databases, tmp_path_factory):
    """(base URL, env, ids by file name) of a server over 12 embedded images with captions."""
    tmp = tmp_path_factory.mktemp("api")
    db_url = databases.clone_template()
    port = free_port()
    env = {"PGCLIP_DATABASE_URL": db_url, "PGCLIP_DATA_DIR": str(tmp / "data"), "PGCLIP_MODEL": "test-tiny",
           "PGCLIP_PORT": str(port), "PGCLIP_UPLOAD_MAX_BYTES": "2000000"}
    photos = write_jpegs(tmp / "photos", 12, size=(160, 120))
    (tmp / "photos" / "tall.jpg").write_bytes(jpeg_bytes(99, (60, 140)))
    manifest = tmp / "captions.jsonl"
    manifest.write_text("\n".join(json.dumps(row) for row in [
        {"path": "photos/img0000.jpg", "captions": ["a brown dog on a sofa"], "metadata": {"tag": "animal"}},
        {"path": "photos/img0001.jpg", "captions": ["a dog running on the beach"], "metadata": {"tag": "animal"}},
        {"path": "photos/img0002.jpg", "captions": ["a bowl of soup"], "metadata": {"tag": "food"}},
    ]) + "\n")
    run("ingest", str(tmp / "photos"), "--captions", str(manifest), env=env, check=True)
    run("worker", "--until-empty", env=env, check=True, timeout=300)
    proc, url = start_server(env, port)
    with httpx.Client(base_url=url, timeout=30) as client:
        ids = {Path(r["source"]).name: r["id"] for r in client.post("/api/search", json={"caption_query": "dog soup", "k": 3}).json()["results"]}
        listing = client.post("/api/search", json={"vector": [1.0] * 64, "k": 100}).json()["results"]
        ids.update({Path(r["source"]).name: r["id"] for r in listing})
        yield client, env, ids, photos
    proc.terminate()
    proc.wait(timeout=10)
    databases.drop(db_url)


def start_server(env: dict[str, str], port: int) -> tuple[subprocess.Popen, str]:
    """Start `pgclip serve` and wait until /readyz answers 200."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}
    proc = subprocess.Popen([sys.executable, "-m", "pgclip.cli", "serve"], env={**base, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _ready(url), 90, interval=0.2, what="pgclip serve coming up", processes=[proc])
    return proc, url


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    text = json.dumps(body)
    for fragment in fragments:
        assert fragment in text, text


def test_text_search_answers_with_the_model_and_explained_scores(served):
    client, _, ids, _ = served
    body = client.post("/api/search", json={"text": "a dog", "k": 5}).json()
    assert body["model"] == "test-tiny"
    assert len(body["results"]) == 5
    for r in body["results"]:
        assert r["similarity"] is not None and r["vector_rank"] is not None
        assert r["thumbnail_url"] == f"/api/images/{r['id']}/thumbnail"


def test_hybrid_search_finds_captions_and_explains_both_ranks(served):
    client, _, ids, _ = served
    body = client.post("/api/search", json={"text": "dog", "caption_query": "dog", "k": 13}).json()
    by_id = {r["id"]: r for r in body["results"]}
    dog = by_id[ids["img0000.jpg"]]
    assert dog["text_rank_position"] is not None and dog["vector_rank"] is not None
    assert dog["score"] == pytest.approx(1 / (60 + dog["vector_rank"]) + 1 / (60 + dog["text_rank_position"]))


def test_filters_narrow_the_results(served):
    client, _, ids, _ = served
    animals = client.post("/api/search", json={"text": "x", "k": 20, "filters": {"metadata": {"tag": "animal"}}}).json()
    assert {r["id"] for r in animals["results"]} == {ids["img0000.jpg"], ids["img0001.jpg"]}
    portrait = client.post("/api/search", json={"text": "x", "filters": {"orientation": "portrait"}}).json()
    assert [r["id"] for r in portrait["results"]] == [ids["tall.jpg"]]


def test_searching_by_an_uploaded_image_finds_that_image_first(served):
    client, _, ids, photos = served
    response = client.post("/api/search/image", files={"file": ("q.jpg", photos[5].read_bytes(), "image/jpeg")},
                           data={"options": json.dumps({"k": 3})})
    assert response.status_code == 200, response.text
    first = response.json()["results"][0]
    assert first["id"] == ids["img0005.jpg"]
    assert first["similarity"] == pytest.approx(1.0, abs=1e-4)


def test_more_like_this_excludes_the_image_itself(served):
    client, _, ids, _ = served
    body = client.get(f"/api/images/{ids['img0003.jpg']}/similar", params={"k": 4}).json()
    assert len(body["results"]) == 4 and ids["img0003.jpg"] not in {r["id"] for r in body["results"]}


def test_composed_queries_add_and_subtract_terms(served):
    client, _, ids, _ = served
    body = client.post("/api/search", json={"text": f"#{ids['img0004.jpg']} + 0.1:dog", "k": 1}).json()
    assert body["results"][0]["id"] == ids["img0004.jpg"]
    assert_error(client.post("/api/search", json={"text": "dog + ./etc/passwd.jpg"}), 400, "CLI only")


def test_paging_walks_every_result_once(served):
    client, _, _, _ = served
    seen, cursor = [], None
    while True:
        body = client.post("/api/search", json={"text": "photo", "k": 4, "cursor": cursor}).json()
        seen += [r["id"] for r in body["results"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    everything = [r["id"] for r in client.post("/api/search", json={"text": "photo", "k": 100}).json()["results"]]
    assert seen == everything and len(seen) == 13


def test_image_detail_thumbnail_and_original(served):
    client, _, ids, photos = served
    image_id = ids["img0002.jpg"]
    detail = client.get(f"/api/images/{image_id}").json()
    assert detail["captions"] == [{"id": detail["captions"][0]["id"], "text": "a bowl of soup"}]
    assert (detail["embedded"], detail["queue_state"], detail["model"]) == (True, "done", "test-tiny")
    thumb = client.get(f"/api/images/{image_id}/thumbnail")
    assert thumb.headers["content-type"] == "image/webp" and thumb.content[:4] == b"RIFF"
    original = client.get(f"/api/images/{image_id}/original")
    assert original.content == photos[2].read_bytes()
    assert original.headers["content-type"] == "image/jpeg"


def test_upload_queues_a_new_image_and_recognises_a_known_one(served):
    client, _, ids, photos = served
    fresh = jpeg_bytes(12345, (80, 80))
    response = client.post("/api/images", files={"file": ("new.jpg", fresh, "image/jpeg")},
                           data={"captions": json.dumps(["a new picture"]), "metadata": json.dumps({"tag": "upload"})})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["created"] is True and body["queue_state"] == "pending"
    again = client.post("/api/images", files={"file": ("copy.jpg", photos[0].read_bytes(), "image/jpeg")}).json()
    assert again["id"] == ids["img0000.jpg"] and again["created"] is False
    detail = client.get(f"/api/images/{body['id']}").json()
    assert detail["metadata"]["tag"] == "upload" and detail["captions"][0]["text"] == "a new picture"
    status = client.get("/api/status").json()
    assert status["models"][0]["counts"]["pending"] >= 1
    # One caption needs no list: as plain text, or as a JSON string (its text, not its quotes).
    for n, (sent, stored) in enumerate([("a cat, asleep", "a cat, asleep"), ('"a red \\"kite\\""', 'a red "kite"')]):
        one = client.post("/api/images", files={"file": (f"one{n}.jpg", jpeg_bytes(777 + n, (80, 80)), "image/jpeg")},
                          data={"captions": sent}).json()
        assert [c["text"] for c in client.get(f"/api/images/{one['id']}").json()["captions"]] == [stored]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "fragment"),
    [
        ("post", "/api/search", {"json": {"text": "dog", "colour": "red"}}, 400, "colour"),
        ("post", "/api/search", {"json": {"text": "dog", "k": 0}}, 400, "k"),
        ("post", "/api/search", {"json": {"text": "dog", "k": "ten"}}, 400, "k"),
        ("post", "/api/search", {"json": {"text": "dog", "filters": {"orientation": "round"}}}, 400, "orientation"),
        ("post", "/api/search", {"json": {"caption_query": "dog", "filters": {"min_width": -3}}}, 400, "min_width"),
        ("post", "/api/search", {"json": {}}, 400, "give a text"),
        ("post", "/api/search", {"json": {"vector": [0.0] * 64}}, 400, "vector"),
        ("post", "/api/search", {"json": {"vector": [1.0] * 3}}, 400, "dimensions"),
        ("post", "/api/search", {"json": {"vector": [1e39] * 64}}, 400, "within float32's range"),
        ("post", "/api/search", {"json": {"text": "dog", "cursor": "garbage!"}}, 400, "cursor"),
        ("post", "/api/search", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, ""),
        ("get", "/api/images/999999", {}, 404, "no image"),
        ("get", "/api/duplicates", {"params": {"threshold": 2}}, 400, "threshold"),
        ("get", "/api/images/999999/similar", {}, 404, "no image"),
        ("get", "/api/images/1/similar", {"params": {"filters": "{oops"}}, 400, "filters"),
        ("get", "/api/images/1/similar", {"params": {"filters": '{"colour": 1}'}}, 400, "colour"),
        ("get", "/api/images/abc", {}, 404, ""),
        ("post", "/api/images", {"files": {"file": ("x.jpg", b"not an image at all", "image/jpeg")}}, 400, "not a usable image"),
        ("post", "/api/images", {"files": {"file": ("x.jpg", b"", "image/jpeg")}}, 400, "empty"),
        ("post", "/api/images", {"data": {"captions": "x"}}, 400, "multipart"),
        ("post", "/api/search/image", {"files": {"file": ("x.png", b"\x89PNG garbage", "image/png")}}, 400, "image"),
        # a binary part without a filename (found by schemathesis: Litestar decodes it as text)
        ("post", "/api/search/image", {"files": {"file": (None, b"\x89PNG\r\n\x1a\n\xff\xfe")}}, 400, "file parts"),
        ("post", "/api/search/image", {"files": {"file": ("x.jpg", jpeg_bytes(1)), }, "data": {"options": "{\"k\": 500}"}}, 400, "options"),
        # What a new-user pass found: messages that named nothing the user sent, or the wrong thing.
        ("post", "/api/search", {"content": b"", "headers": {"content-type": "application/json"}}, 400,
         "the request body is empty: send a JSON object"),
        ("post", "/api/search", {"content": b"null", "headers": {"content-type": "application/json"}}, 400,
         "the request body must be a JSON object, not null"),
        ("post", "/api/search", {"json": {"text": "1e308:dog"}}, 400, "weight 1e308 in '1e308:dog' is outside"),
        ("post", "/api/images", {"files": {"file": ("x" * 5000 + ".jpg", jpeg_bytes(1), "image/jpeg")}}, 400,
         "a file name of thousands of characters"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_problem(served, method, path, kwargs, status, fragment):
    client = served[0]
    assert_error(getattr(client, method)(path, **kwargs), status, fragment)


def test_an_upload_over_the_size_limit_is_refused(served):
    client = served[0]
    big = io.BytesIO(b"\xff" * 2_500_000)
    assert_error(client.post("/api/images", files={"file": ("big.jpg", big, "image/jpeg")}), 413, "")
    # A search by a picture that large: the limit named (it said only "Request Entity Too Large").
    big.seek(0)
    assert_error(client.post("/api/search/image", files={"file": ("big.jpg", big, "image/jpeg")}), 413,
                 "the request is too large: at most 2,000,000 bytes on this route (PGCLIP_UPLOAD_MAX_BYTES)")


def test_sigterm_stops_serve_though_a_client_stalls_a_request(served):
    """A client that never finishes sending its request (or stops reading a download) kept
    `pgclip serve` running after SIGTERM, forever; in-flight requests now get a grace period."""
    import signal

    env, port = served[1], free_port()
    proc, url = start_server({**env, "PGCLIP_PORT": str(port)}, port)
    with socket.create_connection(("127.0.0.1", port)) as stalled:
        stalled.sendall(b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 1000\r\n\r\n{\"text\": ")
        # Answered after the stalled bytes arrived: the server's one event loop has taken them in.
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("pgclip serve was still running 60 s after SIGTERM") from None
    assert proc.returncode in (0, -signal.SIGTERM), output  # uvicorn re-raises the signal once shut down
    assert "Traceback" not in output, output
    assert "timeout graceful shutdown exceeded" in output  # one line says the stalled request was cancelled


def test_metrics_say_their_charset_once(served):
    content_type = served[0].get("/metrics").headers["content-type"]
    assert content_type.count("charset") == 1, content_type


def test_a_vector_near_float32s_limit_searches_as_its_direction(served):
    """Only its direction counts: [1e38] * 64 is [1.0] * 64 (its norm overflowed float32 before)."""
    client = served[0]
    answers = [client.post("/api/search", json={"vector": [scale] * 64, "k": 5}) for scale in (1.0, 1e38)]
    assert [a.status_code for a in answers] == [200, 200], answers[1].text
    assert [r["id"] for r in answers[0].json()["results"]] == [r["id"] for r in answers[1].json()["results"]]


def test_health_readiness_and_schema(served):
    client = served[0]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    schema = client.get("/schema/openapi.json").json()
    assert {"/api/search", "/api/search/image", "/api/images/{image_id}", "/api/images/{image_id}/similar",
            "/api/images", "/api/status"} <= set(schema["paths"])
    # Read-your-writes (README "Read replicas") is in the schema too: the token a write answers
    # with, the header a read sends it back in, and who answered.
    search = schema["paths"]["/api/search"]["post"]
    assert {"X-Pgclip-Served-By", "X-Pgclip-Lsn"} <= set(search["responses"]["200"]["headers"])
    assert any(p["name"] == "X-Pgclip-Min-Lsn" and p["in"] == "header" for p in search["parameters"])


def test_near_duplicates_find_a_resized_copy(served, tmp_path):
    client, _, ids, photos = served
    from PIL import Image

    copy = tmp_path / "copy.jpg"
    Image.open(photos[7]).resize((80, 60)).save(copy, quality=70)
    uploaded = client.post("/api/images", files={"file": ("copy.jpg", copy.read_bytes(), "image/jpeg")}).json()
    run("worker", "--until-empty", env=served[1], check=True, timeout=300)
    body = client.get("/api/duplicates", params={"threshold": 0.9}).json()
    assert body["model"] == "test-tiny"
    assert any({ids["img0007.jpg"], uploaded["id"]} <= set(g["ids"]) for g in body["groups"]), body
