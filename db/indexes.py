"""Changing how a model's vectors are indexed while search keeps answering.

A model's index is HNSW (m, ef_construction; ef_search at query time), IVFFlat
(lists; probes at query time) or none (exact search), over ``vector`` or
``halfvec`` (half the index size). :func:`rebuild` switches between them:

1. ``CREATE INDEX CONCURRENTLY`` builds the new index beside the old one under
   a temporary name; searches and worker writes go on meanwhile.
2. One short transaction records the new choice in the model's row and swaps
   the names. ``pgclip.search`` reads the row at each call and writes the
   expression of the index that row describes, so a search uses the old
   index before the swap and the new one after it.
3. ``DROP INDEX CONCURRENTLY`` removes the old index.

A change of query-time settings only (ef_search, probes) needs no build: the
row is updated and the next search uses them.

**The deferred index.** A model whose index does not exist (a re-embed's new
model, a model an ingest ``--bulk`` is filling, or whose index a build left
INVALID) takes its vectors by plain inserts, and :func:`build_deferred` builds
its index once, ``CONCURRENTLY``, when its backlog has drained: a worker that
finds no job for its model asks, and ``pgclip models activate`` builds it before
switching (waiting for a build in progress). Searches meanwhile rank the
model's vectors exactly (correct, slower), and :func:`describe_indexes` says
so: each index is ``built``, ``building`` (with its progress), ``deferred``
(missing), ``invalid`` (a build was interrupted: rebuilt the same way) or
``none`` (kind none).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import math
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pgclip.core.errors import ConfigError, InvalidInput
from pgclip.core.settings import HNSW_EF_CONSTRUCTION, HNSW_M
from pgclip.db.engine import application_name, connect
from pgclip.db.models import (
    BUILD_PARAMS,
    MODELS,
    Coverage,
    ModelRow,
    coverage,
    drop_index_ddl,
    hnsw_graph,
    index_ddl,
    model_by_id,
    vector_count,  # noqa: F401  (pgclip.db.indexes.vector_count too: choose() takes the count)
)
from pgclip.db.queries import load

INDEXES = load("indexes.sql")

KINDS = ("hnsw", "ivfflat", "none")
QUERY_PARAMS = {"hnsw": ("ef_search",), "ivfflat": ("probes",), "none": ()}
LIMITS = {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": (1, 1000), "lists": (1, 32768),
          "probes": (1, 32768)}
_LOCK_CLASS = 0x70676370  # pg_advisory_lock(class, model id): one build or rebuild per model at a time ("pgcp")
INGEST_CLASS = 0x70676369  # shared advisory lock (class, model id) held by each running `pgclip ingest` ("pgci")
# maintenance_work_mem of a build, at least (the server's own setting when larger): an HNSW graph
# that does not fit in it is built many times slower.
BUILD_MEMORY_FLOOR = "1GB"
STATES = ("built", "building", "deferred", "invalid", "none")


@dataclasses.dataclass(frozen=True)
class IndexChoice:
    kind: str
    storage: str
    params: dict[str, int]  # what the index is built (and searched) with
    sized: tuple[str, ...] = ()  # the params chosen from the collection's size, not fixed in the model's row

    def describe(self) -> str:
        if self.kind == "none":
            return "none (exact search)"
        order = BUILD_PARAMS[self.kind] + QUERY_PARAMS[self.kind]
        settings = ", ".join(f"{k}={self.params[k]}" for k in order if k in self.params)
        by_size = f"; {' and '.join(self.sized)} by the collection's size" if self.sized else ""
        return f"{self.kind} over {self.storage} ({settings}{by_size})"

    @property
    def fixed(self) -> dict[str, int]:
        """What the model's row keeps: the params a later build must not choose again by size."""
        return {k: v for k, v in self.params.items() if k not in self.sized}


def built_params(conn: psycopg.Connection, model: ModelRow) -> dict[str, int]:
    """The build parameters the model's index has in the database: its reloptions (m,
    ef_construction; lists); empty when there is no such index."""
    row = conn.execute(INDEXES["reloptions"], {"index": f"pgclip.{model.index_name}"}).fetchone()
    options = dict(opt.split("=", 1) for opt in (row[0] or [])) if row else {}
    return {k: int(options[k]) for k in BUILD_PARAMS.get(model.index_kind, ()) if k in options}


def current_choice(model: ModelRow, built: dict[str, int] | None = None) -> IndexChoice:
    """The model's index as its row describes it; ``built`` (:func:`built_params`) fills in the
    parameters its last build chose by size."""
    built = {} if model.index_kind != "hnsw" else built or {}
    sized = tuple(k for k in BUILD_PARAMS[model.index_kind] if k in built and k not in model.index_params)
    return IndexChoice(model.index_kind, model.storage, {**built, **model.index_params}, sized)


def choose(model: ModelRow, rows: int, *, kind: str | None = None, halfvec: bool | None = None,
           by_size: bool = False, **params: int | None) -> IndexChoice:
    """The index ``model`` gets from these options; what is not given stays as it is (same kind)
    or takes pgvector's advice (a new kind: IVFFlat lists = rows / 1000, probes = sqrt(lists)).
    HNSW's m and ef_construction, when nobody fixed them (or ``by_size``: forget the fixed
    ones), follow the collection's size (:func:`pgclip.db.models.hnsw_graph` of ``rows``)."""
    explicit = kind is not None
    kind = kind or model.index_kind
    if kind not in KINDS:
        raise InvalidInput(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
    given = {k: v for k, v in params.items() if v is not None}
    allowed = BUILD_PARAMS[kind] + QUERY_PARAMS[kind]
    if unknown := sorted(set(given) - set(allowed)):
        # Named as the HTTP API names them; the CLI's flags are the same words (--ef-construction).
        takes = f"it takes {', '.join(allowed)}" if allowed else "it takes none"
        hint = "" if explicit else "; give a kind to change the kind too"
        raise InvalidInput(f"{', '.join(unknown)} does not apply to kind {kind} ({takes}{hint})")
    for key, value in given.items():
        low, high = LIMITS[key]
        if not low <= value <= high:
            raise InvalidInput(f"{key} must be between {low} and {high}, got {value}")
    if kind == "none":
        if halfvec:
            raise InvalidInput("halfvec applies to an index; kind none ranks the full vectors exactly")
        return IndexChoice("none", "vector", {})
    storage = model.storage if halfvec is None else ("halfvec" if halfvec else "vector")
    kept = dict(model.index_params) if kind == model.index_kind else {}
    if kind == "hnsw":
        if by_size and (both := [k for k in BUILD_PARAMS["hnsw"] if k in given]):
            raise InvalidInput(f"by_size chooses m and ef_construction from the collection's size: "
                               f"give it or {' and '.join(both)}, not both")
        if by_size:
            kept = {k: v for k, v in kept.items() if k not in BUILD_PARAMS["hnsw"]}
        fixed = {**kept, **given}
        merged = {**hnsw_graph(rows), **fixed}
        if "ef_construction" not in fixed:  # chosen by size, but never under pgvector's floor for the m given
            merged["ef_construction"] = max(merged["ef_construction"], 2 * merged["m"])
        if merged["ef_construction"] < 2 * merged["m"]:  # pgvector's own rule
            raise InvalidInput(f"ef_construction must be at least twice m ({2 * merged['m']}), "
                               f"got {merged['ef_construction']}")
        sized = tuple(k for k in BUILD_PARAMS["hnsw"] if k not in fixed)
        return IndexChoice(kind, storage, {k: int(merged[k]) for k in allowed if k in merged}, sized)
    if by_size:
        raise InvalidInput(f"by_size applies to HNSW's m and ef_construction, not to kind {kind}")
    lists = given.get("lists") or kept.get("lists") or advised_lists(rows)
    merged = {**kept, **given, "lists": lists}
    merged.setdefault("probes", max(1, round(math.sqrt(lists))))
    return IndexChoice(kind, storage, {k: int(merged[k]) for k in allowed if k in merged})


def advised_lists(rows: int) -> int:
    """pgvector's README: rows / 1000 up to 1M rows, sqrt(rows) above."""
    return max(1, rows // 1000 if rows <= 1_000_000 else round(math.sqrt(rows)))


def _build_part(choice: IndexChoice) -> tuple[Any, ...]:
    return choice.kind, choice.storage, tuple(choice.params.get(k) for k in BUILD_PARAMS[choice.kind])


@dataclasses.dataclass(frozen=True)
class RebuildReport:
    model: ModelRow  # as it is now
    previous: IndexChoice
    built: bool  # False: only query-time settings changed, or no index wanted
    seconds: float
    size_bytes: int | None


def rebuild(url: str, model: ModelRow, choice: IndexChoice, *, build_memory: str | None = None) -> RebuildReport:
    """Give ``model`` the index ``choice`` describes without stopping searches (see the module doc)."""
    staged, retired = model.staged_index_name, model.retired_index_name
    t0 = time.perf_counter()
    # CREATE/DROP INDEX CONCURRENTLY cannot run inside a transaction block.
    with connect(url, role="index-rebuild", autocommit=True) as conn:
        lock = {"lock_class": _LOCK_CLASS, "model_id": model.id}
        if not conn.execute(INDEXES["try_lock"], lock).fetchone()[0]:
            raise ConfigError(f"another `pgclip index rebuild` of {model.label} is running: wait for it to finish")
        previous = current_choice(model, built_params(conn, model))  # the graph it has, sized or fixed
        # Leftovers of a rebuild that was interrupted (an INVALID index, or an old one not dropped yet).
        for name in (staged, retired):
            conn.execute(drop_index_ddl(name, concurrently=True))
        target = dataclasses.replace(model, index_kind=choice.kind, storage=choice.storage, index_params=choice.params)
        # An INVALID index (a build that was interrupted) is as good as none: build it again.
        state = conn.execute(INDEXES["state"], {"index": f"pgclip.{model.index_name}"}).fetchone()
        index_exists = state is not None and state[1]
        build = choice.kind != "none" and (_build_part(choice) != _build_part(previous) or not index_exists)
        if build:
            try:
                conn.execute(INDEXES["build_session"], {"floor": BUILD_MEMORY_FLOOR})
                if build_memory is not None:
                    conn.execute(INDEXES["build_memory"], {"memory": build_memory})
            except psycopg.errors.InvalidParameterValue as exc:
                raise InvalidInput(f"--memory {build_memory!r}: {exc.diag.message_primary or exc} "
                                   "(a size such as 512MB or 2GB)") from None
            try:
                conn.execute(index_ddl(target, name=staged, concurrently=True))
            except psycopg.Error as exc:
                conn.execute(drop_index_ddl(staged, concurrently=True))
                raise ConfigError(f"building the new index of {model.label} failed, the old one is in use: "
                                  f"{str(exc).strip().splitlines()[0]}") from exc
        with conn.transaction():
            conn.execute(MODELS["lock_model"], {"model_id": model.id})
            conn.execute(MODELS["set_index"], {"kind": choice.kind, "storage": choice.storage,
                                               "params": Jsonb(choice.fixed), "model_id": model.id})
            if build or choice.kind == "none":
                conn.execute(sql.SQL("ALTER INDEX IF EXISTS pgclip.{} RENAME TO {}").format(
                    sql.Identifier(model.index_name), sql.Identifier(retired)))
            if build:
                conn.execute(sql.SQL("ALTER INDEX pgclip.{} RENAME TO {}").format(
                    sql.Identifier(staged), sql.Identifier(model.index_name)))
        conn.execute(drop_index_ddl(retired, concurrently=True))
        size = conn.execute(INDEXES["size"], {"index": f"pgclip.{model.index_name}"}).fetchone()[0]
        conn.execute(INDEXES["unlock"], lock)
        return RebuildReport(model_by_id(conn, model.id), previous, build, time.perf_counter() - t0, size)


@dataclasses.dataclass(frozen=True)
class IndexInfo:
    coverage: Coverage  # the model, its vectors and the collection's images
    size_bytes: int | None  # None: no index (kind none, or missing)
    valid: bool | None
    state: str = "built"  # one of STATES
    progress: float | None = None  # building: the share of the vectors in the graph so far (0..1)
    build: dict[str, Any] | None = None  # how a deferred build made it: seconds, memory, vectors, at, by
    built: dict[str, int] = dataclasses.field(default_factory=dict)  # the built index's m, ef_construction (lists)

    @property
    def choice(self) -> IndexChoice:
        """The index as it is: the row's settings, with what its build chose by size."""
        return current_choice(self.coverage.model, self.built)

    @property
    def outgrown(self) -> dict[str, int] | None:
        """The denser graph `pgclip index rebuild` would now choose by size, when the collection
        has grown past a bound of HNSW_BY_SIZE since its index was built (None otherwise)."""
        choice = self.choice
        if self.state != "built" or not choice.sized:
            return None
        now = {k: v for k, v in hnsw_graph(self.coverage.vectors).items() if k in choice.sized}
        return now if any(v > self.built.get(k, v) for k, v in now.items()) else None

    @property
    def exact(self) -> bool:
        """Searches of this model rank every vector exactly (no usable index)."""
        return self.state != "built"

    def describe_state(self) -> str:
        """One line: the index's state and what it means for searches."""
        if self.state == "built":
            return "built"
        if self.state == "none":
            return "none: exact search"
        if self.state == "building":
            done = "" if self.progress is None else f" {self.progress:.0%}"
            return f"building{done}: exact search until it is built"
        if self.state == "invalid":
            return "invalid (a build was interrupted): rebuilt when the backlog drains; exact search meanwhile"
        return "deferred: built once the backlog drains (or at activation); exact search meanwhile"


def describe_indexes(conn: psycopg.Connection) -> list[IndexInfo]:
    """Each model's coverage and its index as it exists in the database: size, validity and state."""
    out = []
    for cov in coverage(conn):
        index = f"pgclip.{cov.model.index_name}"
        row = conn.execute(INDEXES["state"], {"index": index}).fetchone()
        size, valid = (row[0], row[1]) if row else (None, None)
        progress = record = None
        built: dict[str, int] = {}
        if cov.model.index_kind == "none":
            state = "none"
        elif valid:
            state = "built"
            record = _build_record(conn.execute(INDEXES["build_record"], {"index": index}).fetchone()[0])
            built = built_params(conn, cov.model)
        elif (p := conn.execute(INDEXES["progress"], {"index": index}).fetchone()) is not None:
            state = "building"
            _, done, total, _, _ = p
            progress = min(1.0, done / total) if total else None
        else:
            state = "invalid" if row else "deferred"
        out.append(IndexInfo(cov, size if valid else None, valid, state, progress, record, built))
    return out


_RECORD = {"seconds": (int, float), "maintenance_work_mem": str, "vectors": int, "at": str, "by": str}


def _build_record(text: str | None) -> dict[str, Any] | None:
    """The build record a deferred build left as the index's comment; None for any other comment."""
    try:
        record = json.loads(text) if text else None
    except ValueError:
        return None
    if not isinstance(record, dict) or not all(isinstance(record.get(k), t) for k, t in _RECORD.items()):
        return None
    return {k: record[k] for k in _RECORD}


# --- the deferred index ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BuildState:
    valid: bool | None  # the index: None missing, False INVALID (a build failed or runs), True built
    has_vectors: bool
    backlog: bool  # open jobs (pending or leased) for the model
    ingesting: bool  # a `pgclip ingest` into the model is running

    @property
    def due(self) -> bool:
        """Time to build: vectors to index, none still coming (no open job, no ingest running)."""
        return not self.valid and self.has_vectors and not self.backlog and not self.ingesting


def build_state(conn: psycopg.Connection, model: ModelRow) -> BuildState:
    row = conn.execute(INDEXES["build_state"], {"index": f"pgclip.{model.index_name}", "model_id": model.id,
                                                "ingest_class": INGEST_CLASS}).fetchone()
    return BuildState(*row)


@dataclasses.dataclass(frozen=True)
class BuildReport:
    model: ModelRow
    seconds: float
    memory: str  # maintenance_work_mem of the build
    vectors: int
    size_bytes: int


def build_deferred(url: str, model: ModelRow, *, wait: bool = False, app_name: str | None = None,
                   connected: Callable[[psycopg.Connection], None] | None = None,
                   on_built: Callable[[], None] | None = None) -> BuildReport | None:
    """Build ``model``'s missing (or INVALID) index, once, with ``CREATE INDEX CONCURRENTLY``:
    searches and writes go on meanwhile. None when there was nothing to build.

    ``wait=False`` (a worker whose queue ran dry): only when the build is due (the model has
    vectors, no open job and no ingest running) and nobody else is building; returns at once
    otherwise. ``wait=True`` (before an activation): whenever the index is missing, after
    waiting for a build or rebuild in progress. ``connected`` gets the build's connection
    (a stopping worker cancels the build through it: the index is left INVALID, and the
    next build drops it and starts again); ``on_built`` is called when the index was found
    built already.
    """
    if model.index_kind == "none":
        return None
    with connect(url, role="index-build", autocommit=True, app_name=app_name) as conn:
        if connected is not None:
            connected(conn)
        state = build_state(conn, model)
        if state.valid and on_built is not None:
            on_built()
        if state.valid or not (wait or state.due):
            return None
        lock = {"lock_class": _LOCK_CLASS, "model_id": model.id}
        if wait:
            conn.execute(INDEXES["lock"], lock)
        elif not conn.execute(INDEXES["try_lock"], lock).fetchone()[0]:
            return None  # another worker (or a rebuild) is at it
        try:
            # Again under the lock: another builder may have finished, a rebuild changed the kind.
            model = model_by_id(conn, model.id)
            state = build_state(conn, model)
            if model.index_kind == "none" or state.valid or not (wait or state.due):
                return None
            memory = conn.execute(INDEXES["build_session"], {"floor": BUILD_MEMORY_FLOOR}).fetchone()[0]
            t0 = time.perf_counter()
            conn.execute(drop_index_ddl(model.index_name, concurrently=True))  # an INVALID leftover
            conn.execute(index_ddl(model, rows=vector_count(conn, model), concurrently=True))
            seconds = time.perf_counter() - t0
            vectors = vector_count(conn, model)
            record = {"seconds": round(seconds, 2), "maintenance_work_mem": memory, "vectors": vectors,
                      "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      "by": app_name or application_name("index-build")}
            conn.execute(sql.SQL("COMMENT ON INDEX pgclip.{} IS {}").format(
                sql.Identifier(model.index_name), sql.Literal(json.dumps(record))))
            size = conn.execute(INDEXES["size"], {"index": f"pgclip.{model.index_name}"}).fetchone()[0]
            return BuildReport(model, seconds, memory, vectors, size)
        finally:
            with contextlib.suppress(psycopg.Error):  # a cancelled or lost connection: its session ends anyway
                conn.execute(INDEXES["unlock"], lock)


def defer_index(url: str, model: ModelRow, *, only_empty: bool) -> tuple[bool, int]:
    """Drop ``model``'s built index so that the vectors to come go in by plain inserts and the
    index is built once, after them (:func:`build_deferred`). ``only_empty``: only an index over no
    vector yet (a new model's, a fresh collection's: nothing to rebuild), and only when nobody is
    building it; otherwise refuse (ConfigError) while a build or rebuild runs.

    Returns (dropped, the vectors it indexed). Call it with no transaction open on the database
    (DROP INDEX CONCURRENTLY waits for every older one).
    """
    if model.index_kind == "none":
        return False, 0
    with connect(url, role="index-build", autocommit=True) as conn:
        state = build_state(conn, model)
        if not state.valid or (only_empty and state.has_vectors):
            return False, 0
        lock = {"lock_class": _LOCK_CLASS, "model_id": model.id}
        if not conn.execute(INDEXES["try_lock"], lock).fetchone()[0]:
            if only_empty:
                return False, 0
            raise ConfigError(f"the index of {model.label} is being built or rebuilt right now: "
                              "wait for it (`pgclip index`), or go without bulk mode")
        try:
            vectors = vector_count(conn, model)
            if only_empty and vectors:
                return False, 0
            conn.execute(drop_index_ddl(model.index_name, concurrently=True))
        finally:
            conn.execute(INDEXES["unlock"], lock)
    return True, vectors


@dataclasses.dataclass(frozen=True)
class IngestPlan:
    dropped: bool  # the model's index was dropped for this ingest (bulk mode)
    vectors: int  # the model's vectors when it was dropped
    deferred: bool  # the model has no usable index: this ingest's vectors go in by plain inserts


def prepare_ingest(conn: psycopg.Connection, url: str, model: ModelRow, *, bulk: bool) -> IngestPlan:
    """Before `pgclip ingest` into ``model``: hold the ingest lock on ``conn`` for the rest of its
    session (a deferred index waits for the ingest's last image), and drop the model's index when
    this ingest should fill the model in bulk: when asked (``bulk``), or when the index holds no
    vector yet (a fresh collection's first ingest: nothing is lost). Commits."""
    conn.execute(INDEXES["hold_for_ingest"], {"ingest_class": INGEST_CLASS, "model_id": model.id})
    conn.commit()  # no snapshot held: a CONCURRENTLY drop or build waits for every older one
    dropped, vectors = defer_index(url, model, only_empty=not bulk)
    if model.index_kind == "none":
        return IngestPlan(False, 0, False)
    valid = build_state(conn, model).valid
    conn.commit()
    return IngestPlan(dropped, vectors, not valid)
