"""Caption manifests: Flickr30k's results.csv and JSON Lines, with bad rows reported, not fatal."""

from __future__ import annotations

import json

import pytest

from pgclip.core.errors import InvalidInput
from pgclip.workers.manifest import MAX_CAPTION_CHARS, load_manifest

FLICKR = """image_name| comment_number| comment
1000092795.jpg| 0| Two young guys with shaggy hair look at their hands while hanging out in the yard .
1000092795.jpg| 1| Two young , White males are outside near many bushes .
10002456.jpg| 0| Several men in hard hats are operating a giant pulley system .
broken line without separators
10002456.jpg| 1| Workers look down from up above on a piece of equipment .
"""


def test_flickr30k_results_csv(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text(FLICKR)
    m = load_manifest(path)
    assert set(m.entries) == {"1000092795.jpg", "10002456.jpg"}
    assert len(m.entries["1000092795.jpg"].captions) == 2
    assert m.entries["10002456.jpg"].captions[0] == "Several men in hard hats are operating a giant pulley system ."
    assert m.problem_count == 1 and "line 5" in m.problems[0]


def test_json_lines_with_metadata_and_bad_rows(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join([
        json.dumps({"path": "a/1.jpg", "captions": ["кошка на траве", "  spaced   out  "], "metadata": {"tag": "cat"}}),
        "{not json",
        json.dumps({"captions": ["no path"]}),
        json.dumps({"path": "b.png", "captions": "one caption as a string", "metadata": [1]}),
        json.dumps({"path": "c.png", "captions": ["x" * (MAX_CAPTION_CHARS + 1), "ok\x00 caption"]}),
    ]) + "\n")
    m = load_manifest(path)
    assert m.entries["a/1.jpg"].captions == ["кошка на траве", "spaced out"]
    assert m.entries["a/1.jpg"].metadata == {"tag": "cat"}
    assert m.entries["b.png"].captions == ["one caption as a string"]
    assert m.entries["c.png"].captions == ["ok caption"]  # NUL removed; the huge one reported
    assert m.resolve("a/1.jpg") == tmp_path / "a/1.jpg"
    assert m.problem_count == 4
    assert any("longer than" in p for p in m.problems)


@pytest.mark.parametrize("content", ["", "just,some,csv\n1,2,3\n", "{broken\n{also broken\n"])
def test_a_file_that_is_no_manifest_is_one_clear_error(tmp_path, content):
    path = tmp_path / "m.txt"
    path.write_text(content)
    with pytest.raises(InvalidInput):
        load_manifest(path)


def test_a_missing_manifest_is_one_clear_error(tmp_path):
    with pytest.raises(InvalidInput, match="cannot read captions file"):
        load_manifest(tmp_path / "nope.jsonl")


def test_a_fifo_as_manifest_is_refused_not_waited_on(tmp_path):
    import os

    os.mkfifo(tmp_path / "captions.jsonl")  # nobody writes into it: a plain open would block for ever
    with pytest.raises(InvalidInput, match="cannot read captions file .*not a regular file"):
        load_manifest(tmp_path / "captions.jsonl")
