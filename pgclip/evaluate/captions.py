"""The ``captions`` protocol (seed 000): an evaluation set of images, ranked both ways, and its result.

caption -> image: each sampled image's caption queries the SQL search restricted to the
set (metadata ``eval_set``), so N images rank among exactly N. image -> caption: each
image's stored vector against the text vectors of every caption of the set's images.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgclip.core.errors import InvalidInput, NotFound
from pgclip.evaluate.common import (
    CAPTION_TOP,
    MAX_K,
    MAX_SET_NAME,
    PAPER_CAPTIONS,
    RANK_CELLS,
    SET_KEY,
    TEXT_BATCH,
    Encoder,
    Progress,
    _check_encoder,
    _no_progress,
    _resolved,
)

if TYPE_CHECKING:  # psycopg, numpy and the db modules load when a command runs, not with the CLI
    import numpy as np
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
class ImageQuery:
    key: str
    image_id: int
    captions: int  # the image's own captions among the candidates
    rank: int  # 1-based rank of its best-ranked own caption among all the set's captions


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
    corpus: int  # images the caption -> image search ranks: the set's (after filters)
    n: int
    seed: int
    k: int
    caption: str  # "first" or "random"
    filters: dict[str, Any]
    queries: list[CaptionQuery]
    set_name: str = ""
    set_changes: dict[str, int] = dataclasses.field(default_factory=dict)  # added / moved / removed members
    caption_corpus: int = 0  # captions the image -> caption ranking ranks: those of the set's images
    image_queries: list[ImageQuery] = dataclasses.field(default_factory=list)
    ingested: dict[str, int] | None = None  # --images: what the ingest of the sample did
    candidates: int = 0  # what the sample was drawn from: embedded manifest images, or (--images) files found

    @property
    def recall(self) -> dict[int, float]:
        """caption -> image top-K accuracy for K = 1..k (the share of queries whose image is in the top K)."""
        total = len(self.queries) or 1
        return {K: sum(1 for q in self.queries if q.rank is not None and q.rank <= K) / total
                for K in range(1, self.k + 1)}

    @property
    def image_recall(self) -> dict[int, float]:
        """image -> caption top-K accuracy for K = 1..k (one of the image's captions in the top K)."""
        total = len(self.image_queries) or 1
        return {K: sum(1 for q in self.image_queries if q.rank <= K) / total for K in range(1, self.k + 1)}

    @property
    def mrr(self) -> float:
        """Mean reciprocal rank, counting a miss (not in the top k) as 0."""
        return sum(1 / q.rank for q in self.queries if q.rank) / (len(self.queries) or 1)

    @property
    def image_mrr(self) -> float:
        """image -> caption mean reciprocal rank, a rank over k counting as 0 (as for caption -> image)."""
        return sum(1 / q.rank for q in self.image_queries if q.rank <= self.k) / (len(self.image_queries) or 1)

    def chance(self, K: int) -> float | None:
        """caption -> image top-K accuracy of a random ranking."""
        return min(1.0, K / self.corpus) if self.corpus else None

    def image_chance(self, K: int) -> float | None:
        """image -> caption top-K accuracy of a random ranking: one of c own captions among K drawn of m."""
        m = self.caption_corpus
        if not m or not self.image_queries:
            return None
        total = 0.0
        for q in self.image_queries:
            miss = 1.0
            for i in range(min(K, m)):
                miss *= max(0, m - q.captions - i) / (m - i)
            total += 1 - miss
        return total / len(self.image_queries)

    def as_dict(self) -> dict[str, Any]:
        recall, image_recall = self.recall, self.image_recall
        tops = [K for K in CAPTION_TOP if K <= self.k]
        return {
            "protocol": "captions",
            "manifest": self.manifest, "model": self.model, "set": self.set_name, "set_changes": self.set_changes,
            "ingested": self.ingested,
            "manifest_images": self.manifest_images, "no_caption": self.no_caption, "missing": self.missing,
            "ambiguous": self.ambiguous, "not_embedded": self.not_embedded, "filtered_out": self.filtered_out,
            "eligible": self.eligible, "candidates": self.candidates, "corpus": self.corpus,
            "n": self.n, "queries_run": len(self.queries), "seed": self.seed, "k": self.k, "caption": self.caption,
            "filters": self.filters,
            "top": {str(K): recall[K] for K in tops},
            "recall_at": {str(K): v for K, v in recall.items()},
            "mrr": self.mrr,
            "chance": {str(K): self.chance(K) for K in tops},
            "image_to_caption": {
                "queries_run": len(self.image_queries), "corpus": self.caption_corpus,
                "top": {str(K): image_recall[K] for K in tops},
                "recall_at": {str(K): v for K, v in image_recall.items()},
                "mrr": self.image_mrr,
                "chance": {str(K): self.image_chance(K) for K in tops},
                "paper": "not reported",
                "results": [dataclasses.asdict(q) for q in self.image_queries],
            },
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


def set_name_for(manifest_path: Path, name: str | None) -> str:
    """The evaluation set's name: ``name``, else the manifest file's stem (``results`` for results.csv)."""
    name = Path(manifest_path).stem if name is None else name
    if not name.strip() or len(name) > MAX_SET_NAME or not name.isprintable():
        raise InvalidInput(f"set name must be 1 to {MAX_SET_NAME} printable characters, got {name!r}")
    return name


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
    set_name: str | None = None,
    images: Path | None = None,
    url: str | None = None,
    worker_options: dict[str, Any] | None = None,
    ts_config: str = "english",
    progress: Progress = _no_progress,
) -> CaptionResult:
    """The seed-000 protocol: an evaluation set of n sampled images, ranked caption -> image and image -> caption.

    The sample is drawn with ``random.Random(seed)`` from the candidates sorted by
    manifest key: the manifest's captioned images that are stored and embedded
    already, or, with ``images`` (a folder holding the manifest's files), those
    whose file is there; the sample is then ingested (captions from the manifest)
    and embedded in-process with ``encoder`` (``url`` for the worker's connections).
    The sampled images become the set ``set_name`` (default the manifest's stem):
    metadata ``eval_set`` = the name, written by one statement whatever the
    manifest's format, the set's earlier members untagged. Each image's caption
    (its first in the manifest, or with ``caption="random"`` one drawn with the
    same generator) queries the SQL search restricted to the set, so the images
    rank among the set's alone; each image's stored vector ranks all captions of
    the set's images (encoded once, through the query cache). Commits ``conn``.
    """
    from pgclip.db import evaluation as db_eval
    from pgclip.db.models import require_active_model
    from pgclip.workers.manifest import Manifest

    filters = dict(filters or {})
    name = set_name_for(manifest.path, set_name)
    _check_options(n=n, k=k, caption=caption, filters=filters)
    if images is not None:
        images = Path(images).expanduser()
        if not images.is_dir():
            raise NotFound(f"no images folder at {images}")
        if url is None:
            raise InvalidInput("ingesting --images needs the database URL for the worker")
    conn.commit()
    with conn.transaction():
        model = require_active_model(conn)
    _check_encoder(encoder, model)
    if not manifest.entries:
        raise InvalidInput(f"{manifest.path}: the manifest names no images")

    with_captions = {key: e for key, e in manifest.entries.items() if e.captions}
    rng = random.Random(seed)
    ingested = None
    searched = Manifest(manifest.path, with_captions)
    if images is not None:  # ingest (and embed) the sample alone: 500 of Flickr30k's 31,800, not all of them
        present = sorted(key for key in with_captions if (images / key).is_file())
        if not present:
            raise NotFound(f"none of the {len(with_captions)} captioned images in {manifest.path} is a file "
                           f"in {images}")
        drawn = rng.sample(present, min(n, len(present)))
        candidates = len(present)
        searched = Manifest(images / manifest.path.name, {key: with_captions[key] for key in drawn})
        ingested = _ingest_sample(conn, url, encoder, model, searched, ts_config=ts_config, progress=progress,
                                  worker_options=worker_options or {})
        ingested["not_in_folder"] = len(with_captions) - len(present)
    matches = match_manifest(conn, searched, model)
    counts = collections.Counter(m if isinstance(m, str) else ("embedded" if m[1] else "not_embedded")
                                 for m in matches.values())
    if images is not None:
        counts["missing"] += ingested["not_in_folder"]
    eligible = sorted((key, m[0]) for key, m in matches.items() if not isinstance(m, str) and m[1])

    where = db_eval.filter_clause(conn, filters)  # the search's own filter
    filtered_out = 0
    if filters:
        with conn.transaction():
            passing = db_eval.passing_filter(conn, [image_id for _, image_id in eligible], where)
        filtered_out = sum(1 for _, image_id in eligible if image_id not in passing)
        eligible = [(key, image_id) for key, image_id in eligible if image_id in passing]
    if not eligible:
        raise NotFound(
            f"set {name} is empty: none of the {len(with_captions)} captioned images in {manifest.path} has a "
            f"vector for the active model {model.label} ({counts['missing']} not in the database, "
            f"{counts['not_embedded']} not embedded"
            + (f", {counts['ambiguous']} ambiguous: several stored images have the file's name, none its path"
               if counts["ambiguous"] else "")
            + f"{f', {filtered_out} filtered out' if filtered_out else ''})"
            + (f": run `pgclip ingest DIR --captions {manifest.path}` and `pgclip worker --until-empty`, or give "
               "--images DIR" if counts["missing"] or counts["not_embedded"] else "")
        )

    if images is None:
        candidates = len(eligible)
        sample = rng.sample(eligible, min(n, len(eligible)))
    else:
        sample = eligible
    chosen = [(key, image_id, with_captions[key].captions[0] if caption == "first"
               else rng.choice(with_captions[key].captions)) for key, image_id in sample]

    with conn.transaction():
        changes = db_eval.tag_set(conn, SET_KEY, name, [image_id for _, image_id in sample])
    conn.commit()
    set_filters = {**filters, "metadata": {**filters.get("metadata", {}), SET_KEY: name}}
    with conn.transaction():
        corpus = db_eval.corpus_size(conn, model, db_eval.filter_clause(conn, set_filters))

    texts = _text_vectors(conn, encoder, model, [c for key, _ in sample for c in with_captions[key].captions],
                          progress=progress)
    queries = _rank(conn, texts, model, chosen, filters=set_filters, k=k, ts_config=ts_config, progress=progress)
    image_queries, caption_corpus = _rank_captions(conn, model, sample, with_captions, texts)
    return CaptionResult(
        manifest=str(manifest.path), model=model.label, manifest_images=len(manifest.entries),
        no_caption=len(manifest.entries) - len(with_captions), missing=counts["missing"],
        ambiguous=counts["ambiguous"], not_embedded=counts["not_embedded"], filtered_out=filtered_out,
        eligible=len(eligible), corpus=int(corpus), n=n, seed=seed, k=k, caption=caption, filters=filters,
        queries=queries, set_name=name, set_changes=dataclasses.asdict(changes), caption_corpus=caption_corpus,
        image_queries=image_queries, ingested=ingested, candidates=candidates,
    )


def _check_options(*, n: int, k: int, caption: str, filters: dict[str, Any]) -> None:
    if n < 1:
        raise InvalidInput(f"n must be at least 1, got {n}")
    if not 1 <= k <= MAX_K:
        raise InvalidInput(f"k must be between 1 and {MAX_K}, got {k}")
    if caption not in ("first", "random"):
        raise InvalidInput(f"caption must be first or random, got {caption!r}")
    if "exclude_ids" in filters:
        raise InvalidInput("the exclude_ids filter would hide right answers; use metadata filters instead")
    if isinstance(filters.get("metadata"), dict) and SET_KEY in filters["metadata"]:
        raise InvalidInput(f"the search is restricted to the evaluation set already: name it with --set, "
                           f"not a metadata.{SET_KEY} filter")


def _ingest_sample(conn: psycopg.Connection, url: str | None, encoder: Encoder, model: ModelRow, sample: Manifest, *,
                   ts_config: str, progress: Progress, worker_options: dict[str, Any]) -> dict[str, int]:
    """Store the sample's files with their captions and embed them (in-process worker); commits."""
    from pgclip.evaluate.classes import _embed
    from pgclip.workers.ingest import ingest

    files = [sample.resolve(key) for key in sample.entries]
    with progress(len(files), "file", "eval ingest") as bar:
        report = ingest(conn, files, model_id=model.id, manifest=sample, ts_config=ts_config, progress=bar.update)
    conn.commit()
    assert url is not None
    _embed(conn, url, encoder, model, progress, **worker_options)
    return {"added": report.added, "present": report.present, "rejected": len(report.rejected)}


def _text_vectors(conn: psycopg.Connection, encoder: Encoder, model: ModelRow, texts: list[str], *,
                  progress: Progress) -> dict[str, np.ndarray]:
    """Each distinct text's unit vector, encoded once: from the query cache the API and SQL share,
    else by ``encoder`` (and then cached, unless the texts would take over half the cache)."""
    import numpy as np

    from pgclip.db import evaluation as db_eval
    from pgclip.db import text_vectors

    unique = list(dict.fromkeys(texts))
    with conn.transaction():
        found = db_eval.cached_texts(conn, model, unique)
    todo = [t for t in unique if t not in found]
    if todo:
        encoder.load()
        new: dict[str, np.ndarray] = {}
        with progress(len(todo), "caption", "eval encode") as bar:
            for start in range(0, len(todo), TEXT_BATCH):
                batch = todo[start:start + TEXT_BATCH]
                new.update(zip(batch, np.asarray(encoder.encode_texts(batch), dtype=np.float32), strict=True))
                bar.update(len(batch))
        if len(new) <= text_vectors.CACHE_ROWS // 2:
            with conn.transaction():
                text_vectors.store(conn, model.id, new)
        found.update(new)
    return {t: v / np.linalg.norm(v) for t, v in found.items()}


def _rank(conn: psycopg.Connection, texts: dict[str, np.ndarray], model: ModelRow,
          chosen: list[tuple[str, int, str]], *, filters: dict[str, Any], k: int, ts_config: str,
          progress: Progress) -> list[CaptionQuery]:
    """caption -> image: each (key, image id, caption) as a text search, with the rank of its image in the top k."""
    from pgclip.db import search as db_search

    queries: list[CaptionQuery] = []
    with progress(len(chosen), "query", "eval captions") as bar:
        for key, image_id, text in chosen:
            page = db_search.search(
                conn, db_search.SearchParams(vector=texts[text], filters=filters, k=k, ts_config=ts_config),
                model=model,
            )
            rank = next((r for r, hit in enumerate(page.hits, start=1) if hit.image_id == image_id), None)
            queries.append(CaptionQuery(key, image_id, text, rank))
            bar.update(1)
    return queries


def _rank_captions(conn: psycopg.Connection, model: ModelRow, sample: list[tuple[str, int]],
                   captions: dict[str, Any], texts: dict[str, np.ndarray]) -> tuple[list[ImageQuery], int]:
    """image -> caption: each image's stored vector against every caption of the set's images; the
    image's rank is that of its best own caption (1 + the other images' captions scoring higher)."""
    import numpy as np

    from pgclip.db import vectors as db_vectors

    with conn.transaction():
        stored = db_vectors.vectors_of(conn, model, [image_id for _, image_id in sample])
    rows = [(key, image_id) for key, image_id in sample if image_id in stored]  # a vector deleted meanwhile: left out
    if not rows:
        return [], 0
    owner = np.array([i for i, (key, _) in enumerate(rows) for _ in captions[key].captions])
    columns = np.stack([texts[c] for key, _ in rows for c in captions[key].captions]).astype(np.float64)
    matrix = np.stack([stored[image_id] for _, image_id in rows]).astype(np.float64)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    out: list[ImageQuery] = []
    block = max(1, RANK_CELLS // len(columns))
    for start in range(0, len(rows), block):
        scores = matrix[start:start + block] @ columns.T
        own = owner[None, :] == np.arange(start, start + len(scores))[:, None]
        best = np.where(own, scores, -np.inf).max(axis=1)
        ranks = 1 + ((scores > best[:, None]) & ~own).sum(axis=1)
        for (key, image_id), rank, mine in zip(rows[start:start + block], ranks, own.sum(axis=1), strict=True):
            out.append(ImageQuery(key, image_id, int(mine), int(rank)))
    return out, len(columns)
