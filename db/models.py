"""The CLIP models a database knows, and each model's vector index.

Vectors of every model share ``pgclip.embeddings``; each model gets its own
partial expression index, HNSW by default::

    CREATE INDEX embeddings_m1_vectors ON pgclip.embeddings
    USING hnsw ((embedding::vector(512)) vector_cosine_ops) WHERE model_id = 1

or IVFFlat, or none (exact search), over ``vector`` or ``halfvec`` (the model's
``index_kind``, ``storage`` and ``index_params``; ``pgclip index rebuild``
changes them, see :mod:`pgclip.db.indexes`).

The planner uses such an index only when a query repeats the expression and the
predicate *literally*: ``model_id = $1`` as a bound parameter falls back to a
sequential scan under a generic plan. So every vector query is composed with
:func:`vector_sql`, which writes the model id, dimension and storage type as
literals (they come from the ``models`` table, never from a user).

The registry's statements are in ``db/sql/models.sql``; the DDL of an index
(:func:`index_ddl`, :func:`drop_index_ddl`) is composed here, because its name,
dimension and storage type are identifiers and literals that cannot be bound.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from pgclip.core.errors import ConfigError, NotFound, NotReady
from pgclip.db.queries import load

MODELS = load("models.sql")


@dataclasses.dataclass(frozen=True)
class ModelRow:
    id: int
    name: str
    pretrained: str
    dimension: int
    state: str
    created_at: dt.datetime
    index_kind: str = "hnsw"  # hnsw | ivfflat | none
    storage: str = "vector"  # vector | halfvec: the type the index compares vectors as
    index_params: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def index_name(self) -> str:
        return f"embeddings_m{self.id}_vectors"

    @property
    def staged_index_name(self) -> str:
        """Where `pgclip index rebuild` builds the new index before the swap."""
        return f"embeddings_m{self.id}_next"

    @property
    def retired_index_name(self) -> str:
        """Where the old index waits to be dropped after the swap."""
        return f"embeddings_m{self.id}_old"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.pretrained})"


def get_model(conn: psycopg.Connection, name: str, pretrained: str) -> ModelRow | None:
    with conn.cursor(row_factory=class_row(ModelRow)) as cur:
        return cur.execute(MODELS["by_name"], {"name": name, "pretrained": pretrained}).fetchone()


def active_model(conn: psycopg.Connection) -> ModelRow | None:
    """The model that answers searches, or None before any model is registered."""
    with conn.cursor(row_factory=class_row(ModelRow)) as cur:
        return cur.execute(MODELS["active"]).fetchone()


def list_models(conn: psycopg.Connection) -> list[ModelRow]:
    with conn.cursor(row_factory=class_row(ModelRow)) as cur:
        return cur.execute(MODELS["all"]).fetchall()


def require_active_model(conn: psycopg.Connection) -> ModelRow:
    model = active_model(conn)
    if model is None:
        raise NotReady("no active model: run `pgclip migrate` to register the configured one")
    return model


def ensure_model(
    conn: psycopg.Connection, name: str, pretrained: str, dimension: int, *, hnsw_m: int | None = None,
    hnsw_ef_construction: int | None = None,
) -> ModelRow:
    """Register a model (idempotent) and, when its row is new, create its (empty) vector index; commits.

    The first model a database sees becomes active; later ones start as
    ``building`` until someone activates them. A model already registered is left
    as it is, index included: a missing index is deferred (built CONCURRENTLY when
    the model's backlog drains, :func:`pgclip.db.indexes.build_deferred`), never
    recreated here, where a CREATE INDEX would block every writer while it runs.
    `pgclip reembed` and `pgclip ingest` drop a new model's empty index so that
    its vectors go in by plain inserts (:func:`pgclip.db.indexes.defer_index`).
    ``hnsw_m`` / ``hnsw_ef_construction``: fixed for the model; None (the default): each build
    chooses them from the model's vectors (:func:`hnsw_graph`).
    """
    fixed = {"m": hnsw_m, "ef_construction": hnsw_ef_construction}
    new = conn.execute(MODELS["register"], {
        "name": name, "pretrained": pretrained, "dimension": dimension,
        "index_params": Jsonb({k: v for k, v in fixed.items() if v is not None}),
    }).fetchone() is not None
    model = get_model(conn, name, pretrained)
    assert model is not None
    if model.dimension != dimension:
        raise ConfigError(
            f"model {model.label} is registered with dimension {model.dimension}, but its config says {dimension}"
        )
    conn.execute(MODELS["activate_if_none"], {"model_id": model.id})
    if new and (ddl := index_ddl(model)) is not None:
        conn.execute(ddl)  # over no vector yet: instant
    conn.commit()
    return get_model(conn, name, pretrained)  # type: ignore[return-value]


def registered_model(conn: psycopg.Connection, name: str, pretrained: str) -> ModelRow | None:
    """The model if :func:`ensure_model` would have nothing to do: its row exists and some
    model is active. None otherwise (then call ensure_model)."""
    model = get_model(conn, name, pretrained)
    if model is None:
        return None
    ready = conn.execute(MODELS["is_ready"]).fetchone()[0]
    return model if ready else None


BUILD_PARAMS = {"hnsw": ("m", "ef_construction"), "ivfflat": ("lists",), "none": ()}
# The HNSW graph by the collection's size, for a model whose m and ef_construction nobody fixed
# (PGCLIP_HNSW_M / PGCLIP_HNSW_EF_CONSTRUCTION, `pgclip index rebuild --m/--ef-construction`): the
# cheapest graph that keeps recall@10 >= 0.97 at ef_search 200 (the search's candidate window),
# from benchmarks/index.py --grid at 100k, 500k and 1M CLIP-like vectors (benchmarks/README.md,
# "HNSW graphs by size"). 16/64 is cheapest to build and to insert into, but at 1M it stops at
# 0.969 however far a search walks it (0.959 at ef_search 200); 16/128 gives 0.980 there at the
# same size and latency (build 1.4x); m 24 was slower at every recall. (rows up to, graph); the
# last applies to any size.
HNSW_BY_SIZE: tuple[tuple[int | None, dict[str, int]], ...] = (
    (500_000, {"m": 16, "ef_construction": 64}),
    (None, {"m": 16, "ef_construction": 128}),
)


def hnsw_graph(rows: int) -> dict[str, int]:
    """The HNSW graph (m, ef_construction) for ``rows`` vectors, when the user fixed neither."""
    for limit, graph in HNSW_BY_SIZE:
        if limit is None or rows <= limit:
            return dict(graph)
    raise AssertionError("HNSW_BY_SIZE ends with a bound of None")


def index_ddl(model: ModelRow, *, rows: int = 0, name: str | None = None,
              concurrently: bool = False) -> sql.Composed | None:
    """CREATE INDEX for the model's index as its row describes it (None for kind ``none``); an
    HNSW parameter the row does not fix comes from the size (``rows`` vectors to index)."""
    if model.index_kind == "none":
        return None
    if model.index_kind == "hnsw":
        params = {**hnsw_graph(rows), **model.index_params}
        if "ef_construction" not in model.index_params:  # by size, but not under pgvector's floor for a fixed m
            params["ef_construction"] = max(params["ef_construction"], 2 * params["m"])
    else:
        params = {"lists": 100, **model.index_params}
    with_params = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.SQL(key), sql.Literal(int(params[key])))
        for key in BUILD_PARAMS[model.index_kind]
    )
    return sql.SQL(
        "CREATE INDEX {concurrently} IF NOT EXISTS {index} ON pgclip.embeddings"
        " USING {kind} ((embedding::{storage}({dim})) {opclass}) WITH ({with_params}) WHERE model_id = {model_id}"
    ).format(
        concurrently=sql.SQL("CONCURRENTLY" if concurrently else ""),
        index=sql.Identifier(name or model.index_name),
        kind=sql.SQL(model.index_kind),  # checked by the models table's constraints
        storage=sql.SQL(model.storage),
        dim=sql.Literal(int(model.dimension)),
        opclass=sql.SQL(f"{model.storage}_cosine_ops"),
        with_params=with_params,
        model_id=sql.Literal(int(model.id)),
    )


def model_exists(conn: psycopg.Connection, model_id: int) -> bool:
    """False once the model was dropped (`pgclip models drop`)."""
    return conn.execute(MODELS["exists"], {"model_id": model_id}).fetchone()[0]


def model_by_id(conn: psycopg.Connection, model_id: int) -> ModelRow:
    with conn.cursor(row_factory=class_row(ModelRow)) as cur:
        row = cur.execute(MODELS["by_id"], {"model_id": model_id}).fetchone()
    if row is None:
        raise NotFound(f"no model with id {model_id}")
    return row


def vector_sql(model: ModelRow) -> dict[str, sql.Composable]:
    """Fragments that let a query use ``model``'s index: the indexed expression, the
    predicate and the query-vector cast, with id, dimension and storage type written as literals."""
    dim = sql.Literal(int(model.dimension))
    storage = sql.SQL(model.storage)  # checked by the models table's constraints
    return {
        "vec": sql.SQL("(e.embedding::{storage}({dim}))").format(storage=storage, dim=dim),
        "model_pred": sql.SQL("e.model_id = {id}").format(id=sql.Literal(int(model.id))),
        "qcast": sql.SQL("{storage}({dim})").format(storage=storage, dim=dim),
    }


def activate_if_unused(conn: psycopg.Connection, model: ModelRow) -> bool:
    """Make ``model`` the active one if the active model has no vectors at all; commits.

    A fresh database registers the configured model as active; when a first run
    switches models before anything was embedded (the demo falling back to the
    test model), nothing is lost by switching. With vectors present, switching
    is a deliberate act (re-embed, then activate).
    """
    with conn.transaction():
        current = conn.execute(MODELS["lock_active"]).fetchone()
        if current is None or current[0] == model.id:
            return False
        if conn.execute(MODELS["has_vectors"], {"model_id": current[0]}).fetchone()[0]:
            return False
        conn.execute(MODELS["set_state"], {"state": "building", "model_id": current[0]})
        conn.execute(MODELS["set_state"], {"state": "active", "model_id": model.id})
    return True


@dataclasses.dataclass(frozen=True)
class Coverage:
    model: ModelRow
    vectors: int
    images: int

    @property
    def fraction(self) -> float:
        return 1.0 if self.images == 0 else self.vectors / self.images

    @property
    def percent(self) -> str:
        """The fraction as people read it, rounded down: 8414 of 8420 is 99.9 %, never 100 %."""
        tenths = self.vectors * 1000 // self.images if self.images else 1000
        return f"{tenths // 10}%" if tenths % 10 == 0 else f"{tenths / 10:.1f}%"


def coverage(conn: psycopg.Connection) -> list[Coverage]:
    """Every model with how many of the collection's images have its vector."""
    images = conn.execute(MODELS["image_count"]).fetchone()[0]
    counts = dict(conn.execute(MODELS["vector_counts"]).fetchall())
    return [Coverage(m, counts.get(m.id, 0), images) for m in list_models(conn)]


def find_model(conn: psycopg.Connection, name: str, pretrained: str | None = None) -> ModelRow:
    """The model called ``name`` (and ``pretrained``, needed only when several share the name)."""
    named = [m for m in list_models(conn) if m.name == name]
    rows = [m for m in named if pretrained is None or m.pretrained == pretrained]
    if not rows and named:
        tags = ", ".join(m.pretrained for m in named)
        raise NotFound(f"no model {name!r} with weights {pretrained!r} is registered (its weights here: {tags})")
    if not rows:
        raise NotFound(f"no model {name!r} is registered: `pgclip models` lists them")
    if len(rows) > 1:
        tags = ", ".join(m.pretrained for m in rows)
        raise ConfigError(f"several {name} models are registered ({tags}): name the weights with --pretrained")
    return rows[0]


def check_activation(conn: psycopg.Connection, model: ModelRow, *, force: bool = False) -> None:
    """Refuse (ConfigError) to activate ``model`` while some images have no vector for it, unless
    forced, or unless each of them is one no model can embed (its job for ``model`` failed and it
    has no vector under any model: switching loses no search result).

    :func:`activate` checks it itself; callers that build the model's deferred index before
    activating check first, so that a refusal builds nothing.
    """
    if model.state == "active" or force:
        return  # nothing to switch, or the caller accepts the gap
    images, missing, failed, unembeddable = conn.execute(MODELS["activation_gap"], {"model_id": model.id}).fetchone()
    if missing == unembeddable:
        return
    cov = Coverage(model, images - missing, images)
    why = (f"; {failed} of the others failed and will not get one (`pgclip status` says why; "
           "`pgclip retry-failed` tries them again)") if failed else ""
    advice = ("let its workers finish (`pgclip status`)" if missing > failed else
              "the failed images have vectors under another model, which searches would lose")
    raise ConfigError(
        f"{model.label} has vectors for {cov.vectors} of {cov.images} images ({cov.percent}){why}: "
        f"{advice}, or activate anyway with --force"
    )


def activate(conn: psycopg.Connection, model: ModelRow, *, force: bool = False) -> ModelRow | None:
    """Make ``model`` answer searches, in one transaction; returns the model it replaced.

    Refuses (ConfigError) while some images have no vector for it, unless forced.
    """
    with conn.transaction():
        # Serialise concurrent activations on the row of the model being replaced.
        current = conn.execute(MODELS["lock_active"]).fetchone()
        if current and current[0] == model.id:
            return None
        check_activation(conn, model, force=force)
        conn.execute(MODELS["retire_active"])
        conn.execute(MODELS["set_state"], {"state": "active", "model_id": model.id})
    return model_by_id(conn, current[0]) if current else None


def drop(conn: psycopg.Connection, model: ModelRow) -> int:
    """Remove a model that is not active: its vectors, queue rows and index. Returns the vectors removed."""
    with conn.transaction():
        state = conn.execute(MODELS["lock_model"], {"model_id": model.id}).fetchone()
        if state is None:
            raise NotFound(f"no model with id {model.id}")
        if state[0] == "active":
            raise ConfigError(f"{model.label} is the active model: activate another one before dropping it")
        removed = vector_count(conn, model)
        # Its index, and those an interrupted `pgclip index rebuild` may have left.
        for name in (model.index_name, model.staged_index_name, model.retired_index_name):
            conn.execute(drop_index_ddl(name))
        conn.execute(MODELS["delete"], {"model_id": model.id})  # cascades to vectors and jobs
    return removed


def vector_count(conn: psycopg.Connection, model: ModelRow) -> int:
    """How many vectors ``model`` has."""
    return conn.execute(MODELS["vector_count"], {"model_id": model.id}).fetchone()[0]


def drop_index_ddl(name: str, *, concurrently: bool = False) -> sql.Composed:
    """DROP INDEX IF EXISTS for one of a model's index names (``ModelRow.index_name`` and its kin)."""
    return sql.SQL("DROP INDEX {concurrently} IF EXISTS pgclip.{name}").format(
        concurrently=sql.SQL("CONCURRENTLY" if concurrently else ""), name=sql.Identifier(name))
