"""The ``classes`` protocol (seed 003): leave-one-out nearest-neighbour class accuracy, and its result."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgclip.core.errors import InvalidInput, NotFound
from pgclip.evaluate.common import (
    CLASS_K,
    PAPER_CLASSES,
    Encoder,
    Progress,
    _check_encoder,
    _no_progress,
    _resolved,
)
from pgclip.evaluate.datasets import LabeledImages

if TYPE_CHECKING:  # psycopg and the db modules load when a command runs, not with the CLI
    import psycopg

    from pgclip.db.models import ModelRow
    from pgclip.db.search import SearchParams


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
    from pgclip.db import evaluation as db_eval
    from pgclip.db import search as db_search
    from pgclip.db.models import require_active_model

    if limit is not None and limit < 1:
        raise InvalidInput(f"limit must be at least 1, got {limit}")
    conn.commit()
    with conn.transaction():
        model = require_active_model(conn)
    _check_encoder(encoder, model)

    skipped: collections.Counter[str] = collections.Counter()
    by_sha = _one_file_per_image(dataset, skipped, progress)
    with conn.transaction():
        before = db_eval.dataset_tags(conn, by_sha)
    retagged = sum(1 for sha, tags in before.items() if (tags.dataset, tags.label) != (dataset.name, by_sha[sha][1]))
    _ingest(conn, dataset, by_sha, model.id, skipped, ts_config=ts_config, progress=progress)
    _embed(conn, url, encoder, model, progress,
           batch_size=batch_size, lease_seconds=lease_seconds, max_attempts=max_attempts)

    with conn.transaction():
        rows = db_eval.dataset_images(conn, model, by_sha)
        stale = db_eval.stale_images(conn, dataset.name, [row.image_id for row in rows])
    labeled: list[tuple[int, str]] = []
    for row in rows:
        if (row.dataset, row.label) != (dataset.name, by_sha[row.sha256][1]):
            skipped["relabeled_meanwhile"] += 1  # another process changed its metadata since the ingest
        elif not row.embedded:
            skipped["not_embedded"] += 1
        else:
            labeled.append((row.image_id, row.label))
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
    results = _leave_one_out(conn, queries_in, params, progress)
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


def _one_file_per_image(dataset: LabeledImages, skipped: collections.Counter[str],
                        progress: Progress) -> dict[str, tuple[Path, str]]:
    """sha256 -> (a file, its label) for each image with one label: identical files are one image,
    and an image found under two classes has no label (counted in ``skipped``)."""
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
    return by_sha


def _ingest(conn: psycopg.Connection, dataset: LabeledImages, by_sha: dict[str, tuple[Path, str]], model_id: int,
            skipped: collections.Counter[str], *, ts_config: str, progress: Progress) -> None:
    """Store the images tagged ``{"eval_dataset": name, "class": label}``, queued for the model; commits."""
    from pgclip.workers.ingest import ingest
    from pgclip.workers.manifest import Entry, Manifest

    manifest = Manifest(dataset.root / ".pgclip-eval")
    manifest.entries = {
        str(_resolved(path)): Entry(metadata={"eval_dataset": dataset.name, "class": label}) for path, label in by_sha.values()
    }
    with progress(len(by_sha), "file", "eval ingest") as bar:
        report = ingest(conn, [path for path, _ in by_sha.values()], model_id=model_id, manifest=manifest,
                        ts_config=ts_config, progress=bar.update)
    skipped["rejected"] += len(report.rejected)
    conn.commit()


def _embed(conn: psycopg.Connection, url: str, encoder: Encoder, model: ModelRow, progress: Progress,
           **worker_options: Any) -> None:
    """Empty the model's queue with an in-process worker (other pending images are embedded too)."""
    from pgclip.db import queue
    from pgclip.workers.loop import Worker

    with conn.transaction():
        pending = queue.open_jobs(conn, model.id)[0]
    if pending:
        with progress(pending, "img", "eval embed") as bar:
            Worker(url, encoder=encoder, model=model, on_done=bar.update, **worker_options).run(until_empty=True)


def _leave_one_out(conn: psycopg.Connection, queries: list[tuple[int, str]], params: SearchParams,
                   progress: Progress) -> list[tuple[int, str, bool, bool]]:
    """(image id, class, top-1 right, top-k right) for each image's "more like this" search."""
    from pgclip.db import search as db_search

    results: list[tuple[int, str, bool, bool]] = []
    with progress(len(queries), "query", "eval classes") as bar:
        for image_id, label in queries:
            hits = db_search.similar(conn, image_id, params).hits
            classes = [(hit.metadata or {}).get("class") for hit in hits]
            results.append((image_id, label, bool(classes) and classes[0] == label, label in classes[:CLASS_K]))
            bar.update(1)
    return results
