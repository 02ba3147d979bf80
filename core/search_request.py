"""The search request, defined once: what to search for, the filters, the options and their
limits and defaults, each with a line of help.

The API's wire types (``api/schemas.py``), the CLI's flags (``pgclip/cli/search.py``) and the
checks made before any SQL runs (``db/search.py``) are built from these. The plpgsql of
``pgclip.search`` (``db/sql/search.sql``) cannot import them, so
``tests/integration/test_search_contract.py`` holds it to them on a migrated database, and
``tests/unit/test_search_contract_docs.py`` holds the README's table, the CLI's ``--help`` and
the OpenAPI schema to them.

Two kinds of limit, enforced in different places:

* ``minimum``, ``maximum`` and ``choices`` bound a value's meaning (a ``k`` of 101, a fusion
  that does not exist). Every surface refuses a value outside them, the SQL included.
* ``max_length`` bounds the size of what a client sends (characters of a text, items of a
  list, characters of a cursor). Only the API refuses more: an analyst's own SQL session may
  pass what it likes.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pgclip.core.errors import InvalidInput
from pgclip.core.times import parse_time

Kind = Literal["int", "number", "text", "choice", "bool", "time", "texts", "ids", "object", "vector"]
# Where pgclip.search reads a parameter: one of its arguments, a key of its ``options`` or
# ``filters`` object, or nowhere ("": resolved before SQL: text is encoded, a cursor decoded).
SqlPlace = Literal["argument", "option", "filter", ""]
Default = int | float | str | None

MAX_K = 100  # results per page
DEFAULT_K = 10
RRF_K = 60  # reciprocal rank fusion's constant, as in the RRF paper and pgvector's example
# Candidates per ranking (vector, text) of one query, fixed at its first page so that its pages
# never overlap or skip: at least MIN_WINDOW, or WINDOW_PER_K × k; never more than MAX_WINDOW.
MIN_WINDOW = 200
WINDOW_PER_K = 4
MAX_WINDOW = 10_000
MAX_TEXT = 1000  # characters of query text or of a caption query
MAX_VECTOR = 4096  # dimensions of a raw query vector
MAX_CURSOR = 512  # characters of a paging cursor
MAX_FILTERS_JSON = 20_000  # characters of the filters object given as JSON in a query parameter
MAX_SIDE = 1_000_000  # pixels: no image is wider or taller
MAX_ID = 2**62  # image ids; far inside bigint, so no id a client sends overflows
MAX_FORMATS = 16  # names in a format filter
MAX_FORMAT_NAME = 16  # characters of one format name
FORMAT_NAME_PATTERN = r"^[A-Za-z0-9]+$"
MAX_EXCLUDE_IDS = 1000
MAX_EF_SEARCH = 1000
MAX_FOLDER = 4096  # characters of a folder path (Linux's PATH_MAX is 4096 bytes)


def default_window(k: int) -> int:
    """The candidate window of a query's first page, when none is given."""
    return max(MIN_WINDOW, WINDOW_PER_K * k)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclasses.dataclass(frozen=True)
class Param:
    """One part of a search request, under the same name on every surface that takes it (API
    field, CLI flag or ``--filter`` key, SQL key or argument, unless ``sql_name`` says otherwise)."""

    name: str
    kind: Kind
    help: str
    default: Default = None  # when left out or null; None: not applied (no filter, no cut-off)
    default_note: str = ""  # a default computed at search time, in words (then ``default`` is None)
    minimum: float | None = None  # for a list: of each item
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    max_length: int | None = None  # characters of a text, items of a list: the API's limit only
    api: bool = True  # a field of POST /api/search
    cli: bool = True  # a flag (or --filter key) of `pgclip search`
    sql: SqlPlace = "option"
    sql_name: str = ""  # the SQL's own name, where it differs (an argument's)

    @property
    def bounds(self) -> str:
        """The bounds of a value in words ("1 to 100", "0 or more"; "" for none)."""
        each = "each " if self.kind in ("ids", "texts") else ""
        if self.minimum is not None and self.maximum is not None:
            return f"{each}{_number(self.minimum)} to {_number(self.maximum)}"
        if self.minimum is not None:
            return f"{each}{_number(self.minimum)} or more"
        return ""

    @property
    def limits(self) -> str:
        """Every limit in words: choices, bounds, and the API's size limit."""
        parts = [", ".join(self.choices), self.bounds]
        if self.max_length is not None:
            unit = "characters" if self.kind == "text" else "items"
            parts.append(f"at most {self.max_length} {unit} (API)")
        return "; ".join(part for part in parts if part)

    @property
    def default_text(self) -> str:
        """The default in words: its value, how it is computed, or "none"."""
        if self.default_note:
            return self.default_note
        return "none" if self.default is None else str(self.default)

    def check(self, value: object) -> None:
        """Raise :class:`InvalidInput` for a value outside this parameter's choices or bounds
        (of every item, for a list); values of the wrong type are left to the layer that parses."""
        if value is None:
            return
        if self.kind == "time":
            parse_time(self.name, value)
            return
        if self.choices and value not in self.choices:
            *head, last = self.choices
            raise InvalidInput(f"{self.name} must be {', '.join(head)} or {last}, got {value!r}")
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            low = -float("inf") if self.minimum is None else self.minimum
            high = float("inf") if self.maximum is None else self.maximum
            if not low <= item <= high:
                if self.maximum is None:
                    raise InvalidInput(f"{self.name} must be {_number(low)} or more, got {item}")
                raise InvalidInput(f"{self.name} must be between {_number(low)} and {_number(high)}, got {item}")


# What to search for: at least one of text (or an image), vector and caption_query.
QUERY = (
    Param("text", "text", "query text; composable: '\"2:golden retriever\" + #12 - grass' (the CLI also "
          "takes image files: './pool.jpg - fruit')",
          max_length=MAX_TEXT, sql=""),
    Param("vector", "vector", "a raw query vector (the active model's dimension)",
          max_length=MAX_VECTOR, cli=False, sql="argument", sql_name="query_vector"),
    Param("caption_query", "text", "caption full-text query (websearch syntax: '\"golden retriever\" -cat')",
          max_length=MAX_TEXT, sql="argument"),
)

OPTIONS = (
    Param("k", "int", "results per page", DEFAULT_K, minimum=1, maximum=MAX_K, sql="argument"),
    Param("offset", "int", "results to skip (the API and CLI page with a cursor instead)", 0, minimum=0,
          api=False, cli=False, sql="argument"),
    Param("cursor", "text", "the next_cursor of the previous page (it holds the window and the offset)",
          max_length=MAX_CURSOR, cli=False, sql=""),
    Param("fusion", "choice", "how vector and caption rankings combine", "rrf", choices=("rrf", "weighted")),
    Param("weight", "number", "the vector's share of the score in weighted fusion", 0.5, minimum=0.0, maximum=1.0),
    Param("min_similarity", "number", "drop hits less similar than this", minimum=-1.0, maximum=1.0),
    Param("max_drop", "number", "drop hits more than this below the best hit's similarity", minimum=0.0,
          maximum=2.0),
    Param("order", "choice", "by relevance, or by date taken", "relevance", choices=("relevance", "newest", "oldest")),
    # Options of the SQL function alone: pgclip sets them itself, or leaves them to the model.
    Param("window", "int", "candidates per ranking, fixed across the pages of one query",
          default_note=f"max({MIN_WINDOW}, {WINDOW_PER_K} × k)", minimum=1, maximum=MAX_WINDOW, api=False, cli=False),
    Param("rrf_k", "number", "reciprocal rank fusion's constant", RRF_K, api=False, cli=False),
    Param("ts_config", "text", "text search configuration of the caption query (pgclip passes "
          "PGCLIP_TEXT_SEARCH_CONFIG)", "english", api=False, cli=False),
    Param("exact_threshold", "int", "filters leaving fewer rows than this are ranked exactly, not by the index",
          10_000, api=False, cli=False),
    Param("model_id", "int", "search this model's vectors (pgclip pins the model it encoded the query with)",
          default_note="the active model", api=False, cli=False),
    Param("ef_search", "int", "HNSW candidate list for this query",
          default_note="the model's (pgclip index rebuild), else max(40, window); with filters, by relevance, "
                       "vector only: up to 4 k / the share they leave (at most 1000)", minimum=1,
          maximum=MAX_EF_SEARCH, api=False, cli=False),
    Param("probes", "int", "IVFFlat lists probed for this query", default_note="the model's, else 1", minimum=1,
          api=False, cli=False),
)

FILTERS = (
    Param("taken_after", "time", "taken at or after this time (ISO 8601: a date, or a date and time)", sql="filter"),
    Param("taken_before", "time", "taken before this time (ISO 8601: a date, or a date and time)", sql="filter"),
    Param("min_width", "int", "at least this many pixels wide", minimum=1, maximum=MAX_SIDE, sql="filter"),
    Param("min_height", "int", "at least this many pixels high", minimum=1, maximum=MAX_SIDE, sql="filter"),
    Param("orientation", "choice", "wider than high, higher than wide, or neither",
          choices=("landscape", "portrait", "square"), sql="filter"),
    Param("format", "texts", "any of these file formats (JPEG, PNG, ...)", max_length=MAX_FORMATS, sql="filter"),
    Param("metadata", "object", "metadata containing this JSON object (jsonb @>)", sql="filter"),
    Param("has_caption", "bool", "with (true) or without (false) a caption", sql="filter"),
    Param("exclude_ids", "ids", "never these images", minimum=1, maximum=MAX_ID, max_length=MAX_EXCLUDE_IDS,
          sql="filter"),
    Param("folder", "text", "images of files under this folder, as `pgclip sync` last saw it (an absolute path; "
          "/a/b holds /a/b/c.jpg, not /a/bc/d.jpg)", max_length=MAX_FOLDER, sql="filter"),
)

FILTER_KEYS = frozenset(p.name for p in FILTERS)
PARAMS = {p.name: p for p in (*QUERY, *OPTIONS, *FILTERS)}
