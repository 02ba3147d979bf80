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
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pgclip.core.errors import ConfigError, InvalidInput
from pgclip.db.engine import connect
from pgclip.db.models import (
    BUILD_PARAMS,
    HNSW_DEFAULTS,
    MODELS,
    Coverage,
    ModelRow,
    coverage,
    drop_index_ddl,
    index_ddl,
    model_by_id,
    vector_count,  # noqa: F401  (pgclip.db.indexes.vector_count too: choose() takes the count)
)
from pgclip.db.queries import load

INDEXES = load("indexes.sql")

KINDS = ("hnsw", "ivfflat", "none")
QUERY_PARAMS = {"hnsw": ("ef_search",), "ivfflat": ("probes",), "none": ()}
LIMITS = {"m": (2, 100), "ef_construction": (4, 1000), "ef_search": (1, 1000), "lists": (1, 32768), "probes": (1, 32768)}
_LOCK_CLASS = 0x70676370  # pg_advisory_lock(class, model id): one rebuild per model at a time ("pgcp")


@dataclasses.dataclass(frozen=True)
class IndexChoice:
    kind: str
    storage: str
    params: dict[str, int]

    def describe(self) -> str:
        if self.kind == "none":
            return "none (exact search)"
        order = BUILD_PARAMS[self.kind] + QUERY_PARAMS[self.kind]
        settings = ", ".join(f"{k}={self.params[k]}" for k in order if k in self.params)
        return f"{self.kind} over {self.storage} ({settings})"


def current_choice(model: ModelRow) -> IndexChoice:
    return IndexChoice(model.index_kind, model.storage, dict(model.index_params))


def choose(model: ModelRow, rows: int, *, kind: str | None = None, halfvec: bool | None = None,
           **params: int | None) -> IndexChoice:
    """The index ``model`` gets from these options; what is not given stays as it is (same kind)
    or takes pgvector's advice (a new kind: IVFFlat lists = rows / 1000, probes = sqrt(lists))."""
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
        merged = {**HNSW_DEFAULTS, **kept, **given}
        if merged["ef_construction"] < 2 * merged["m"]:  # pgvector's own rule
            raise InvalidInput(f"ef_construction must be at least twice m ({2 * merged['m']}), "
                               f"got {merged['ef_construction']}")
    else:
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


def rebuild(url: str, model: ModelRow, choice: IndexChoice, *, build_memory: str = "1GB") -> RebuildReport:
    """Give ``model`` the index ``choice`` describes without stopping searches (see the module doc)."""
    previous = current_choice(model)
    staged, retired = model.staged_index_name, model.retired_index_name
    t0 = time.perf_counter()
    # CREATE/DROP INDEX CONCURRENTLY cannot run inside a transaction block.
    with connect(url, role="index-rebuild", autocommit=True) as conn:
        lock = {"lock_class": _LOCK_CLASS, "model_id": model.id}
        if not conn.execute(INDEXES["try_lock"], lock).fetchone()[0]:
            raise ConfigError(f"another `pgclip index rebuild` of {model.label} is running: wait for it to finish")
        # Leftovers of a rebuild that was interrupted (an INVALID index, or an old one not dropped yet).
        for name in (staged, retired):
            conn.execute(drop_index_ddl(name, concurrently=True))
        target = dataclasses.replace(model, index_kind=choice.kind, storage=choice.storage, index_params=choice.params)
        index_exists = conn.execute(INDEXES["exists"], {"index": f"pgclip.{model.index_name}"}).fetchone()[0]
        build = choice.kind != "none" and (_build_part(choice) != _build_part(previous) or not index_exists)
        if build:
            try:
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
                                               "params": Jsonb(choice.params), "model_id": model.id})
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


def describe_indexes(conn: psycopg.Connection) -> list[IndexInfo]:
    """Each model's coverage and its index as it exists in the database: size and validity."""
    out = []
    for cov in coverage(conn):
        row = conn.execute(INDEXES["state"], {"index": f"pgclip.{cov.model.index_name}"}).fetchone()
        out.append(IndexInfo(cov, row[0] if row else None, row[1] if row else None))
    return out
