"""PGCLIP_LOG_FORMAT: what a log collector reads from a pgclip process's stderr."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from pgclip.core import logs


@pytest.fixture
def restore_logging():
    """The test configures the process's logging; put it back as it was afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("pgclip").level,
             {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate) for name in ("uvicorn",)})
    fields = dict(logs._fields)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("pgclip").setLevel(saved[2])
    for name, (handlers, propagate) in saved[3].items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).propagate = propagate
    logs._fields.clear()
    logs._fields.update(fields)


def json_lines(text: str) -> list[dict]:
    """Every line of ``text`` parsed as one JSON object (fails on any line that is not one)."""
    return [json.loads(line) for line in text.splitlines()]


def test_json_gives_one_object_per_line_with_extras_bound_fields_and_the_traceback(capsys, restore_logging):
    logs.configure("json", process="pgclip-worker", level=logging.WARNING, pgclip_level=logging.INFO)
    log = logging.getLogger("pgclip.worker")
    log.info("worker %s started", "w1")
    logs.bind(worker="host:1:abc")
    log.warning("encoding a batch of %d failed\nsecond line", 2, extra={"job_ids": [7, 9]})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("writing a batch failed")
    # A lone surrogate, as an undecodable file name gives. Out of pytest's own log capture: its
    # report would carry the surrogate, which pytest-xdist cannot send between processes.
    root = logging.getLogger()
    capture = [h for h in root.handlers if type(h).__module__.startswith("_pytest")]
    for handler in capture:
        root.removeHandler(handler)
    try:
        log.warning("file \udcff.jpg: unreadable name")
    finally:
        for handler in capture:
            root.addHandler(handler)
    logging.getLogger("some.library").info("chatter below the root's level")

    started, failed, crashed, odd = json_lines(capsys.readouterr().err)
    assert started["message"] == "worker w1 started" and started["level"] == "INFO"
    assert started["logger"] == "pgclip.worker" and started["process"] == "pgclip-worker"
    assert started["pid"] == os.getpid() and started["time"].endswith("+00:00")
    assert "worker" not in started  # bound afterwards
    assert failed["message"] == "encoding a batch of 2 failed\nsecond line"
    assert failed["job_ids"] == [7, 9] and failed["worker"] == "host:1:abc"
    assert crashed["level"] == "ERROR" and "RuntimeError: boom" in crashed["exception"]
    assert "Traceback" in crashed["exception"]
    assert odd["message"] == "file \udcff.jpg: unreadable name"


def test_text_names_the_process_and_configuring_again_replaces_the_handler(capsys, restore_logging):
    logs.configure("json", process="pgclip")
    logs.configure("text", process="pgclip-api", level=logging.WARNING, pgclip_level=logging.INFO)
    logging.getLogger("pgclip.db").warning("database unavailable: %s", "refused")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].endswith(f" pgclip-api[{os.getpid()}] WARNING database unavailable: refused")


def test_a_library_that_brought_its_own_handler_follows_the_format_once_adopted(capsys, restore_logging):
    logs.configure("json", process="pgclip-api", level=logging.WARNING)
    uvicorn = logging.getLogger("uvicorn")
    own = logging.StreamHandler(sys.stderr)  # as uvicorn's dictConfig gives it when the server starts
    uvicorn.addHandler(own)
    uvicorn.propagate = False
    logs.adopt("uvicorn")
    uvicorn.warning("Invalid HTTP request received.")
    (line,) = json_lines(capsys.readouterr().err)
    assert line["logger"] == "uvicorn" and line["message"] == "Invalid HTTP request received."


def test_an_unknown_log_format_is_a_one_line_settings_error():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGCLIP_")}
    result = subprocess.run([sys.executable, "-m", "pgclip.cli", "config"], env={**env, "PGCLIP_LOG_FORMAT": "xml"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == "pgclip: error: PGCLIP_LOG_FORMAT must be one of text, json, got 'xml'"
