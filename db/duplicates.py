"""Near-duplicate images: pairs whose vectors are almost the same, grouped transitively.

Byte-identical files are already one row (sha256). This finds the resized,
re-encoded and lightly cropped copies: each image's few nearest neighbours by
the model's HNSW index, kept above a similarity threshold, then joined into
groups (if a ~ b and b ~ c, then a, b and c are one group).
"""

from __future__ import annotations

import dataclasses

import psycopg
from psycopg import sql

from pgclip.core.errors import InvalidInput
from pgclip.db.models import ModelRow, require_active_model, vector_sql
from pgclip.db.queries import load

DUPLICATES = load("duplicates.sql")

NEIGHBOURS = 5  # per image: copies beyond the 5th nearest are still found through the others
MIN_THRESHOLD = 0.5
# hnsw.ef_search for the neighbour lookups unless the model sets one: at pgvector's default of 40,
# 0.56 % of 30,000 clustered vectors were not found by their own vector (benchmarks/duplicates.py),
# so whole groups of copies went missing; at 100, about 0.05 %.
EF_SEARCH = 100


@dataclasses.dataclass(frozen=True)
class Group:
    ids: list[int]
    max_similarity: float
    min_similarity: float


def _pairs(conn: psycopg.Connection, model: ModelRow, threshold: float) -> list[tuple[int, int, float]]:
    """Each image's nearest neighbours above the threshold (in the caller's transaction)."""
    if model.index_kind == "hnsw":
        ef_search = max(NEIGHBOURS, int(model.index_params.get("ef_search", EF_SEARCH)))
        conn.execute(DUPLICATES["hnsw_ef_search"], {"value": str(ef_search)})
    elif model.index_kind == "ivfflat":
        probes = int(model.index_params.get("probes", 1))
        conn.execute(DUPLICATES["ivfflat_probes"], {"value": str(probes)})
    query = sql.SQL(DUPLICATES["pairs"]).format(model_id=sql.Literal(int(model.id)), **vector_sql(model))
    return conn.execute(query, {"neighbours": NEIGHBOURS, "max_distance": 1 - threshold}).fetchall()


def near_duplicates(conn: psycopg.Connection, threshold: float = 0.95) -> tuple[ModelRow, list[Group]]:
    """Groups of near-identical images under the active model, largest first."""
    if not MIN_THRESHOLD <= threshold <= 1.0:
        raise InvalidInput(f"threshold must be between {MIN_THRESHOLD} and 1, got {threshold}")
    with conn.transaction():
        model = require_active_model(conn)
        pairs = _pairs(conn, model, threshold)
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for a, b, _ in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for x in parent:
        members.setdefault(find(x), []).append(x)
    sims: dict[int, list[float]] = {}
    for a, _, s in pairs:
        sims.setdefault(find(a), []).append(float(s))
    groups = [
        Group(sorted(ids), max(sims[root]), min(sims[root])) for root, ids in members.items() if len(ids) > 1
    ]
    groups.sort(key=lambda g: (-len(g.ids), -g.max_similarity, g.ids[0]))
    return model, groups
