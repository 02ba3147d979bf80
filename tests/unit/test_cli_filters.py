"""`pgclip search --filter key=value` as a user types it (pgclip/cli/search.py, parse_filters)."""

from __future__ import annotations

import os

import pytest

from pgclip.cli.search import parse_filters
from pgclip.core.errors import InvalidInput


def test_a_list_filter_takes_commas_or_json_and_repeated_adds_to_its_list():
    # `format=["PNG"]` used to search for the format named '["PNG"]', and a second --filter
    # format=... silently replaced the first.
    assert parse_filters(['format=["PNG"]', "format=GIF, JPEG"]) == {"format": ["PNG", "GIF", "JPEG"]}
    assert parse_filters(["exclude_ids=[1, 2]", "exclude_ids=3"]) == {"exclude_ids": [1, 2, 3]}


@pytest.mark.parametrize(("items", "message"), [
    (["min_width=5", "min_width=6"], "--filter min_width is given twice (5 and 6): give it once"),
    (["exclude_ids=[true]"], "--filter exclude_ids: cannot read '[true]'"),
    (["exclude_ids=[1, [2]]"], "--filter exclude_ids: cannot read"),
    (["exclude_ids=x"], "--filter exclude_ids: cannot read 'x'"),
    (["format=[oops"], "--filter format: cannot read"),
])
def test_a_filter_that_cannot_be_read_or_is_given_twice_is_one_clear_error(items, message):
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_filters(items)


def test_a_folder_that_exists_here_is_named_as_sync_stores_it(tmp_path):
    (tmp_path / "photos").mkdir()
    os.symlink(tmp_path / "photos", tmp_path / "link")
    expected = {"folder": os.path.realpath(tmp_path / "photos")}
    assert parse_filters([f"folder={tmp_path / 'link'}"]) == expected  # a symlink, resolved
    assert parse_filters([f"folder={tmp_path / 'photos'}/."]) == expected
    assert parse_filters(["folder=/not/here"]) == {"folder": "/not/here"}  # another machine's path: as given
