"""Zero-shot tags on constructed vectors, where each image's nearest label is known."""

from __future__ import annotations

import numpy as np
import pytest

from pgclip.core.errors import InvalidInput
from pgclip.db.models import active_model
from pgclip.db.tags import check_key, parse_labels, prompts, tag_images
from tests.integration.test_schema import add_image, unit

LABELS = ["cat", "dog", "car"]


def metadata(conn, image_id: int) -> dict:
    return conn.execute("SELECT metadata FROM pgclip.images WHERE id = %s", [image_id]).fetchone()[0]


@pytest.fixture
def scene(conn):
    """Three label directions; for each, images near it (similarity ~0.9) and one far-off image
    (similarity ~0.1 to its nearest label). Returns (model, label vectors, {image: label}, far image)."""
    model = active_model(conn)
    rng = np.random.default_rng(21)
    label_vectors = np.stack([unit(rng.normal(size=model.dimension)) for _ in LABELS])
    expected: dict[int, str] = {}

    def store(v, name: str, meta: dict | None = None) -> int:
        image = add_image(conn, name, metadata=meta)
        conn.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)",
                     [image, model.id, unit(v)])
        return image

    for n, label in enumerate(LABELS):
        for j in range(n + 2):  # 2 cats, 3 dogs, 4 cars
            noise = unit(rng.normal(size=model.dimension))
            expected[store(label_vectors[n] + 0.45 * noise, f"{label}{j}.jpg", {"album": "x"})] = label
    # Nearly orthogonal to every label: its best score is close to 0. It carries a stale tag.
    far = store(rng.normal(size=model.dimension), "far.jpg", {"tag": "old", "tag_score": 0.9, "keep": 1})
    conn.commit()
    return model, label_vectors, expected, far


def test_each_image_gets_its_nearest_label_and_the_counts_say_how_many(conn, scene):
    model, vectors, expected, far = scene
    run = tag_images(conn, model, LABELS, vectors)
    for image, label in expected.items():
        meta = metadata(conn, image)
        assert meta["tag"] == label and meta["album"] == "x"  # merged, not replaced
        stored = conn.execute("SELECT embedding FROM pgclip.embeddings WHERE image_id = %s", [image]).fetchone()[0]
        assert meta["tag_score"] == pytest.approx(float(np.dot(stored.to_numpy(), vectors[LABELS.index(label)])),
                                                  abs=1e-3)
    # With no minimum, the far image gets its best label too (replacing the stale one).
    assert metadata(conn, far)["tag"] in LABELS and metadata(conn, far)["keep"] == 1
    far_label = metadata(conn, far)["tag"]
    assert {c.label: c.images for c in run.counts} == {
        label: list(expected.values()).count(label) + (label == far_label) for label in LABELS}
    assert [c.label for c in run.counts] == LABELS
    assert run.changed == len(expected) + 1
    # Running again changes nothing.
    assert tag_images(conn, model, LABELS, vectors).changed == 0


def test_min_score_leaves_low_scorers_untagged_and_removes_a_stale_tag(conn, scene):
    model, vectors, expected, far = scene
    run = tag_images(conn, model, LABELS, vectors, min_score=0.5)
    assert metadata(conn, far) == {"keep": 1}  # the stale tag and its score are gone, the rest kept
    assert all(metadata(conn, image)["tag"] == label for image, label in expected.items())
    assert run.below == 1 and sum(c.images for c in run.counts) == len(expected)
    # A stricter run untags everything it no longer reaches.
    run = tag_images(conn, model, LABELS, vectors, min_score=0.99)
    assert run.below == len(expected) + 1 and all(c.images == 0 for c in run.counts)
    assert all("tag" not in metadata(conn, image) and "tag_score" not in metadata(conn, image) for image in expected)


def test_a_dry_run_counts_the_same_and_writes_nothing(conn, scene):
    model, vectors, expected, far = scene
    before = conn.execute("SELECT id, metadata FROM pgclip.images ORDER BY id").fetchall()
    dry = tag_images(conn, model, LABELS, vectors, min_score=0.5, write=False)
    assert conn.execute("SELECT id, metadata FROM pgclip.images ORDER BY id").fetchall() == before
    assert dry.changed == 0
    assert dry.counts == tag_images(conn, model, LABELS, vectors, min_score=0.5).counts


def test_a_chosen_key_leaves_other_keys_alone(conn, scene):
    model, vectors, expected, far = scene
    tag_images(conn, model, LABELS, vectors, key="kind", min_score=0.5)
    assert metadata(conn, far)["tag"] == "old"  # another key: untouched
    image, label = next(iter(expected.items()))
    assert metadata(conn, image)["kind"] == label and "kind_score" in metadata(conn, image)


def test_images_without_a_vector_lose_a_stale_tag(conn, scene):
    model, vectors, expected, far = scene
    pending = add_image(conn, "pending.jpg", metadata={"tag": "cat", "tag_score": 0.7})
    conn.commit()
    tag_images(conn, model, LABELS, vectors)
    assert metadata(conn, pending) == {}


def test_the_vectors_and_their_index_are_not_touched(conn, scene):
    model, vectors, expected, far = scene
    rows = "SELECT image_id, ctid, xmin::text FROM pgclip.embeddings ORDER BY image_id"
    size = "SELECT pg_relation_size(%s::regclass)"
    index = f"pgclip.{model.index_name}"
    assert conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'pgclip' AND indexname = %s",
                        [model.index_name]).fetchone()[0].count("hnsw") == 1
    before = conn.execute(rows).fetchall(), conn.execute(size, [index]).fetchone()
    conn.commit()
    tag_images(conn, model, LABELS, vectors, min_score=0.2)
    assert (conn.execute(rows).fetchall(), conn.execute(size, [index]).fetchone()) == before


def test_bad_labels_keys_and_prompts_are_refused(conn, scene):
    model, vectors, _, _ = scene
    assert parse_labels(" cat , dog,car ") == LABELS
    for bad, message in [("cat,,dog", "label 2 is empty"), ("cat,dog,cat", "given twice"), ("", "label 1 is empty"),
                         ("x" * 201, "at most 200"), (",".join(map(str, range(1001))), "at most 1000")]:
        with pytest.raises(InvalidInput, match=message):
            parse_labels(bad)
    for bad in ["", "1tag", "tag-name", "a.b", "tag key", "x" * 64]:
        with pytest.raises(InvalidInput, match="--key"):
            check_key(bad)
    assert prompts(["cat"], "a photo of a {}.") == ["a photo of a cat."]
    for bad in ["a photo", "{} and {}", "a {0}"]:
        with pytest.raises(InvalidInput, match="exactly one"):
            prompts(["cat"], bad)
    before = conn.execute("SELECT id, metadata FROM pgclip.images ORDER BY id").fetchall()
    with pytest.raises(InvalidInput, match="shape"):
        tag_images(conn, model, LABELS, vectors[:2])
    with pytest.raises(InvalidInput, match="min_score"):
        tag_images(conn, model, LABELS, vectors, min_score=1.5)
    assert conn.execute("SELECT id, metadata FROM pgclip.images ORDER BY id").fetchall() == before


def test_values_under_the_key_that_no_run_wrote_are_refused_unless_overwritten(conn, scene):
    """A manifest's `tag` (no `tag_score` beside it) is the user's: a run neither replaces it nor,
    under the minimum, removes it, and writes nothing at all, until asked to overwrite."""
    model, vectors, expected, far = scene
    mine = add_image(conn, "labelled.jpg", metadata={"tag": "person", "source": "scikit-image"})
    conn.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)",
                 [mine, model.id, unit(vectors[0])])
    conn.commit()
    before = conn.execute("SELECT id, metadata FROM pgclip.images ORDER BY id").fetchall()
    for write in (False, True):
        for min_score in (None, 0.99):
            with pytest.raises(InvalidInput, match=rf'1 image holds a metadata.tag value .* \(image {mine}: "person"\)'):
                tag_images(conn, model, LABELS, vectors, min_score=min_score, write=write)
    assert conn.execute("SELECT id, metadata FROM pgclip.images ORDER BY id").fetchall() == before
    tag_images(conn, model, LABELS, vectors, key="kind")  # another key: fine
    assert metadata(conn, mine)["tag"] == "person" and metadata(conn, mine)["kind"] == "cat"
    run = tag_images(conn, model, LABELS, vectors, overwrite=True)
    assert metadata(conn, mine)["tag"] == "cat" and metadata(conn, mine)["source"] == "scikit-image"
    assert run.changed == len(expected) + 2
    assert tag_images(conn, model, LABELS, vectors).changed == 0  # now every value is a run's own
