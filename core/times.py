"""Dates and times as pgclip takes them from users: ISO 8601, as a date (2024-05-01) or a
date and time with or without its offset (2024-05-01T12:00:00+02:00), within the years that
PostgreSQL stores and Python reads back in any session's time zone.

Not a number: a JSON library would read 20240101 as seconds since 1970. Not PostgreSQL's
words either ('yesterday', 'epoch'), which mean another day tomorrow.
"""

from __future__ import annotations

import datetime as dt
import re

from pgclip.core.errors import InvalidInput

ISO_8601 = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,6})?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?")
# A timestamptz at year 10000 in UTC, or 1 BC, is stored by PostgreSQL and read by no Python
# client; a day inside either end keeps every session's time zone (at most 14 hours away) clear.
EARLIEST = dt.datetime(1, 1, 2, tzinfo=dt.UTC)
LATEST = dt.datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=dt.UTC)
EXAMPLE = "ISO 8601, e.g. 2024-05-01 or 2024-05-01T12:00:00Z"


def parse_time(name: str, value: object) -> dt.datetime:
    """``value`` as a time, aware (a date or a time without offset is UTC), or InvalidInput naming ``name``."""
    if not isinstance(value, str) or not ISO_8601.fullmatch(value.strip()):
        raise InvalidInput(f"{name} must be a date and time ({EXAMPLE}), got {_shown(value)}")
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(f"{name} must be a date and time ({EXAMPLE}), got {_shown(value)}") from None
    return check_time(name, parsed)


def check_time(name: str, value: dt.datetime) -> dt.datetime:
    """``value``, aware (naive: UTC), if it lies within the years every reader can read back, else InvalidInput."""
    aware = _aware(value)
    if not EARLIEST <= aware <= LATEST:
        raise InvalidInput(f"{name} must lie between {EARLIEST.date().isoformat()} and "
                           f"{LATEST.date().isoformat()} (UTC), got {value.isoformat()}")
    return aware


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def within_range(value: dt.datetime | None) -> dt.datetime | None:
    """``value`` unchanged if it lies within the range (naive: UTC), else None: for a time read
    from a file (EXIF, a video's creation_time), where nonsense is dropped, not refused."""
    return value if value is not None and EARLIEST <= _aware(value) <= LATEST else None


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
