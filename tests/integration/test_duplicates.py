"""Near-duplicate groups on constructed vectors where the right groups are known."""

from __future__ import annotations

import numpy as np
import pytest

from pgclip.core.errors import InvalidInput
from pgclip.db.duplicates import near_duplicates
from pgclip.db.models import active_model
from tests.integration.test_schema import add_image


def unit(v):
    return (v / np.linalg.norm(v)).astype(np.float32)


def test_copies_group_transitively_and_distinct_images_stay_alone(conn):
    model = active_model(conn)
    rng = np.random.default_rng(4)
    expected = []
    ids = iter(range(10_000))

    def store(v) -> int:
        image = add_image(conn, f"d{next(ids)}.jpg")
        conn.execute("INSERT INTO pgclip.embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)",
                     [image, model.id, unit(v)])
        return image

    for size in (3, 2, 2):  # three groups of copies: base + slightly perturbed versions
        base = rng.normal(size=model.dimension)
        expected.append(sorted([store(base)] + [store(base + rng.normal(scale=0.05, size=model.dimension))
                                                for _ in range(size - 1)]))
    # A chain a ~ b ~ c where a and c are further apart than the threshold: still one group.
    a = rng.normal(size=model.dimension)
    c_dir = rng.normal(size=model.dimension)
    chain = [store(a), store(unit(a) + 0.22 * unit(c_dir)), store(unit(a) + 0.44 * unit(c_dir))]
    expected.append(sorted(chain))
    singles = [store(rng.normal(size=model.dimension)) for _ in range(30)]
    conn.commit()

    _, groups = near_duplicates(conn, 0.95)
    assert sorted(g.ids for g in groups) == sorted(expected)
    assert not set(singles) & {i for g in groups for i in g.ids}
    assert [len(g.ids) for g in groups] == sorted([len(g.ids) for g in groups], reverse=True)
    for g in groups:
        assert 0.95 <= g.min_similarity <= g.max_similarity <= 1.0
    # A stricter threshold breaks the chain apart; a threshold of 1 finds nothing here.
    _, strict = near_duplicates(conn, 0.999)
    assert sorted(chain) not in [g.ids for g in strict]
    assert near_duplicates(conn, 1.0)[1] == []


def test_a_threshold_out_of_range_is_refused(conn):
    with pytest.raises(InvalidInput, match="threshold"):
        near_duplicates(conn, 0.1)
