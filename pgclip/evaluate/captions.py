"""The ``captions`` protocol (seed 000): caption -> image rank among the top k, and its result."""

from __future__ import annotations

import collections
import dataclasses
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgclip.core.errors import InvalidInput, NotFound
from pgclip.evaluate.common import (
    CAPTION_TOP,
    PAPER_CAPTIONS,
    TEXT_BATCH,
    Encoder,
    Progress,
    _check_encoder,
    _no_progress,
    _resolved,
)

if TYPE_CHECKING:  # psycopg and the db modules load when a command runs, not with the CLI
    import psycopg

    from pgclip.db.models import ModelRow
    from pgclip.workers.manifest import Manifest


@dataclasses.dataclass
class CaptionQuery:
    key: str  # the manifest's name for the image
    image_id: int
    caption: str
    rank: int | None  # 1-based rank of the right image among the top k; None = not in the top k


@dataclasses.dataclass
class CaptionResult:
    manifest: str
    model: str
    manifest_images: int
    no_caption: int
    missing: int  # manifest images with no stored image of that path or file name
    ambiguous: int  # the file name matches several stored images and the path none of them
    not_embedded: int  # stored but without a vector for the active model
    filtered_out: int  # stored and embedded, but excluded by --filter
    eligible: int
    corpus: int  # embedded images the search ranks (after filters)
    n: int
    seed: int
    k: int
    caption: str  # "first" or "random"
    filters: dict[str, Any]
    queries: list[CaptionQuery]

    @property
    def recall(self) -> dict[int, float]:
        """Top-K accuracy for K = 1..k (the share of queries whose image is in the top K)."""
        total = len(self.queries) or 1
        return {K: sum(1 for q in self.queries if q.rank is not None and q.rank <= K) / total
                for K in range(1, self.k + 1)}

    @property
    def mrr(self) -> float:
        """Mean reciprocal rank, counting a miss (not in the top k) as 0."""
        return sum(1 / q.rank for q in self.queries if q.rank) / (len(self.queries) or 1)

    def as_dict(self) -> dict[str, Any]:
        recall = self.recall
        return {
            "protocol": "captions",
            "manifest": self.manifest, "model": self.model,
            "manifest_images": self.manifest_images, "no_caption": self.no_caption, "missing": self.missing,
            "ambiguous": self.ambiguous, "not_embedded": self.not_embedded, "filtered_out": self.filtered_out,
            "eligible": self.eligible, "corpus": self.corpus,
            "n": self.n, "queries_run": len(self.queries), "seed": self.seed, "k": self.k, "caption": self.caption,
            "filters": self.filters,
            "top": {str(K): recall[K] for K in CAPTION_TOP if K <= self.k},
            "recall_at": {str(K): v for K, v in recall.items()},
            "mrr": self.mrr,
            "chance": {str(K): min(1.0, K / self.corpus) if self.corpus else None for K in CAPTION_TOP if K <= self.k},
            "paper": {"source": PAPER_CAPTIONS["source"], "top": {str(K): v for K, v in PAPER_CAPTIONS["top"].items()}},
            "results": [dataclasses.asdict(q) for q in self.queries],
        }


def _basename(source: str) -> str:
    return source.replace("\\", "/").rsplit("/", 1)[-1]


def match_manifest(conn: psycopg.Connection, manifest: Manifest, model: ModelRow) -> dict[str, tuple[int, bool] | str]:
    """Each manifest key -> (image id, embedded) or the reason it has none ("missing", "ambiguous").

    A stored image matches when its source resolves to the manifest's path, else
    when its file name is the manifest entry's file name and only one stored
    image has that name (Flickr30k's ``results.csv`` lists bare file names).
    """
    from pgclip.db.evaluation import stored_sources

    names = {Path(key).name for key in manifest.entries}
    by_name: dict[str, list[tuple[int, str, bool]]] = collections.defaultdict(list)
    with conn.transaction():
        rows = stored_sources(conn, model)
    for row in rows:
        name = _basename(row.source)
        if name in names:
            by_name[name].append((row.image_id, row.source, row.embedded))
    out: dict[str, tuple[int, bool] | str] = {}
    for key in manifest.entries:
        candidates = by_name.get(Path(key).name, [])
        if not candidates:
            out[key] = "missing"
            continue
        target = _resolved(manifest.resolve(key))
        exact = [c for c in candidates if _resolved(Path(c[1])) == target]
        if exact:
            out[key] = (exact[0][0], exact[0][2])
        elif len(candidates) == 1:
            out[key] = (candidates[0][0], candidates[0][2])
        else:
            out[key] = "ambiguous"
    return out


def eval_captions(
    conn: psycopg.Connection,
    encoder: Encoder,
    manifest: Manifest,
    *,
    n: int = 500,
    seed: int = 0,
    k: int = 10,
    caption: str = "first",
    filters: dict[str, Any] | None = None,
    ts_config: str = "english",
    progress: Progress = _no_progress,
) -> CaptionResult:
    """The seed-000 protocol: n sampled images, one caption each as a text query, rank of the image.

    Images must be stored and embedded already (``pgclip ingest DIR --captions
    MANIFEST``, then ``pgclip worker --until-empty``). The sample is drawn with
    ``random.Random(seed)`` from the eligible images sorted by manifest key; the
    caption is the image's first in the manifest, or (``caption="random"``) one
    drawn with the same generator.
    """
    from pgclip.db import evaluation as db_eval
    from pgclip.db.models import require_active_model
    from pgclip.workers.manifest import Manifest

    filters = dict(filters or {})
    _check_options(n=n, k=k, caption=caption, filters=filters)
    with conn.transaction():
        model = require_active_model(conn)
    _check_encoder(encoder, model)
    if not manifest.entries:
        raise InvalidInput(f"{manifest.path}: the manifest names no images")

    with_captions = {key: e for key, e in manifest.entries.items() if e.captions}
    matches = match_manifest(conn, Manifest(manifest.path, with_captions), model)
    counts = collections.Counter(m if isinstance(m, str) else ("embedded" if m[1] else "not_embedded")
                                 for m in matches.values())
    eligible = sorted((key, m[0]) for key, m in matches.items() if not isinstance(m, str) and m[1])

    where = db_eval.filter_clause(conn, filters)  # the search's own filter, so the corpus is what it ranks
    with conn.transaction():
        corpus = db_eval.corpus_size(conn, model, where)
        filtered_out = 0
        if filters:
            passing = db_eval.passing_filter(conn, [image_id for _, image_id in eligible], where)
            filtered_out = sum(1 for _, image_id in eligible if image_id not in passing)
            eligible = [(key, image_id) for key, image_id in eligible if image_id in passing]
    if not eligible:
        raise NotFound(
            f"none of the {len(with_captions)} captioned images in {manifest.path} has a vector for the active model "
            f"{model.label} ({counts['missing']} not in the database, {counts['not_embedded']} not embedded"
            f"{f', {filtered_out} filtered out' if filtered_out else ''}): run `pgclip ingest DIR --captions "
            f"{manifest.path}` and `pgclip worker --until-empty`"
        )

    rng = random.Random(seed)
    sample = rng.sample(eligible, min(n, len(eligible)))
    chosen = [(key, image_id, with_captions[key].captions[0] if caption == "first"
               else rng.choice(with_captions[key].captions)) for key, image_id in sample]

    queries = _rank(conn, encoder, model, chosen, filters=filters, k=k, ts_config=ts_config, progress=progress)
    return CaptionResult(
        manifest=str(manifest.path), model=model.label, manifest_images=len(manifest.entries),
        no_caption=len(manifest.entries) - len(with_captions), missing=counts["missing"],
        ambiguous=counts["ambiguous"], not_embedded=counts["not_embedded"], filtered_out=filtered_out,
        eligible=len(eligible), corpus=int(corpus), n=n, seed=seed, k=k, caption=caption, filters=filters,
        queries=queries,
    )


def _check_options(*, n: int, k: int, caption: str, filters: dict[str, Any]) -> None:
    from pgclip.db import search as db_search

    if n < 1:
        raise InvalidInput(f"n must be at least 1, got {n}")
    if not 1 <= k <= db_search.MAX_K:
        raise InvalidInput(f"k must be between 1 and {db_search.MAX_K}, got {k}")
    if caption not in ("first", "random"):
        raise InvalidInput(f"caption must be first or random, got {caption!r}")
    if "exclude_ids" in filters:
        raise InvalidInput("the exclude_ids filter would hide right answers; use metadata filters instead")


def _rank(conn: psycopg.Connection, encoder: Encoder, model: ModelRow, chosen: list[tuple[str, int, str]], *,
          filters: dict[str, Any], k: int, ts_config: str, progress: Progress) -> list[CaptionQuery]:
    """Each (key, image id, caption) as a text search, with the rank of its image in the top k."""
    from pgclip.db import search as db_search

    encoder.load()
    queries: list[CaptionQuery] = []
    with progress(len(chosen), "query", "eval captions") as bar:
        for start in range(0, len(chosen), TEXT_BATCH):
            batch = chosen[start:start + TEXT_BATCH]
            vectors = encoder.encode_texts([text for _, _, text in batch])
            for (key, image_id, text), vector in zip(batch, vectors, strict=True):
                page = db_search.search(
                    conn, db_search.SearchParams(vector=vector, filters=filters, k=k, ts_config=ts_config), model=model,
                )
                rank = next((r for r, hit in enumerate(page.hits, start=1) if hit.image_id == image_id), None)
                queries.append(CaptionQuery(key, image_id, text, rank))
                bar.update(1)
    return queries
