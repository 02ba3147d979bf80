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
