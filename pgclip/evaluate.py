"""``pgclip eval``: retrieval quality measured through the search the API runs.

Two protocols from the papers pgclip starts from (``SEEDS.md``):

* ``captions`` (seed 000, Novi Sad, Flickr30k): sample images that are stored and
  embedded, query with one of each image's captions as text, and record the rank
  of the right image among the top k. The paper reports top-1/3/5/10 of
  61 / 75 / 85 / 94 % with CLIP + Pinecone.
* ``classes`` (seed 003, CLIP-DB): every labeled image queries the rest of its
  dataset (leave-one-out); top-1 is right when the nearest image has the query's
  class, top-5 when the class is among the five nearest. The paper reports MNIST
  93.8 / 98.3 % and CIFAR-10 28.0 / 66.5 %.

Every query goes through :func:`pgclip.db.search.search` / :func:`similar`, i.e.
the SQL function ``pgclip.search`` in PostgreSQL with vectors from the encoder
the workers and the API use: a broken pipeline (preprocessing, normalisation,
index, filters) shows up as a bad number. There is no separate numpy path.

The core functions take a connection and an encoder object (anything with
``load``, ``encode_images``, ``encode_texts``, ``dimension`` and ``model_name``),
so tests can pass an oracle encoder whose right answers are known.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pgclip.errors import InvalidInput, NotFound, PgclipError
from pgclip.settings import Settings

if TYPE_CHECKING:  # psycopg, numpy and the db modules load when a command runs, not with the CLI
    import psycopg
    from psycopg import sql

    from pgclip.db.models import ModelRow
    from pgclip.workers.manifest import Manifest

# --- the papers' figures ------------------------------------------------------------

PAPER_CAPTIONS = {
    "source": "seed 000 (Novi Sad): CLIP + Pinecone, Flickr30k, 500 random images",
    "top": {1: 0.61, 3: 0.75, 5: 0.85, 10: 0.94},
}
PAPER_CLASSES = {
    "source": "seed 003 (CLIP-DB): CLIP + Chroma, leave-one-out",
    "MNIST": {1: 0.938, 5: 0.983},
    "CIFAR-10": {1: 0.280, 5: 0.665},
}
CAPTION_TOP = (1, 3, 5, 10)
CLASS_K = 5  # top-1 and top-5: five neighbours per query
MAX_K = 100  # pgclip.db.search.MAX_K: the most results one search returns
TEXT_BATCH = 64  # captions per encode_texts call
DIGITS = "digits"
DEFAULT_SIZE = 224  # ViT-B-32's input side; the encoder's own preprocessing resizes anyway


class Encoder(Protocol):
    model_name: str

    @property
    def dimension(self) -> int: ...

    def load(self) -> None: ...

    def encode_images(self, images: Sequence[Any]) -> Any: ...

    def encode_texts(self, texts: Sequence[str]) -> Any: ...


Progress = Callable[[int | None, str, str], Any]  # (total, unit, desc) -> a tqdm-like context manager


class _NullBar:
    total: int | None = None

    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None


def _no_progress(total: int | None, unit: str, desc: str) -> _NullBar:
    return _NullBar()


def _check_encoder(encoder: Encoder, model: ModelRow) -> None:
    if int(encoder.dimension) != model.dimension:
        raise InvalidInput(
            f"the encoder {encoder.model_name} makes {encoder.dimension}-d vectors, the active model "
            f"{model.label} has {model.dimension}"
        )


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


# --- captions (seed 000) ----------------------------------------------------------------


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


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def match_manifest(conn: psycopg.Connection, manifest: Manifest, model: ModelRow) -> dict[str, tuple[int, bool] | str]:
    """Each manifest key -> (image id, embedded) or the reason it has none ("missing", "ambiguous").

    A stored image matches when its source resolves to the manifest's path, else
    when its file name is the manifest entry's file name and only one stored
    image has that name (Flickr30k's ``results.csv`` lists bare file names).
    """
    names = {Path(key).name for key in manifest.entries}
    by_name: dict[str, list[tuple[int, str, bool]]] = collections.defaultdict(list)
    with conn.transaction():
        rows = conn.execute(
            "SELECT i.id, i.source, EXISTS (SELECT 1 FROM pgclip.embeddings e"
            " WHERE e.image_id = i.id AND e.model_id = %s) FROM pgclip.images i WHERE i.source IS NOT NULL",
            [model.id],
        ).fetchall()
    for image_id, source, embedded in rows:
        name = _basename(source)
        if name in names:
            by_name[name].append((image_id, source, embedded))
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


def _filter_where(conn: psycopg.Connection, filters: dict[str, Any]) -> sql.Composable:
    """The SQL function's own WHERE clause for ``filters`` (values quoted by PostgreSQL)."""
    import psycopg
    from psycopg import sql
    from psycopg.types.json import Jsonb

    from pgclip.db import search as db_search

    unknown = set(filters) - db_search.FILTER_KEYS
    if unknown:
        raise InvalidInput(f"unknown filter {min(unknown)!r} (known: {', '.join(sorted(db_search.FILTER_KEYS))})")
    try:
        with conn.transaction():
            where = conn.execute("SELECT pgclip.filter_sql(%s)", [Jsonb(filters)]).fetchone()[0]
    except psycopg.Error as exc:
        raise db_search.translate(exc) from exc
    return sql.SQL(where)


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
    from psycopg import sql

    from pgclip.db import search as db_search
    from pgclip.db.models import require_active_model
    from pgclip.workers.manifest import Manifest

    if n < 1:
        raise InvalidInput(f"n must be at least 1, got {n}")
    if not 1 <= k <= db_search.MAX_K:
        raise InvalidInput(f"k must be between 1 and {db_search.MAX_K}, got {k}")
    if caption not in ("first", "random"):
        raise InvalidInput(f"caption must be first or random, got {caption!r}")
    filters = dict(filters or {})
    if "exclude_ids" in filters:
        raise InvalidInput("the exclude_ids filter would hide right answers; use metadata filters instead")
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

    where = _filter_where(conn, filters)
    with conn.transaction():
        corpus = conn.execute(
            sql.SQL("SELECT count(*) FROM pgclip.images i JOIN pgclip.embeddings e ON e.image_id = i.id"
                    " WHERE e.model_id = {} AND ({})").format(sql.Literal(model.id), where)
        ).fetchone()[0]
        filtered_out = 0
        if filters:
            passing = {r[0] for r in conn.execute(
                sql.SQL("SELECT i.id FROM pgclip.images i WHERE i.id = ANY(%s) AND ({})").format(where),
                [[image_id for _, image_id in eligible]],
            )}
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
    return CaptionResult(
        manifest=str(manifest.path), model=model.label, manifest_images=len(manifest.entries),
        no_caption=len(manifest.entries) - len(with_captions), missing=counts["missing"],
        ambiguous=counts["ambiguous"], not_embedded=counts["not_embedded"], filtered_out=filtered_out,
        eligible=len(eligible), corpus=int(corpus), n=n, seed=seed, k=k, caption=caption, filters=filters,
        queries=queries,
    )


# --- labeled datasets --------------------------------------------------------------------


@dataclasses.dataclass
class LabeledImages:
    """Image files with a class each, under one dataset name (the ``eval_dataset`` metadata)."""

    name: str
    root: Path
    items: list[tuple[Path, str]]  # (file, class label)
    description: str
    ignored: int = 0  # image files outside any class folder

    @property
    def classes(self) -> list[str]:
        return sorted({label for _, label in self.items})


def folder_dataset(root: Path, *, name: str | None = None) -> LabeledImages:
    """A folder with one sub-folder per class (images found recursively inside each)."""
    from pgclip.workers.ingest import IMAGE_SUFFIXES, discover

    root = Path(root).expanduser()
    if not root.is_dir():
        raise NotFound(f"no dataset {str(root)!r}: give a folder with one sub-folder per class, or '{DIGITS}'")
    items: list[tuple[Path, str]] = []
    ignored = 0
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            files, _, _ = discover([entry])
            items.extend((f, entry.name) for f in files)
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            ignored += 1
    if not items:
        raise InvalidInput(f"{root} has no class sub-folders with images (expected {root}/<class>/<image>)")
    return LabeledImages(name or root.resolve().name, root, items, f"folder {root}, one sub-folder per class", ignored)


def digits_dataset(
    cache_dir: Path, *, size: int = DEFAULT_SIZE, resample: str = "bicubic", invert: bool = False,
    max_images: int | None = None, seed: int = 0,
) -> LabeledImages:
    """scikit-learn's bundled handwritten digits (1797 images, 8x8, 17 grey levels) as PNG files.

    Each digit's 0..16 values are scaled to 0..255 (``invert``: 255..0, dark ink on
    white; default white ink on black, MNIST's polarity), upscaled to ``size`` px
    with ``resample`` (bicubic: smooth strokes; nearest: 8x8 blocks) and written,
    greyscale, to ``cache_dir/digits-<size>-<resample>[-inverted]/<label>/<index>.png``.
    Files already there are reused, so re-runs store nothing new (same bytes, same sha256).
    """
    if resample not in ("bicubic", "nearest"):
        raise InvalidInput(f"resample must be bicubic or nearest, got {resample!r}")
    if not 8 <= size <= 1024:
        raise InvalidInput(f"size must be between 8 and 1024 pixels, got {size}")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise PgclipError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    import numpy as np
    from PIL import Image

    data = load_digits()
    indices = list(range(len(data.target)))
    if max_images is not None and max_images < len(indices):
        indices = sorted(random.Random(seed).sample(indices, max_images))
    folder = Path(cache_dir).expanduser() / f"digits-{size}-{resample}{'-inverted' if invert else ''}"
    method = Image.Resampling.BICUBIC if resample == "bicubic" else Image.Resampling.NEAREST
    items: list[tuple[Path, str]] = []
    for i in indices:
        label = str(int(data.target[i]))
        path = folder / label / f"{i:04d}.png"
        if not path.is_file():
            grey = np.clip(np.rint(data.images[i] * (255 / 16)), 0, 255).astype(np.uint8)
            if invert:
                grey = 255 - grey
            image = Image.fromarray(grey, mode="L").resize((size, size), method)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            image.save(tmp, format="PNG")
            tmp.replace(path)
        items.append((path, label))
    polarity = "dark ink on white (inverted)" if invert else "white ink on black (not inverted)"
    description = (f"scikit-learn digits: 8x8 greyscale upscaled to {size} px ({resample}), {polarity}, "
                   f"cached in {folder}")
    return LabeledImages(DIGITS, folder, items, description)


def load_dataset(
    spec: str, *, cache_dir: Path, name: str | None = None, size: int = DEFAULT_SIZE, resample: str = "bicubic",
    invert: bool = False, max_images: int | None = None, seed: int = 0,
) -> LabeledImages:
    """``digits`` or a folder of class sub-folders; ``max_images`` takes a seeded random subset."""
    if spec == DIGITS and not Path(spec).is_dir():
        dataset = digits_dataset(cache_dir, size=size, resample=resample, invert=invert, max_images=max_images,
                                 seed=seed)
        if name:
            dataset.name = name
        return dataset
    dataset = folder_dataset(Path(spec), name=name)
    if max_images is not None and max_images < len(dataset.items):
        dataset.items = sorted(random.Random(seed).sample(dataset.items, max_images))
    return dataset


# --- classes (seed 003) ---------------------------------------------------------------------


@dataclasses.dataclass
class ClassResult:
    dataset: str
    description: str
    model: str
    images: int  # labeled files given
    classes: int
    embedded: int  # the dataset's images with a vector (the searched set)
    skipped: dict[str, int]  # why files or images were left out
    stale_excluded: int  # images tagged with this dataset by an earlier run but not part of it now
    retagged: int  # stored images whose eval_dataset/class metadata this run changed
    queries: list[tuple[int, str, bool, bool]]  # (image id, class, top-1 right, top-5 right)
    chance: dict[int, float]
    seed: int
    limit: int | None

    def top(self, k: int) -> float:
        column = 2 if k == 1 else 3
        return sum(1 for q in self.queries if q[column]) / (len(self.queries) or 1)

    def per_class(self) -> dict[str, dict[str, float | int]]:
        groups: dict[str, list[tuple[int, str, bool, bool]]] = collections.defaultdict(list)
        for q in self.queries:
            groups[q[1]].append(q)
        return {label: {"queries": len(qs), "top1": sum(q[2] for q in qs) / len(qs), "top5": sum(q[3] for q in qs) / len(qs)}
                for label, qs in sorted(groups.items(), key=lambda kv: _label_key(kv[0]))}

    def as_dict(self) -> dict[str, Any]:
        return {
            "protocol": "classes",
            "dataset": self.dataset, "description": self.description, "model": self.model,
            "images": self.images, "classes": self.classes, "embedded": self.embedded, "skipped": self.skipped,
            "stale_excluded": self.stale_excluded, "retagged": self.retagged,
            "queries_run": len(self.queries), "seed": self.seed, "limit": self.limit,
            "top": {"1": self.top(1), "5": self.top(5)},
            "chance": {str(k): v for k, v in self.chance.items()},
            "per_class": self.per_class(),
            "paper": {"source": PAPER_CLASSES["source"],
                      "MNIST": {str(k): v for k, v in PAPER_CLASSES["MNIST"].items()},
                      "CIFAR-10": {str(k): v for k, v in PAPER_CLASSES["CIFAR-10"].items()}},
        }


def _label_key(label: str) -> tuple[int, int | str]:
    return (0, int(label)) if label.lstrip("-").isdigit() else (1, label)


def _chance(labels: list[str], query_labels: list[str], k: int) -> float:
    """Expected top-k accuracy of random neighbours: P(one of k draws from the other images shares the class)."""
    sizes = collections.Counter(labels)
    others = len(labels) - 1
    if not query_labels or others < 1:
        return 0.0
    total = 0.0
    for label in query_labels:
        miss = 1.0
        for i in range(min(k, others)):
            miss *= max(0, others - (sizes[label] - 1) - i) / (others - i)
        total += 1 - miss
    return total / len(query_labels)


def eval_classes(
    conn: psycopg.Connection,
    url: str,
    encoder: Encoder,
    dataset: LabeledImages,
    *,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    lease_seconds: int = 120,
    max_attempts: int = 3,
    ts_config: str = "english",
    progress: Progress = _no_progress,
) -> ClassResult:
    """The seed-003 protocol on ``dataset``: ingest, embed (in-process worker), leave-one-out queries.

    The files are ingested into the database behind ``conn`` (and ``url``, for the
    worker's connections) with metadata ``{"eval_dataset": name, "class": label}``;
    identical files are one image (sha256), so a file found under two classes is
    left out (its label is ambiguous) and a repeat within a class counts once.
    A :class:`~pgclip.workers.loop.Worker` then empties the active model's queue
    with ``encoder`` (other pending images are embedded too). Each query is
    :func:`pgclip.db.search.similar` restricted to the dataset by its metadata;
    ``limit`` queries are drawn with ``random.Random(seed)`` (default: every image).

    Commits ``conn``: the worker's own connections must see the images.
    """
    from psycopg.types.json import Jsonb

    from pgclip.db import queue
    from pgclip.db import search as db_search
    from pgclip.db.models import require_active_model
    from pgclip.workers.manifest import Entry, Manifest
    from pgclip.workers.ingest import ingest
    from pgclip.workers.loop import Worker

    if limit is not None and limit < 1:
        raise InvalidInput(f"limit must be at least 1, got {limit}")
    conn.commit()
    with conn.transaction():
        model = require_active_model(conn)
    _check_encoder(encoder, model)

    # Which files are one image: hash them all; an image under two classes has no label.
    skipped: collections.Counter[str] = collections.Counter()
    files_by_sha: dict[str, list[tuple[Path, str]]] = collections.defaultdict(list)
    with progress(len(dataset.items), "file", "eval hash") as bar:
        for path, label in dataset.items:
            try:
                files_by_sha[hashlib.sha256(path.read_bytes()).hexdigest()].append((path, label))
            except OSError:
                skipped["unreadable"] += 1
            bar.update(1)
    by_sha: dict[str, tuple[Path, str]] = {}
    for digest, files in files_by_sha.items():
        if len({label for _, label in files}) > 1:
            skipped["same_image_in_two_classes"] += len(files)
            continue
        by_sha[digest] = files[0]
        skipped["duplicate_in_class"] += len(files) - 1
    if not by_sha:
        raise InvalidInput(f"dataset {dataset.name}: no usable images ({dict(skipped)})")

    with conn.transaction():
        before = {sha: (tag, label) for sha, tag, label in conn.execute(
            "SELECT sha256, metadata->>'eval_dataset', metadata->>'class' FROM pgclip.images WHERE sha256 = ANY(%s)",
            [list(by_sha)],
        )}
    retagged = sum(1 for sha, (tag, label) in before.items() if (tag, label) != (dataset.name, by_sha[sha][1]))

    manifest = Manifest(dataset.root / ".pgclip-eval")
    manifest.entries = {
        str(_resolved(path)): Entry(metadata={"eval_dataset": dataset.name, "class": label}) for path, label in by_sha.values()
    }
    with progress(len(by_sha), "file", "eval ingest") as bar:
        report = ingest(conn, [path for path, _ in by_sha.values()], model_id=model.id, manifest=manifest,
                        ts_config=ts_config, progress=bar.update)
    skipped["rejected"] += len(report.rejected)
    conn.commit()

    with conn.transaction():
        pending = queue.open_jobs(conn, model.id)[0]
    if pending:
        with progress(pending, "img", "eval embed") as bar:
            worker = Worker(url, encoder=encoder, model=model, batch_size=batch_size, lease_seconds=lease_seconds,
                            max_attempts=max_attempts, on_done=bar.update)
            worker.run(until_empty=True)

    with conn.transaction():
        rows = conn.execute(
            "SELECT i.id, i.sha256, i.metadata->>'eval_dataset', i.metadata->>'class',"
            " EXISTS (SELECT 1 FROM pgclip.embeddings e WHERE e.image_id = i.id AND e.model_id = %s)"
            " FROM pgclip.images i WHERE i.sha256 = ANY(%s) ORDER BY i.id",
            [model.id, list(by_sha)],
        ).fetchall()
        current = {image_id for image_id, *_ in rows}
        stale = [r[0] for r in conn.execute(
            "SELECT id FROM pgclip.images WHERE metadata @> %s AND NOT (id = ANY(%s))",
            [Jsonb({"eval_dataset": dataset.name}), list(current)],
        )]
    labeled: list[tuple[int, str]] = []
    for image_id, sha, tag, label, embedded in rows:
        if (tag, label) != (dataset.name, by_sha[sha][1]):
            skipped["relabeled_meanwhile"] += 1  # another process changed its metadata since the ingest
        elif not embedded:
            skipped["not_embedded"] += 1
        else:
            labeled.append((image_id, label))
    if not labeled:
        raise NotFound(
            f"dataset {dataset.name}: none of its {len(by_sha)} images has a vector for the active model "
            f"{model.label} (see `pgclip status` for failed jobs)"
        )

    queries_in = labeled if limit is None or limit >= len(labeled) else random.Random(seed).sample(labeled, limit)
    filters: dict[str, Any] = {"metadata": {"eval_dataset": dataset.name}}
    if stale:
        filters["exclude_ids"] = stale
    params = db_search.SearchParams(filters=filters, k=CLASS_K, ts_config=ts_config)
    results: list[tuple[int, str, bool, bool]] = []
    with progress(len(queries_in), "query", "eval classes") as bar:
        for image_id, label in queries_in:
            hits = db_search.similar(conn, image_id, params).hits
            classes = [(hit.metadata or {}).get("class") for hit in hits]
            results.append((image_id, label, bool(classes) and classes[0] == label, label in classes[:CLASS_K]))
            bar.update(1)
    all_labels = [label for _, label in labeled]
    query_labels = [label for _, label in queries_in]
    return ClassResult(
        dataset=dataset.name, description=dataset.description, model=model.label, images=len(dataset.items),
        classes=len(set(all_labels)), embedded=len(labeled),
        skipped={k: v for k, v in sorted(skipped.items()) if v} | ({"outside_class_folders": dataset.ignored}
                                                                  if dataset.ignored else {}),
        stale_excluded=len(stale), retagged=retagged, queries=results,
        chance={1: _chance(all_labels, query_labels, 1), CLASS_K: _chance(all_labels, query_labels, CLASS_K)},
        seed=seed, limit=limit,
    )


# --- output ---------------------------------------------------------------------------------------


def caption_table(result: CaptionResult) -> list[str]:
    recall = result.recall
    lines = [
        f"caption -> image retrieval (seed 000 protocol), model {result.model}",
        f"{len(result.queries)} queries: the {result.caption} caption of each of {len(result.queries)} images "
        f"sampled (seed {result.seed}) from {result.eligible} embedded manifest images; "
        f"ranked among {result.corpus} embedded images" + (f" matching {json.dumps(result.filters)}" if result.filters else ""),
        "",
        f"{'':<8}{'ours':>9}{'chance':>10}   paper (CLIP + Pinecone)",
    ]
    for K in CAPTION_TOP:
        if K > result.k:
            continue
        chance = min(1.0, K / result.corpus) if result.corpus else None
        paper = PAPER_CAPTIONS["top"].get(K)
        lines.append(f"{f'top-{K}':<8}{_pct(recall[K]):>9}{_pct(chance):>10}   {_pct(paper) if paper else '-':>6}")
    lines.append(f"{'MRR@' + str(result.k):<8}{result.mrr:>9.3f}")
    lines.append("")
    lines.append(
        f"manifest: {result.manifest_images} images; {result.missing} not in the database, "
        f"{result.ambiguous} ambiguous file names, {result.not_embedded} not embedded, "
        f"{result.no_caption} without captions" + (f", {result.filtered_out} filtered out" if result.filtered_out else "")
    )
    return lines


def class_table(result: ClassResult) -> list[str]:
    lines = [
        f"leave-one-out classification (seed 003 protocol), model {result.model}",
        f"dataset {result.dataset}: {result.description}",
        f"{result.embedded} images embedded in {result.classes} classes; {len(result.queries)} queries, "
        f"each searching the dataset's other images" + (f" (seed {result.seed})" if result.limit else ""),
        "",
        f"{'':<8}{'ours':>9}{'chance':>10}{'MNIST':>10}{'CIFAR-10':>10}   (paper: CLIP-DB)",
    ]
    for k in (1, CLASS_K):
        lines.append(f"{f'top-{k}':<8}{_pct(result.top(k)):>9}{_pct(result.chance[k]):>10}"
                     f"{_pct(PAPER_CLASSES['MNIST'][k]):>10}{_pct(PAPER_CLASSES['CIFAR-10'][k]):>10}")
    notes = []
    if result.skipped:
        notes.append("left out: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in result.skipped.items()))
    if result.stale_excluded:
        notes.append(f"{result.stale_excluded} images tagged {result.dataset} by an earlier run excluded")
    if result.retagged:
        notes.append(f"{result.retagged} stored images re-tagged to this dataset/class")
    if notes:
        lines.append("")
        lines.extend(notes)
    return lines


def write_report(result: CaptionResult | ClassResult, folder: Path) -> tuple[Path, Path]:
    """``report.md`` and a PNG plot (recall@K for captions, top-1/top-5 bars for classes) in ``folder``."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PgclipError("--report needs matplotlib: pip install matplotlib") from None
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(f"cannot create report folder {folder}: {exc.strerror or exc}") from None
    fig = Figure(figsize=(8.4, 4.2), dpi=110)
    ax = fig.add_subplot()
    if isinstance(result, CaptionResult):
        png = folder / "recall_at_k.png"
        recall = result.recall
        ks = list(recall)
        ax.plot(ks, [100 * recall[k] for k in ks], marker="o", label=f"pgclip ({result.model})")
        paper = [(k, v) for k, v in PAPER_CAPTIONS["top"].items()]
        ax.plot([k for k, _ in paper], [100 * v for _, v in paper], marker="s", linestyle="--",
                label="paper: CLIP + Pinecone (seed 000)")
        if result.corpus:
            ax.plot(ks, [100 * min(1.0, k / result.corpus) for k in ks], linestyle=":", color="grey", label="chance")
        ax.set_xlabel("K")
        ax.set_ylabel("image in the top K (%)")
        ax.set_xticks(ks)
        ax.set_title(f"caption -> image, {len(result.queries)} queries")
        table = caption_table(result)
        misses = [q for q in result.queries if q.rank != 1][:20]
        extra = ["", "## Queries whose image was not first (up to 20)", "",
                 "| image | caption | rank |", "| --- | --- | --- |"]
        extra += [f"| {q.key} (#{q.image_id}) | {q.caption.replace('|', '/')} | {q.rank or f'> {result.k}'} |"
                  for q in misses]
        title = "pgclip eval captions"
    else:
        png = folder / "top_k.png"
        labels = ["top-1", f"top-{CLASS_K}"]
        series = [(f"pgclip: {result.dataset}", [result.top(1), result.top(CLASS_K)]),
                  ("chance", [result.chance[1], result.chance[CLASS_K]]),
                  ("paper: MNIST", [PAPER_CLASSES["MNIST"][1], PAPER_CLASSES["MNIST"][CLASS_K]]),
                  ("paper: CIFAR-10", [PAPER_CLASSES["CIFAR-10"][1], PAPER_CLASSES["CIFAR-10"][CLASS_K]])]
        width = 0.8 / len(series)
        for i, (name, values) in enumerate(series):
            ax.bar([x + i * width for x in range(len(labels))], [100 * v for v in values], width, label=name)
        ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(labels))], labels)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"leave-one-out, {result.dataset}, {len(result.queries)} queries")
        table = class_table(result)
        extra = ["", "## Per class", "", "| class | queries | top-1 | top-5 |", "| --- | --- | --- | --- |"]
        extra += [f"| {label} | {v['queries']} | {_pct(v['top1'])} | {_pct(v['top5'])} |"
                  for label, v in result.per_class().items()]
        title = "pgclip eval classes"
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
    fig.tight_layout()
    fig.savefig(png, format="png")
    md = folder / "report.md"
    md.write_text("\n".join([f"# {title}", "", "```", *table, "```", "", f"![plot]({png.name})", *extra, ""]),
                  encoding="utf-8")
    return md, png


# --- the command ----------------------------------------------------------------------------------


def _bar(total: int | None, unit: str, desc: str):
    from pgclip.cli_common import progress

    return progress(total, unit, desc)


def _setup(settings: Settings):
    """The database URL, the active model (which must be the configured one) and the configured encoder."""
    from pgclip.bootstrap import ready_url, register_configured_model
    from pgclip.db.engine import connection
    from pgclip.db.models import require_active_model
    from pgclip.workers.encoder import ClipEncoder

    url = ready_url(settings)
    configured = register_configured_model(url, settings)
    with connection(url, role="eval") as conn:
        active = require_active_model(conn)
    if active.id != configured.id:
        raise InvalidInput(
            f"the configured model {configured.label} is not the active one ({active.label}); eval measures the "
            "active model's search: set PGCLIP_MODEL/PGCLIP_PRETRAINED to it"
        )
    encoder = ClipEncoder.from_settings(settings)
    encoder.load()  # fail fast, in one line, before any work
    return url, encoder


def _emit(args: argparse.Namespace, result: CaptionResult | ClassResult, table: list[str]) -> None:
    from pgclip.cli_common import out

    paths = write_report(result, Path(args.report)) if args.report else None
    if args.json:
        data = result.as_dict()
        if paths:
            data["report"] = {"markdown": str(paths[0]), "plot": str(paths[1])}
        out(json.dumps(data, indent=2, default=str))
        return
    for line in table:
        out(line)
    if paths:
        out(f"report: {paths[0]} ({paths[1].name})")


def cmd_eval_captions(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.cli_search import parse_filters
    from pgclip.db.engine import connection
    from pgclip.workers.manifest import load_manifest

    path = Path(args.manifest).expanduser()
    if not path.is_file():
        raise NotFound(f"no captions manifest at {path}")
    manifest = load_manifest(path)
    filters = parse_filters(args.filter)
    url, encoder = _setup(settings)
    with connection(url, role="eval") as conn:
        result = eval_captions(conn, encoder, manifest, n=args.n, seed=args.seed, k=args.k, caption=args.caption,
                               filters=filters, ts_config=settings.text_search_config, progress=_bar)
    _emit(args, result, caption_table(result))
    return 0


def _cache_dir(args: argparse.Namespace) -> Path:
    if args.cache_dir:
        return Path(args.cache_dir).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("pgclip")) / "eval"


def cmd_eval_classes(args: argparse.Namespace, settings: Settings) -> int:
    from pgclip.db.engine import connection

    dataset = load_dataset(args.dataset, cache_dir=_cache_dir(args), name=args.name, size=args.size,
                           resample=args.resample, invert=args.invert, max_images=args.max_images, seed=args.seed)
    url, encoder = _setup(settings)
    with connection(url, role="eval") as conn:
        result = eval_classes(conn, url, encoder, dataset, limit=args.limit, seed=args.seed,
                              batch_size=settings.batch_size, lease_seconds=settings.lease_seconds,
                              max_attempts=settings.max_attempts, ts_config=settings.text_search_config,
                              progress=_bar)
    _emit(args, result, class_table(result))
    return 0


def _nonnegative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def add_eval_parser(subparsers: Any) -> None:
    """Add ``pgclip eval captions|classes`` to the CLI's sub-command parsers."""
    from pgclip.cli_common import positive

    ev = subparsers.add_parser(
        "eval", help="measure retrieval quality through the API's search (the papers' protocols)",
        description="Measure retrieval through pgclip's own search (SQL in PostgreSQL, vectors from the configured "
                    "encoder) and show the papers' figures beside ours.",
    )
    protocols = ev.add_subparsers(dest="eval_protocol", metavar="PROTOCOL", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seed", type=_nonnegative, default=0, help="sampling seed (default 0)")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.add_argument("--report", metavar="DIR", help="write report.md and a PNG plot into DIR")

    cap = protocols.add_parser(
        "captions", help="caption -> image top-K accuracy on an ingested, embedded manifest (seed 000, Flickr30k)",
        description="Sample N embedded images of MANIFEST, query with one caption each as text, and report how often "
                    "the right image is in the top 1/3/5/10. Ingest and embed first: `pgclip ingest DIR --captions "
                    "MANIFEST`, `pgclip worker --until-empty`.",
    )
    cap.add_argument("manifest", metavar="MANIFEST", help="Flickr30k results.csv or JSON Lines manifest")
    cap.add_argument("--n", type=positive, default=500, help="images to sample (default 500, as in the paper)")
    cap.add_argument("--k", type=positive, default=10, help="results per query (default 10, at most 100)")
    cap.add_argument("--caption", choices=["first", "random"], default="first",
                     help="which of an image's captions queries: its first in the manifest (default), or a seeded "
                          "random one")
    cap.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                     help="restrict the searched images, as in `pgclip search` (e.g. metadata.collection=flickr30k)")
    common(cap)
    cap.set_defaults(handler=cmd_eval_captions)

    cls = protocols.add_parser(
        "classes", help="leave-one-out nearest-neighbour class accuracy (seed 003, CLIP-DB)",
        description="Ingest a labeled dataset (metadata eval_dataset/class), embed it in-process, let each image "
                    "query the rest of its dataset, and report top-1/top-5 class accuracy.",
    )
    cls.add_argument("dataset", metavar="DATASET",
                     help=f"a folder with one sub-folder per class, or '{DIGITS}' (scikit-learn's handwritten digits)")
    cls.add_argument("--limit", type=positive, default=None, metavar="N",
                     help="query with N images drawn with --seed (default: every image)")
    cls.add_argument("--max-images", type=positive, default=None, metavar="N",
                     help="use only N of the dataset's images, drawn with --seed (default: all)")
    cls.add_argument("--name", help="dataset name stored as eval_dataset (default: the folder's name, or digits)")
    cls.add_argument("--size", type=positive, default=DEFAULT_SIZE, help="digits: side in pixels (default 224)")
    cls.add_argument("--resample", choices=["bicubic", "nearest"], default="bicubic",
                     help="digits: upscaling filter (default bicubic)")
    cls.add_argument("--invert", action=argparse.BooleanOptionalAction, default=False,
                     help="digits: dark ink on white (default: white ink on black, like MNIST)")
    cls.add_argument("--cache-dir", metavar="DIR", help="digits: where the PNG files go (default: the user cache dir)")
    common(cls)
    cls.set_defaults(handler=cmd_eval_classes)
