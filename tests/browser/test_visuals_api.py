"""The JSON behind the map and the heat-map (``GET /api/map``, ``GET /api/similarity``), the heat-map PNG of
``pgclip heatmap``, and (one test) the page drawing images x texts."""

from __future__ import annotations

import json

import numpy as np
import psycopg
import pytest

from pgclip.api.pages import SIMILARITY_MAX_IDS, parse_ids
from pgclip.application.atlas import LEGEND_MAX, LegendEntry, legend_of, pca_2d
from pgclip.core.errors import InvalidInput
from tests.browser.conftest import _queue_empty
from tests.waiting import wait_for


def test_pca_puts_the_widest_spread_on_x_and_is_deterministic():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(500, 8)) * np.array([10.0, 3.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    coords = pca_2d(data.astype(np.float32))
    assert coords.shape == (500, 2)
    assert coords[:, 0].std() == pytest.approx(10.0, rel=0.1) and coords[:, 1].std() == pytest.approx(3.0, rel=0.1)
    assert np.array_equal(coords, pca_2d(data.astype(np.float32)))
    # The sign is pinned: the same data, flipped, gives the same picture up to that flip's effect.
    assert np.allclose(np.abs(pca_2d(-data)), np.abs(coords), atol=1e-6)
    assert pca_2d(np.ones((1, 8))).tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("3,1,2", [3, 1, 2]), (" 4 , 4,5 ", [4, 5]), ("7,", [7])],
)
def test_ids_parse_in_order_without_repeats(raw, expected):
    assert parse_ids(raw) == expected


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [("", "give 1 to 25"), ("1,x", "'x' is not an image id"), ("0", "'0' is not"), ("-3", "'-3' is not"),
     (",".join(map(str, range(1, SIMILARITY_MAX_IDS + 2))), "at most 25")],
)
def test_bad_ids_are_refused_with_the_reason(raw, fragment):
    with pytest.raises(InvalidInput, match=fragment):
        parse_ids(raw)


def test_the_legend_names_the_twelve_commonest_values_and_counts_the_rest():
    values = [f"v{i:02d}" for i in range(15) for _ in range(20 - i)] + [None] * 3
    legend, other = legend_of(values)
    assert len(legend) == LEGEND_MAX and legend[0].value == "v00" and legend[0].count == 20
    assert [e.count for e in legend] == sorted((e.count for e in legend), reverse=True)
    assert other == len(values) - sum(e.count for e in legend) == 8 + 7 + 6 + 3  # v12, v13, v14 and 3 without a value
    assert legend_of(["a", None, None]) == ([LegendEntry(None, 2), LegendEntry("a", 1)], 0)


@pytest.mark.slow
def test_the_map_has_one_point_per_vector_and_is_stable(served):
    client = served.client
    first = client.get("/api/map")
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["projection"] == body["method"] == "pca" and body["model"] == "test-tiny" and body["note"] is None
    points = body["points"]
    embedded = {i for name, i in served.ids.items() if name != "broken.jpg"}
    assert {p["id"] for p in points} >= embedded and served.ids["broken.jpg"] not in {p["id"] for p in points}
    assert body["total"] == len(points)
    assert all(isinstance(p["x"], float) and isinstance(p["y"], float) and "value" not in p for p in points)
    assert "tag" in body["keys"] and body["legend"] is None
    assert client.get("/api/map").json() == body  # cached, and the same picture every time
    schema = client.get("/schema/openapi.json").json()
    assert {"/api/map", "/api/similarity"} <= set(schema["paths"])
    assert "/" not in schema["paths"] and "/map" not in schema["paths"]  # pages are not API


@pytest.mark.slow
def test_the_similarity_matrix_is_cosine_and_symmetric(served):
    ids = served.ids
    chosen = [ids["family0-0.jpg"], ids["family0-1.jpg"], ids["family1-0.jpg"], ids["img0003.jpg"]]
    body = served.client.get("/api/similarity", params={"ids": ",".join(map(str, chosen))}).json()
    assert body["ids"] == chosen and body["model"] == "test-tiny"
    m = np.array(body["matrix"])
    assert m.shape == (4, 4) and np.allclose(m, m.T) and np.allclose(np.diag(m), 1.0)
    # Two pictures of one family are closer than pictures of different families.
    assert m[0, 1] > m[0, 2]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("ids", "status", "fragment"),
    [
        ("1,abc", 400, "'abc' is not an image id"),
        (",".join(str(i) for i in range(1, 27)), 400, "at most 25"),
        ("", 400, "give 1 to 25"),
        (None, 400, "ids"),
        ("999999", 404, "no image with id 999999"),
    ],
)
def test_bad_similarity_requests_are_4xx_with_a_json_reason(served, ids, status, fragment):
    response = served.client.get("/api/similarity", params={} if ids is None else {"ids": ids})
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status_code"] == status and fragment in json.dumps(body)


@pytest.mark.slow
def test_an_image_without_a_vector_cannot_be_compared_yet(served):
    ids = f"{served.ids['img0000.jpg']},{served.ids['broken.jpg']}"
    response = served.client.get("/api/similarity", params={"ids": ids})
    assert response.status_code == 409 and "has no vector yet" in response.json()["detail"]


class _Holder:
    """What :func:`projection` needs of a Service: a pool, ``read`` over it (and to be a cache key)."""

    def __init__(self, db_url: str) -> None:
        from psycopg_pool import ConnectionPool

        from pgclip.db.engine import configure_vector

        self.pool = ConnectionPool(db_url, min_size=1, max_size=2, configure=configure_vector, open=True)

    def read(self, work):
        with self.pool.connection() as conn:
            return work(conn)


def _add_vectors(db_url: str, start: int, n: int) -> None:
    from pgvector.psycopg import register_vector

    with psycopg.connect(db_url) as conn:
        register_vector(conn)
        model_id, dim = conn.execute("SELECT id, dimension FROM pgclip.models WHERE state = 'active'").fetchone()
        ids = [r[0] for r in conn.execute(
            "INSERT INTO pgclip.images (sha256, source, byte_size, width, height, format, mime)"
            " SELECT encode(sha256(g::text::bytea), 'hex'), 'synthetic', 1, 10, 10, 'JPEG', 'image/jpeg'"
            " FROM generate_series(%s::int, %s::int) g RETURNING id", [start, start + n - 1])]
        rng = np.random.default_rng(start)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)",
                            [(i, model_id, rng.normal(size=dim).astype(np.float32)) for i in ids])


@pytest.mark.slow
def test_a_large_collection_is_sampled_the_same_way_and_recomputed_only_when_vectors_change(db_url, monkeypatch):
    from pgclip.application import atlas as pages

    _add_vectors(db_url, 1, 60)
    holder = _Holder(db_url)
    try:
        everything = pages.projection(holder).points
        assert len(everything) == 60
        xs, ys = np.array([p.x for p in everything]), np.array([p.y for p in everything])
        assert xs.var() >= ys.var()  # the first component carries the most spread

        monkeypatch.setattr(pages, "MAP_MAX_POINTS", 25)
        _add_vectors(db_url, 61, 1)  # the key changes: recomputed, now sampled
        sampled = pages.projection(holder)
        assert len(sampled.points) == 25 and sampled.total == 61
        assert pages.projection(holder) is sampled  # cached while nothing changes
        pages._projections.clear()
        again = pages.projection(holder)
        assert [p.id for p in again.points] == [p.id for p in sampled.points]  # the sample is deterministic
    finally:
        holder.pool.close()


@pytest.mark.slow
def test_umap_falls_back_to_pca_below_three_images_and_runs_from_three(db_url):
    from pgclip.application import atlas

    _add_vectors(db_url, 1, 2)
    holder = _Holder(db_url)
    try:
        two = atlas.projection(holder, "umap")
        assert (two.projection, two.method, len(two.points)) == ("umap", "pca", 2)
        assert "UMAP needs at least 3 points" in two.note and "showing PCA" in two.note
        assert atlas.projection(holder, "pca").note is None
        _add_vectors(db_url, 3, 1)  # three: n_neighbors is clamped to 2
        three = atlas.projection(holder, "umap")
        assert (three.method, len(three.points), three.note) == ("umap", 3, None)
        atlas._projections.clear()
        assert atlas.projection(holder, "umap").points == three.points  # the same picture, computed again
    finally:
        holder.pool.close()


@pytest.mark.slow
def test_the_umap_map_is_deterministic_and_kept_beside_the_pca_one(served):
    client = served.client
    pca = client.get("/api/map").json()
    umap = client.get("/api/map", params={"projection": "umap"}, timeout=180)
    assert umap.status_code == 200, umap.text
    body = umap.json()
    assert (body["projection"], body["method"], body["note"]) == ("umap", "umap", None)
    assert [p["id"] for p in body["points"]] == [p["id"] for p in pca["points"]]
    assert [(p["x"], p["y"]) for p in body["points"]] != [(p["x"], p["y"]) for p in pca["points"]]
    assert client.get("/api/map", params={"projection": "umap"}).json() == body
    assert client.get("/api/map").json() == pca  # the PCA map is kept too
    # Three pictures of one family sit nearer each other than the map's median distance.
    xy = {p["id"]: np.array([p["x"], p["y"]]) for p in body["points"]}
    family = [xy[served.ids[f"family0-{m}.jpg"]] for m in range(3)]
    everything = np.array(list(xy.values()))
    median = np.median(np.linalg.norm(everything[:, None] - everything[None], axis=-1))
    assert max(np.linalg.norm(a - b) for a in family for b in family) < median


@pytest.mark.slow
@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"projection": "tsne"}, "projection must be pca or umap, got 'tsne'"),
        ({"projection": ""}, "projection must be pca or umap"),
        ({"color": ""}, "color: give a metadata key"),
        ({"color": "k" * 201}, "at most 200 characters, got 201"),
        ({"color": "a\nb"}, "control characters"),
        ({"color": "a\x00b"}, "NUL"),
    ],
)
def test_bad_map_requests_are_400_with_a_json_reason(served, params, fragment):
    response = served.client.get("/api/map", params=params)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["detail"]


@pytest.mark.slow
def test_colouring_by_a_key_gives_each_point_its_value_and_follows_metadata_edits(served):
    client, ids = served.client, served.ids
    wait_for(lambda: _queue_empty(client), 60, 0.2, "uploads of earlier tests embedded (the map holds still)")
    before = client.get("/api/map", params={"color": "tag"}).json()
    assert before["color"] == "tag"
    values = {p["id"]: p["value"] for p in before["points"]}
    assert values[ids["img0000.jpg"]] == values[ids["img0001.jpg"]] == "animal"
    assert values[ids["img0002.jpg"]] == "food" and values[ids["family0-0.jpg"]] is None
    legend = {e["value"]: e["count"] for e in before["legend"]}
    assert legend == {v: list(values.values()).count(v) for v in set(values.values())} and before["other"] == 0
    assert legend["animal"] == 2 and legend["people"] == 2
    assert before["legend"][0]["value"] is None  # commonest first: most images have no tag

    # An edit recolours the map and leaves its coordinates where they were.
    image = ids["family0-0.jpg"]
    edited = client.patch(f"/api/images/{image}", json={"metadata": {"map_shade": 3, "map_flag": True}})
    assert edited.status_code in (200, 204), edited.text
    try:
        after = client.get("/api/map", params={"color": "map_shade"}).json()
        assert {p["id"]: p["value"] for p in after["points"]}[image] == "3"  # numbers as text
        assert {e["value"]: e["count"] for e in after["legend"]} == {"3": 1, None: len(values) - 1}
        assert [(p["id"], p["x"], p["y"]) for p in after["points"]] == [(p["id"], p["x"], p["y"]) for p in before["points"]]
        flags = client.get("/api/map", params={"color": "map_flag"}).json()
        assert {p["id"]: p["value"] for p in flags["points"]}[image] == "true"
        assert {"map_shade", "map_flag", "tag"} <= set(after["keys"])
    finally:
        client.patch(f"/api/images/{image}", json={"unset_metadata": ["map_shade", "map_flag"]})
    assert "map_shade" not in client.get("/api/map").json()["keys"]


# --- images x texts (the cross-modal heat-map) ------------------------------------------


def _stored_unit_vectors(db_url: str, ids: list[int]) -> np.ndarray:
    from pgclip.db.engine import configure_vector
    from pgclip.db.models import require_active_model
    from pgclip.db.vectors import vectors_of

    with psycopg.connect(db_url) as conn:
        configure_vector(conn)
        model = require_active_model(conn)
        found = vectors_of(conn, model, ids)
    rows = np.stack([found[i] for i in ids]).astype(np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _text_unit_vectors(texts: list[str]) -> np.ndarray:
    from pgclip.workers.encoder import ClipEncoder

    encoder = ClipEncoder("test-tiny", "random")
    encoder.load()
    rows = encoder.encode_texts(texts).astype(np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.slow
def test_images_x_texts_is_the_cosine_of_each_stored_image_and_encoded_text(served):
    chosen = [served.ids[n] for n in ("img0000.jpg", "img0002.jpg", "family1-0.jpg")]
    texts = ["a dog", "a bowl of soup", "a red bicycle", "a dog"]  # a repeat is a column of its own
    response = served.client.get("/api/similarity", params={"ids": ",".join(map(str, chosen)),
                                                             "texts": json.dumps(texts)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "texts" and body["texts"] == texts and body["ids"] == chosen
    m = np.array(body["matrix"])
    assert m.shape == (3, 4)
    expected = _stored_unit_vectors(served.env["PGCLIP_DATABASE_URL"], chosen) @ _text_unit_vectors(texts).T
    assert np.allclose(m, expected, atol=1e-4)
    assert np.array_equal(m[:, 0], m[:, 3])
    # The image-only answer is unchanged by the new parameters' existence.
    plain = served.client.get("/api/similarity", params={"ids": ",".join(map(str, chosen))}).json()
    assert plain["kind"] == "images" and np.array(plain["matrix"]).shape == (3, 3)


@pytest.mark.slow
def test_captions_true_uses_each_images_first_caption(served):
    chosen = [served.ids[n] for n in ("img0000.jpg", "img0001.jpg", "img0003.jpg")]
    response = served.client.get("/api/similarity", params={"ids": ",".join(map(str, chosen)), "captions": "true"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["texts"] == ["a brown dog on a sofa", "a dog running on the beach", "a red bicycle against a wall"]
    assert body["caption_of"] == chosen
    expected = _stored_unit_vectors(served.env["PGCLIP_DATABASE_URL"], chosen) @ _text_unit_vectors(body["texts"]).T
    assert np.allclose(np.array(body["matrix"]), expected, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"texts": "[]"}, "give 1 to 25 texts"),
        ({"texts": "a dog"}, "JSON list of strings"),
        ({"texts": '["a dog", 3]'}, "JSON list of strings"),
        ({"texts": '["a dog", "  "]'}, "text 2 is empty"),
        ({"texts": json.dumps(["x" * 501])}, "at most 500"),
        ({"texts": json.dumps([f"t{i}" for i in range(26)])}, "give 1 to 25 texts"),
        ({"texts": '["a\\u0000"]'}, "NUL"),
        ({"texts": '["a"]', "captions": "true"}, "not both"),
        ({"captions": "true", "ids": "img0005.jpg"}, "image {} has no caption"),
        ({"captions": "true", "ids": "img0005.jpg,img0006.jpg"}, "none of the images {} has a caption"),
    ],
)
def test_bad_images_x_texts_requests_are_400_naming_the_problem(served, params, fragment):
    ids = str(served.ids["img0000.jpg"])
    if "ids" in params:  # images ingested without a caption
        ids = ", ".join(str(served.ids[name]) for name in params["ids"].split(","))
    response = served.client.get("/api/similarity", params={**params, "ids": ids.replace(" ", "")})
    assert response.status_code == 400, response.text
    assert fragment.format(ids) in response.json()["detail"]


@pytest.mark.slow
def test_captions_true_with_an_uncaptioned_image_gives_it_a_row_and_no_column(served):
    captioned, bare = served.ids["img0002.jpg"], served.ids["img0005.jpg"]  # img0005: no caption
    body = served.client.get("/api/similarity", params={"ids": f"{bare},{captioned}", "captions": "true"}).json()
    assert body["ids"] == [bare, captioned] and body["texts"] == ["a bowl of soup"], body
    assert body["caption_of"] == [captioned] and np.array(body["matrix"]).shape == (2, 1)
    expected = _stored_unit_vectors(served.env["PGCLIP_DATABASE_URL"], [bare, captioned]) @ _text_unit_vectors(body["texts"]).T
    assert np.allclose(np.array(body["matrix"]), expected, atol=1e-4)


@pytest.mark.slow
def test_pgclip_heatmap_writes_a_png_of_images_x_texts(served, tmp_path):
    from PIL import Image

    from tests.acceptance.test_cli_db import run

    chosen = ",".join(str(served.ids[n]) for n in ("img0000.jpg", "img0001.jpg", "img0002.jpg", "tall.jpg"))
    target = tmp_path / "cross.png"
    done = run("heatmap", "--ids", chosen, "--texts", "a dog", "a bowl of soup", "a tall lighthouse",
               "-o", str(target), env=served.env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(target)
    with Image.open(target) as png:
        assert png.format == "PNG"
        width, height = png.size
    assert 300 <= width <= 2000 and 300 <= height <= 2000
    captions = run("heatmap", "--ids", chosen, "--captions", "-o", str(tmp_path / "captions.png"), env=served.env)
    assert captions.returncode == 0, captions.stderr
    assert (tmp_path / "captions.png").stat().st_size > 1000
    unknown = run("heatmap", "--ids", "999999", "--texts", "a dog", "-o", str(tmp_path / "x.png"), env=served.env)
    assert unknown.returncode == 1 and "no image with id 999999" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()
    bad = run("heatmap", "--ids", chosen, "--texts", "", "-o", str(tmp_path / "y.png"), env=served.env)
    assert bad.returncode == 2 and "--texts: text 1 is empty" in bad.stderr


@pytest.mark.slow
def test_the_page_draws_images_x_texts_from_typed_texts_and_from_captions(page, served, console):
    from playwright.sync_api import expect

    chosen = [served.ids[n] for n in ("img0000.jpg", "img0001.jpg", "img0002.jpg")]
    page.goto(f"/similarity?ids={','.join(map(str, chosen))}")
    expect(page.locator("#heat .cell")).to_have_count(9)
    page.locator("#texts").fill("a dog\na bowl of soup")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#heat .cell")).to_have_count(6)
    expect(page.locator("#heat .text-axis")).to_have_text(["a dog", "a bowl of soup"])
    shown = page.locator("#heat .cell").evaluate_all("cells => cells.map(c => Number(c.dataset.value))")
    api = served.client.get("/api/similarity", params={"ids": ",".join(map(str, chosen)),
                                                        "texts": json.dumps(["a dog", "a bowl of soup"])}).json()
    assert shown == pytest.approx([v for row in api["matrix"] for v in row], abs=1e-4)
    page.get_by_role("button", name="Use their captions").click()
    expect(page.locator("#heat .text-axis")).to_have_text(  # each caption named by its image
        [f"#{i}: {t}" for i, t in zip(chosen, ["a brown dog on a sofa", "a dog running on the beach", "a bowl of soup"])])
    expect(page.locator("#heat .cell")).to_have_count(9)
    page.reload()  # the URL keeps the choice
    expect(page.locator("#heat .cell")).to_have_count(9)
    console.assert_clean()
