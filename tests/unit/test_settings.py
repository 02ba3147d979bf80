"""PGCLIP_* variables as a user sets them: parsed, checked, and shown by `pgclip config`."""

from __future__ import annotations

import pytest

from pgclip.core.errors import ConfigError
from pgclip.core.settings import Settings


def test_the_hnsw_graph_is_by_size_unless_a_variable_fixes_it():
    unset = Settings.from_env({})
    assert (unset.hnsw_m, unset.hnsw_ef_construction) == (None, None)
    shown = {env: value for env, value, _ in unset.describe()}
    assert shown["PGCLIP_HNSW_M"] == "(unset: by the collection's size)"
    fixed = Settings.from_env({"PGCLIP_HNSW_M": "24", "PGCLIP_HNSW_EF_CONSTRUCTION": "128"})
    assert (fixed.hnsw_m, fixed.hnsw_ef_construction) == (24, 128)
    assert {env: value for env, value, _ in fixed.describe()}["PGCLIP_HNSW_M"] == "24"
    assert Settings.from_env({"PGCLIP_HNSW_M": ""}).hnsw_m is None  # set but empty: unset


@pytest.mark.parametrize(("value", "message"), [
    ("0", "PGCLIP_HNSW_M must be at least 1, got 0"),
    ("sixteen", "PGCLIP_HNSW_M must be an integer, got 'sixteen'"),
])
def test_a_bad_graph_setting_is_one_clear_error(value, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"PGCLIP_HNSW_M": value})


@pytest.mark.parametrize(("value", "message"), [
    ("70000", "PGCLIP_PORT must be a port number \\(1 to 65535\\), got 70000"),
    ("0", "PGCLIP_PORT must be at least 1, got 0"),
])
def test_a_port_out_of_range_is_refused_not_wrapped_around(value, message):
    """The OS would listen on 70000 - 65536 = 4464 while `pgclip serve` printed 70000."""
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"PGCLIP_PORT": value})


def test_serve_port_must_be_a_port_number(capsys):
    from pgclip.cli.main import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", "--port", "99999"])
    assert exit_.value.code == 2 and "'99999' is not a port number (1 to 65535)" in capsys.readouterr().err


def test_index_rebuild_memory_is_checked_when_parsed_even_with_nothing_to_rebuild(capsys):
    from pgclip.cli.main import build_parser

    assert build_parser().parse_args(["index", "rebuild", "m", "--memory", "4GB"]).memory == "4GB"
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["index", "rebuild", "m", "--memory", "bogus"])
    assert exit_.value.code == 2 and "'bogus' is not a memory size such as 512MB or 2GB" in capsys.readouterr().err
