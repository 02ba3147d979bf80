"""Editing, deleting and who may write, through the API app on a real PostgreSQL."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from litestar.testing import TestClient

from pgclip.api.app import create_app
from pgclip.db.models import active_model
from tests.images import jpeg_bytes
from tests.integration.test_schema import add_image

KEY = "s3cret-key"


@pytest.fixture
def keyed_client(settings):
    with TestClient(create_app(dataclasses.replace(settings, api_keys=f"other-key,{KEY}"))) as client:
        yield client


@pytest.fixture
def image(conn):
    model = active_model(conn)
    image_id = add_image(conn, "edit.jpg", metadata={"tag": "cat", "camera_make": "Canon"})
    conn.execute("INSERT INTO pgclip.captions (image_id, text) VALUES (%s, 'a sleepy cat'), (%s, 'orange fur')",
                 [image_id, image_id])
    v = np.ones(model.dimension, dtype=np.float32) / np.sqrt(model.dimension)
    conn.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)", [image_id, model.id, v])
    conn.commit()
    return image_id


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_edits_show_at_once_in_search_and_leave_the_vector_alone(keyed_client, conn, image):
    before = conn.execute("SELECT ctid, xmin FROM pgclip.embeddings WHERE image_id = %s", [image]).fetchone()
    caption_ids = [c["id"] for c in keyed_client.get(f"/api/images/{image}").json()["captions"]]
    response = keyed_client.patch(f"/api/images/{image}", headers=AUTH, json={
        "metadata": {"tag": "dog"}, "unset_metadata": ["camera_make"], "taken_at": "2021-06-01T12:00:00Z",
        "captions_add": ["a dog in the garden"], "captions_remove": [caption_ids[0]],
    })
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["metadata"] == {"tag": "dog"}
    assert body["taken_at"].startswith("2021-06-01")
    assert [c["text"] for c in body["captions"]] == ["orange fur", "a dog in the garden"]
    found = keyed_client.post("/api/search", json={"caption_query": "garden", "filters": {"metadata": {"tag": "dog"}}}).json()
    assert [r["id"] for r in found["results"]] == [image]
    assert keyed_client.post("/api/search", json={"caption_query": "sleepy"}).json()["results"] == []
    conn.rollback()
    assert conn.execute("SELECT ctid, xmin FROM pgclip.embeddings WHERE image_id = %s", [image]).fetchone() == before


def test_replace_metadata_and_clear_the_date(keyed_client, image):
    body = keyed_client.patch(f"/api/images/{image}", headers=AUTH,
                              json={"metadata": {"x": 1}, "metadata_mode": "replace", "taken_at": None}).json()
    assert body["metadata"] == {"x": 1} and body["taken_at"] is None


def test_delete_removes_the_image_everywhere(keyed_client, conn, image):
    assert keyed_client.delete(f"/api/images/{image}", headers=AUTH).status_code == 204
    assert keyed_client.get(f"/api/images/{image}").status_code == 404
    assert keyed_client.delete(f"/api/images/{image}", headers=AUTH).status_code == 404
    assert keyed_client.post("/api/search", json={"caption_query": "cat"}).json()["results"] == []
    assert keyed_client.post("/api/search", json={"vector": [1.0] * 64}).json()["results"] == []
    conn.rollback()
    for table in ("captions", "embeddings", "images"):
        column = "id" if table == "images" else "image_id"
        assert conn.execute(f"SELECT count(*) FROM pgclip.{table} WHERE {column} = %s", [image]).fetchone()[0] == 0


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("patch", "/api/images/{id}", {"json": {"metadata": {"a": 1}}}),
        ("delete", "/api/images/{id}", {}),
        ("post", "/api/images", {"files": {"file": ("x.jpg", jpeg_bytes(1), "image/jpeg")}}),
        ("post", "/api/models/1/activate", {"json": {}}),
        ("post", "/api/models/1/index", {"json": {"ef_search": 50}}),
    ],
)
@pytest.mark.parametrize(("headers", "status"), [({}, 401), ({"Authorization": "Bearer wrong"}, 401),
                                                  ({"Authorization": "Basic " + KEY}, 401), (AUTH, None)])
def test_every_write_needs_a_valid_key(keyed_client, image, method, path, kwargs, headers, status):
    response = getattr(keyed_client, method)(path.format(id=image), headers=headers, **kwargs)
    if status is None:
        assert response.status_code in (200, 202, 204), response.text
    else:
        assert response.status_code == status
        assert "detail" in response.json()
        assert KEY not in response.text
        assert response.headers["www-authenticate"].startswith('Bearer realm="pgclip"')  # what to send


def test_an_index_rebuild_needs_no_body_as_an_activation_does(keyed_client, image):
    rebuilt = keyed_client.post("/api/models/1/index", headers=AUTH)
    assert rebuilt.status_code == 200 and rebuilt.json()["model"]["index"]["kind"] == "hnsw", rebuilt.text


def test_reads_stay_open_without_a_key(keyed_client, image):
    assert keyed_client.get(f"/api/images/{image}").status_code == 200
    assert keyed_client.post("/api/search", json={"caption_query": "cat"}).status_code == 200


def test_without_keys_writes_are_refused_off_loopback(settings, image):
    # TestClient's server address is "testserver", not a loopback address.
    with TestClient(create_app(settings)) as client:
        response = client.delete(f"/api/images/{image}")
    assert response.status_code == 401 and "PGCLIP_API_KEYS" in response.json()["detail"]


def test_bad_edits_are_4xx(keyed_client, image):
    assert keyed_client.patch(f"/api/images/{image}", headers=AUTH, json={"colour": "red"}).status_code == 400
    assert keyed_client.patch(f"/api/images/{image}", headers=AUTH, json={"captions_remove": [999999]}).status_code == 404
    assert keyed_client.patch("/api/images/999999", headers=AUTH, json={"metadata": {}}).status_code == 404
    assert keyed_client.patch(f"/api/images/{image}", headers=AUTH, json={"taken_at": "yesterday"}).status_code == 400


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00", "20240101", 20240101,
                                  "2024-02-30", "12/25/2024"])
def test_a_time_no_client_could_read_back_or_not_iso_8601_is_400_and_nothing_changes(keyed_client, image, when):
    """Year 10000 in UTC was stored, and from then on the image and every search holding it were a 500."""
    keyed_client.patch(f"/api/images/{image}", headers=AUTH, json={"taken_at": "2021-06-01T12:00:00Z"})
    refused = keyed_client.patch(f"/api/images/{image}", headers=AUTH, json={"taken_at": when})
    assert refused.status_code == 400 and "taken_at" in refused.json()["detail"], refused.text
    shown = keyed_client.get(f"/api/images/{image}")
    assert shown.status_code == 200 and shown.json()["taken_at"].startswith("2021-06-01T12:00:00")
    assert keyed_client.post("/api/search", json={"caption_query": "cat", "order": "newest"}).status_code == 200


def test_a_date_alone_is_a_time_for_edits_and_filters(keyed_client, image):
    edited = keyed_client.patch(f"/api/images/{image}", headers=AUTH, json={"taken_at": "2024-05-01"})
    assert edited.status_code == 200 and edited.json()["taken_at"].startswith("2024-05-01T00:00:00"), edited.text

    def found(**filters) -> list[int] | int:
        r = keyed_client.post("/api/search", json={"caption_query": "cat", "filters": filters})
        return [hit["id"] for hit in r.json()["results"]] if r.status_code == 200 else r.status_code

    assert found(taken_after="2024-05-01") == [image] and found(taken_before="2024-05-01") == []
    assert found(taken_after="2024-04-30T23:00:00-02:00") == []  # 2024-05-01 01:00 UTC
    # Never a number: 20240101 is not 1970-08-23 (msgspec's lax reading of seconds since 1970).
    assert found(taken_before=20240101) == found(taken_before="20240101") == found(taken_after="yesterday") == 400


def test_an_original_edited_in_its_synced_folder_is_never_served_stale_from_a_cache(keyed_client, db_url, tmp_path):
    """`pgclip sync` gives an edited file's image its new bytes under the same id: the original
    is revalidated (ETag: its sha256; 304 while unchanged), not cached as immutable for a year."""
    import hashlib

    from tests.integration.test_sync import image_of, run_sync

    folder = tmp_path / "synced"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg_bytes(1))
    run_sync(db_url, folder)
    image_id = image_of(db_url, folder / "a.jpg")
    first = keyed_client.get(f"/api/images/{image_id}/original")
    assert first.status_code == 200 and first.content == jpeg_bytes(1)
    assert first.headers["etag"] == f'"{hashlib.sha256(jpeg_bytes(1)).hexdigest()}"'
    assert "immutable" not in first.headers["cache-control"] and "no-cache" in first.headers["cache-control"]
    same = keyed_client.get(f"/api/images/{image_id}/original", headers={"If-None-Match": first.headers["etag"]})
    assert same.status_code == 304 and same.content == b""

    (folder / "a.jpg").write_bytes(jpeg_bytes(2, (90, 60)))
    run_sync(db_url, folder)
    assert image_of(db_url, folder / "a.jpg") == image_id  # the same image, new bytes
    again = keyed_client.get(f"/api/images/{image_id}/original", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 200 and again.content == jpeg_bytes(2, (90, 60))
    assert again.headers["etag"] != first.headers["etag"]


def test_models_and_their_indexes_over_http(keyed_client, image):
    models = keyed_client.get("/api/models").json()  # a read: no key needed
    assert [(m["name"], m["state"], m["vectors"], m["images"]) for m in models] == [("test-tiny", "active", 1, 1)]
    index = models[0]["index"]
    assert index["kind"] == "hnsw" and index["size_bytes"] > 0
    # The graph as built, chosen by the collection's size (nobody fixed it), and not outgrown.
    assert (index["params"]["m"], index["params"]["ef_construction"]) == (16, 64)
    assert (index["by_size"], index["outgrown"]) == (["m", "ef_construction"], None)
    model_id = models[0]["id"]

    rebuilt = keyed_client.post(f"/api/models/{model_id}/index", json={"halfvec": True, "m": 8}, headers=AUTH)
    assert rebuilt.status_code == 200, rebuilt.text
    body = rebuilt.json()
    assert body["built"] is True
    assert (body["model"]["index"]["storage"], body["model"]["index"]["params"]["m"]) == ("halfvec", 8)
    assert body["model"]["index"]["by_size"] == ["ef_construction"]  # m is fixed now
    assert keyed_client.post("/api/search", json={"vector": [1.0] * 64}).json()["results"][0]["id"] == image
    back = keyed_client.post(f"/api/models/{model_id}/index", json={"by_size": True}, headers=AUTH).json()
    assert (back["built"], back["model"]["index"]["params"]["m"], back["model"]["index"]["by_size"]) == (
        True, 16, ["m", "ef_construction"])

    bad = keyed_client.post(f"/api/models/{model_id}/index", json={"kind": "none", "m": 8}, headers=AUTH)
    assert bad.status_code == 400 and "m does not apply to kind none" in bad.json()["detail"]
    unknown = keyed_client.post(f"/api/models/{model_id}/index", json={"kind": "btree"}, headers=AUTH)
    assert unknown.status_code == 400
    assert keyed_client.post("/api/models/999/index", json={}, headers=AUTH).status_code == 404

    again = keyed_client.post(f"/api/models/{model_id}/activate", headers=AUTH).json()
    assert (again["active"]["state"], again["previous"]) == ("active", None)


def test_activating_a_model_without_vectors_is_refused_unless_forced(keyed_client, conn, image):
    from pgclip.db.models import ensure_model

    other = ensure_model(conn, "test-tiny-alt", "random-seed-0", 48)  # registered, building, no vectors
    refused = keyed_client.post(f"/api/models/{other.id}/activate", json={}, headers=AUTH)
    assert refused.status_code == 409
    assert "0 of 1 images" in refused.json()["detail"] and "--force" in refused.json()["detail"]
    forced = keyed_client.post(f"/api/models/{other.id}/activate", json={"force": True}, headers=AUTH)
    assert forced.status_code == 200, forced.text
    assert forced.json()["previous"].startswith("test-tiny ")
    assert [m["state"] for m in keyed_client.get("/api/models").json()] == ["retired", "active"]


def test_a_caption_or_vector_search_answers_while_the_active_models_weights_cannot_load(keyed_client, conn, image):
    """The active model's checkpoint is not on this API's machine: a text search cannot be
    encoded (409, saying what to set), but a caption query or a raw vector needs no model at all."""
    from pgclip.db.models import ensure_model

    elsewhere = ensure_model(conn, "ViT-B-32", "sha256:" + "ab" * 32, 512)
    conn.execute("UPDATE pgclip.models SET state = CASE WHEN id = %s THEN 'active' ELSE 'retired' END", [elsewhere.id])
    v = np.ones(512, dtype=np.float32) / np.sqrt(512)
    conn.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)",
                 [image, elsewhere.id, v])
    conn.commit()
    text = keyed_client.post("/api/search", json={"text": "a cat"})
    assert text.status_code == 409, text.text
    assert "set PGCLIP_MODEL=ViT-B-32 and PGCLIP_PRETRAINED to the checkpoint it was registered with" \
        in text.json()["detail"] and "this process runs test-tiny" in text.json()["detail"], text.text
    caption = keyed_client.post("/api/search", json={"caption_query": "sleepy"})
    assert caption.status_code == 200 and [r["id"] for r in caption.json()["results"]] == [image], caption.text
    vector = keyed_client.post("/api/search", json={"vector": [1.0] * 512})
    assert vector.status_code == 200 and [r["id"] for r in vector.json()["results"]] == [image], vector.text
