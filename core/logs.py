"""Log lines on stderr for every pgclip process: ``PGCLIP_LOG_FORMAT=text`` (one readable line)
or ``json`` (one JSON object per line, for a log collector).

Configured once, at the entry point (``pgclip.cli.main``), before the command runs. A JSON line
holds ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``process`` and ``pid``, then
whatever the process bound (``bind(worker=...)``) and the record's own extras
(``log.warning(..., extra={"job_ids": ids})``), and ``exception`` with the traceback when
there is one. What a command prints for its user (search results, an ingest report, the
one-line ``pgclip: error: ...``) is not logging and does not pass through here.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from typing import Any

from pgclip.core.settings import LOG_FORMATS

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
# The keys of a JSON line that a bound field or an extra may not replace.
_CORE = ("time", "level", "logger", "message", "process", "pid")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages and tracebacks are escaped)."""

    def __init__(self, process: str, fields: dict[str, Any]) -> None:
        super().__init__()
        self.process = process
        self.fields = fields  # shared with bind(): fields bound later show on later lines

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": self.process,
            "pid": record.process,
        }
        if record.threadName and record.threadName != "MainThread":
            entry["thread"] = record.threadName
        for key, value in [*self.fields.items(), *((k, v) for k, v in vars(record).items() if k not in _STANDARD)]:
            if key not in _CORE:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ASCII only: a file name with undecodable bytes (a lone surrogate) still makes valid JSON.
        return json.dumps(entry, default=str)


class _Installed(logging.StreamHandler):
    """The handler ``configure`` installs (so that configuring again replaces it)."""


_fields: dict[str, Any] = {}


def configure(log_format: str, *, process: str, level: int = logging.ERROR, pgclip_level: int | None = None) -> None:
    """Send every log record of this process to stderr in ``log_format`` (text or json).

    ``level``: the root logger's (libraries' records below it are dropped); ``pgclip_level``:
    pgclip's own loggers', when they should say more (the API server and workers: INFO).
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {log_format!r}")
    handler = _Installed(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(process, _fields))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {process}[{os.getpid()}] %(levelname)s %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Installed)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if pgclip_level is not None:
        logging.getLogger("pgclip").setLevel(pgclip_level)


def structured() -> bool:
    """Whether this process logs JSON lines (so that a notice printed as text would break them)."""
    return any(isinstance(h, _Installed) and isinstance(h.formatter, JsonFormatter)
               for h in logging.getLogger().handlers)


def bind(**fields: Any) -> None:
    """Add fields to every JSON line this process writes from now on (a worker's id, say)."""
    _fields.update(fields)


def adopt(*loggers: str) -> None:
    """Route loggers that a library configured with handlers of its own (uvicorn does, when it
    starts) through the handler above, so that they too follow PGCLIP_LOG_FORMAT. Does nothing
    in a process where ``configure`` was not called (a test's, an embedding program's)."""
    if not any(isinstance(h, _Installed) for h in logging.getLogger().handlers):
        return
    for name in loggers:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
