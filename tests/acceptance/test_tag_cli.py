"""`pgclip tag` and `POST /api/tags` (#21) as a user runs them: ingest, embed, tag, then find the
tagged images with the search's metadata filter; bad input is one line (a 400) and writes nothing."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.acceptance.test_api import served  # noqa: F401  (the running server fixture)
from tests.acceptance.test_cli_db import run
from tests.acceptance.test_ingest_cli import env_for
from tests.images import write_jpegs

pytestmark = pytest.mark.slow

LABELS = ["cat", "dog", "car"]


def tags_in_db(db_url: str, key: str = "tag") -> dict[int, str | None]:
    with psycopg.connect(db_url) as conn:
        return dict(conn.execute("SELECT id, metadata->>%s FROM pgclip.images ORDER BY id", [key]).fetchall())


def test_tag_then_search_by_the_tag(db_url, tmp_path):
    env = env_for(db_url, tmp_path)
    write_jpegs(tmp_path / "photos", 6)
    run("ingest", str(tmp_path / "photos"), env=env, check=True)
    run("worker", "--until-empty", env=env, check=True, timeout=300)

    dry = run("tag", "--labels", " cat, dog ,car", "--dry-run", env=env, check=True)
    assert "nothing written" in dry.stdout and set(tags_in_db(db_url).values()) == {None}

    tagged = run("tag", "--labels", "cat,dog,car", "--prompt", "a picture of a {}", env=env, check=True)
    lines = tagged.stdout.splitlines()
    counts = {line.split()[0]: int(line.split()[1]) for line in lines[:3]}
    assert list(counts) == LABELS and sum(counts.values()) == 6, tagged.stdout
    assert lines[3].startswith("6 images changed under metadata.tag"), tagged.stdout
    assert dry.stdout.splitlines()[:3] == lines[:3]  # the dry run said what the run did
    stored = tags_in_db(db_url)
    assert all(stored[i] in LABELS for i in stored)
    assert {label: list(stored.values()).count(label) for label in LABELS} == counts

    # The tag is an ordinary metadata key: the search's filter finds exactly the images carrying it.
    for label in LABELS:
        found = run("search", "a photo", "-k", "50", "--filter", f"metadata.tag={label}", "--json",
                    env=env, check=True)
        ids = sorted(hit["image_id"] for hit in json.loads(found.stdout)["results"])
        assert ids == sorted(i for i, tag in stored.items() if tag == label), (label, found.stdout)

    # A minimum no image reaches removes every tag again.
    strict = run("tag", "--labels", "cat,dog,car", "--min-score", "0.999", env=env, check=True)
    assert "6 under --min-score" in strict.stdout and set(tags_in_db(db_url).values()) == {None}


BAD = [
    (["--labels", "cat,,dog"], "label 2 is empty"),
    (["--labels", "cat,dog,cat"], "'cat' is given twice"),
    (["--labels", "cat", "--key", "my-tag"], "--key must be letters, digits and underscores"),
    (["--labels", "cat", "--prompt", "a photo"], "--prompt must hold exactly one {}"),
    (["--labels", "cat", "--min-score", "2"], "--min-score must be between -1 and 1"),
]


def test_bad_input_is_one_line_and_writes_nothing(db_url, tmp_path):
    env = env_for(db_url, tmp_path)
    write_jpegs(tmp_path / "photos", 2)
    run("ingest", str(tmp_path / "photos"), env=env, check=True)
    run("worker", "--until-empty", env=env, check=True, timeout=300)
    with psycopg.connect(db_url) as conn:
        conn.execute("""UPDATE pgclip.images SET metadata = '{"tag": "old"}'""")
    for args, message in BAD:
        result = run("tag", *args, env=env)
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pgclip: error: ") and message in lines[0], result.stderr
        assert result.stdout == ""
    assert set(tags_in_db(db_url).values()) == {"old"}
    # "old" has no tag_score beside it: a manifest's or the user's value, which a run does not clobber.
    for extra in ([], ["--min-score", "0.999"], ["--dry-run"]):
        refused = run("tag", "--labels", "cat,dog", *extra, env=env)
        assert refused.returncode == 1 and refused.stdout == "", refused
        assert refused.stderr.strip().count("\n") == 0 and "2 images hold a metadata.tag value that pgclip tag " \
            "did not write" in refused.stderr and "--overwrite" in refused.stderr, refused.stderr
    assert set(tags_in_db(db_url).values()) == {"old"}
    run("tag", "--labels", "cat,dog", "--overwrite", env=env, check=True)
    assert set(tags_in_db(db_url).values()) <= {"cat", "dog"}


def test_tags_over_the_api(served):  # noqa: F811
    client, _, ids, _ = served
    everything = {"vector": [1.0] * 64, "k": 100}

    def kinds() -> dict[int, str | None]:
        return {r["id"]: r["metadata"].get("kind") for r in client.post("/api/search", json=everything).json()["results"]}

    body = {"labels": LABELS, "prompt": "a picture of a {}", "key": "kind"}
    dry = client.post("/api/tags", json={**body, "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert dry.json()["changed"] == 0 and set(kinds().values()) == {None}
    done = client.post("/api/tags", json=body).json()
    assert done["counts"] == dry.json()["counts"] and [c["label"] for c in done["counts"]] == LABELS
    assert done["changed"] == len(ids) == sum(c["images"] for c in done["counts"])
    stored = kinds()
    assert set(stored) == set(ids.values()) and set(stored.values()) <= set(LABELS)
    for label in LABELS:
        found = client.post("/api/search", json={"text": "x", "k": 100, "filters": {"metadata": {"kind": label}}})
        assert {r["id"] for r in found.json()["results"]} == {i for i, kind in stored.items() if kind == label}

    for bad, field in [({"labels": ["cat", "cat"]}, "labels"), ({"labels": ["cat"], "key": "a.b"}, "key"),
                       ({"labels": ["cat"], "prompt": "{} {}"}, "prompt"), ({"labels": []}, "labels"),
                       ({"labels": ["cat"], "min_score": 2}, "min_score")]:
        refused = client.post("/api/tags", json={**bad, "dry_run": False})
        assert refused.status_code == 400 and field in refused.json()["detail"], refused.text
    assert kinds() == stored

    # A value under the key that no run wrote (an edit) is refused, then replaced on request.
    first = next(iter(stored))
    assert client.patch(f"/api/images/{first}", json={"metadata": {"kind": "mine"}, "unset_metadata": ["kind_score"]}).status_code \
        == 200
    refused = client.post("/api/tags", json=body)
    assert refused.status_code == 400 and f'(image {first}: "mine")' in refused.json()["detail"], refused.text
    assert kinds()[first] == "mine"
    assert client.post("/api/tags", json={**body, "overwrite": True}).status_code == 200
    assert kinds()[first] in LABELS
