"""`pgclip export` / `pgclip import`: one model's vectors, with the images' captions and
metadata, as files in clip-retrieval's layout (the set's layout and its checks are in
``exchange_set.py``). Image bytes never travel (see README, "Export and import").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pgclip import __version__
from pgclip.application.exchange_set import (
    BATCH_ROWS,
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    ROWS_PER_FILE,
    ExportSet,
    arrow,
    batches,
    metadata_schema,
    read_manifest,
    sha256_file,
    thumbnail_schema,
)
from pgclip.core.errors import ConfigError, InvalidInput
from pgclip.core.settings import Settings
from pgclip.db import exchange as db
from pgclip.db.engine import connection
from pgclip.db.models import ModelRow, activate_if_unused, find_model, require_active_model

Progress = Callable[[int], Any]


# --- export ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExportReport:
    directory: Path
    model: ModelRow
    rows: int  # images exported (those with the model's vector)
    images: int  # images in the database
    parts: int


class _Part:
    """One part being written: the .npy (its header fixed by the row count known up front)
    and the parquet files beside it, a batch at a time."""

    def __init__(self, directory: Path, name: str, rows: int, dimension: int, dtype: np.dtype, thumbnails: bool):
        pa, pq = arrow()
        self.directory, self.rows, self.written = directory, rows, 0
        self.paths = {"img_emb": f"img_emb/img_emb_{name}.npy", "metadata": f"metadata/metadata_{name}.parquet"}
        if thumbnails:
            self.paths["thumbnails"] = f"thumbnails/thumbnails_{name}.parquet"
        for rel in self.paths.values():
            (directory / rel).parent.mkdir(exist_ok=True)
        self.dtype = dtype
        self.npy = (directory / self.paths["img_emb"]).open("wb")
        np.lib.format.write_array_header_1_0(self.npy, {
            "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, dimension)})
        self.metadata = pq.ParquetWriter(directory / self.paths["metadata"], metadata_schema(pa))
        self.thumbnails = (pq.ParquetWriter(directory / self.paths["thumbnails"], thumbnail_schema(pa))
                           if thumbnails else None)

    def write(self, rows: list[db.ExchangeRow]) -> None:
        pa, _ = arrow()
        self.npy.write(np.stack([r.embedding for r in rows]).astype(self.dtype).tobytes())
        self.metadata.write_table(pa.Table.from_pylist([{
            "image_path": r.source, "caption": r.captions[0] if r.captions else None, "image_id": r.image_id,
            "sha256": r.sha256, "source_bytes": r.source_bytes, "byte_size": r.byte_size, "width": r.width,
            "height": r.height, "format": r.format, "mime": r.mime, "taken_at": r.taken_at,
            "metadata": json.dumps(r.metadata, ensure_ascii=False), "captions": r.captions,
            "video": dataclasses.asdict(r.video) if r.video is not None else None, "video_ts": r.video_ts,
            "shared_videos": [{"video": dataclasses.asdict(f.video), "video_ts": f.video_ts} for f in r.shared],
        } for r in rows], schema=metadata_schema(pa)))
        if self.thumbnails is not None:
            self.thumbnails.write_table(pa.Table.from_pylist([{
                "image_id": r.image_id, "thumbnail": r.thumbnail, "thumbnail_mime": r.thumbnail_mime,
                "thumbnail_width": r.thumbnail_width, "thumbnail_height": r.thumbnail_height,
            } for r in rows], schema=thumbnail_schema(pa)))
        self.written += len(rows)

    def close(self) -> dict[str, Any]:
        """Finish the files; the manifest's entry for this part (paths and sha256 of each)."""
        self.npy.close()
        self.metadata.close()
        if self.thumbnails is not None:
            self.thumbnails.close()
        # The snapshot fixes the row count, so this is a bug of ours, not a user's problem.
        assert self.written == self.rows, f"part expected {self.rows} rows, got {self.written}"
        return {"rows": self.rows,
                "files": {kind: {"path": rel, "sha256": sha256_file(self.directory / rel)}
                          for kind, rel in self.paths.items()}}


def export_parquet(
    url: str, directory: Path, *, model_name: str | None = None, pretrained: str | None = None,
    rows_per_file: int = ROWS_PER_FILE, dtype: str = "float32", thumbnails: bool = True,
    progress: Progress | None = None, on_total: Progress | None = None,
) -> ExportReport:
    """Write one model's vectors (the active model's unless named) with their images'
    fields, captions and metadata into ``directory`` (new or empty), from one snapshot."""
    if directory.exists() and not directory.is_dir():
        raise InvalidInput(f"{directory} is a file, not a folder: export into a new or empty folder")
    if directory.exists() and any(directory.iterdir()):
        raise InvalidInput(f"{directory} is not an empty folder: export into a new or empty one")
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return _export(url, directory, model_name, pretrained, rows_per_file, np.dtype(DTYPES[dtype]),
                       thumbnails, progress, on_total)
    except BaseException:
        _remove_set(directory, remove_folder=created)  # no half set left behind
        raise


def _export(url, directory, model_name, pretrained, rows_per_file, dtype, thumbnails, progress, on_total):
    with connection(url, role="export") as conn, db.snapshot(conn):
        model = find_model(conn, model_name, pretrained) if model_name else require_active_model(conn)
        counts = db.export_counts(conn, model)
        if on_total:
            on_total(counts.vectors)
        n_parts = math.ceil(counts.vectors / rows_per_file)
        digits = len(str(max(n_parts - 1, 0)))  # clip-retrieval pads part numbers to the widest one
        parts, part = [], None
        for batch in db.export_rows(conn, model, thumbnails=thumbnails, batch_rows=BATCH_ROWS):
            while batch:
                if part is None:
                    rows = min(rows_per_file, counts.vectors - rows_per_file * len(parts))
                    part = _Part(directory, str(len(parts)).zfill(digits), rows, model.dimension, dtype, thumbnails)
                take = batch[: part.rows - part.written]
                part.write(take)
                batch = batch[len(take):]
                if progress:
                    progress(len(take))
                if part.written == part.rows:
                    parts.append(part.close())
                    part = None
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "pgclip_version": __version__,
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": {"name": model.name, "pretrained": model.pretrained, "dimension": model.dimension},
        "embedding_dtype": dtype.name, "rows": counts.vectors,
        "images_without_vector": counts.images - counts.vectors, "parts": parts,
    }
    partial = directory / (MANIFEST + ".partial")
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(partial, directory / MANIFEST)  # last: a folder with a manifest holds a whole set
    return ExportReport(directory, model, counts.vectors, counts.images, len(parts))


def _remove_set(directory: Path, *, remove_folder: bool) -> None:
    for sub in ("img_emb", "metadata", "thumbnails"):
        folder = directory / sub
        if folder.is_dir():
            for path in folder.iterdir():
                if re.fullmatch(rf"{sub}_\d+\.(npy|parquet)", path.name):
                    path.unlink()
            if not any(folder.iterdir()):
                folder.rmdir()
    (directory / (MANIFEST + ".partial")).unlink(missing_ok=True)
    if remove_folder and directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


# --- import ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImportReport:
    model: ModelRow
    registered: bool  # the database did not know the model before
    activated: bool  # it now answers searches (the active model had no vectors)
    counts: db.ImportCounts


def target_model(found: ExportSet, model_name: str | None, pretrained: str | None) -> tuple[str, str]:
    """The model the set's vectors are stored under: the manifest's, or the weights named by
    ``--pretrained`` (the same weights known by another identity, e.g. a checkpoint file). A
    ``--model`` other than the set's is a model mismatch: one model's vectors mean nothing in another's space."""
    from pgclip.workers.encoder import pretrained_identity

    if model_name is not None and model_name != found.model_name:
        raise ConfigError(f"model mismatch: {found.directory} holds vectors of {found.model_name} "
                          f"({found.pretrained}), not {model_name}; nothing imported")
    if pretrained is None:
        return found.model_name, found.pretrained
    return found.model_name, pretrained_identity(found.model_name, pretrained)


def _check_dimension(found: ExportSet, name: str, pretrained: str, registered: ModelRow | None) -> None:
    if registered is not None:
        dimension, says = registered.dimension, "this database registers"
    else:
        from pgclip.workers.encoder import model_dimension

        dimension, says = model_dimension(name), "open_clip's config gives"
    if dimension != found.dimension:
        raise ConfigError(f"dimension mismatch: {found.directory} holds {found.dimension}-dimensional vectors, "
                          f"but {says} {name} ({pretrained}) {dimension} dimensions; nothing imported")


def import_parquet(
    url: str, directory: Path, settings: Settings, *, model_name: str | None = None, pretrained: str | None = None,
    progress: Progress | None = None, on_total: Progress | None = None,
) -> ImportReport:
    """Read a set written by :func:`export_parquet` into the database at ``url``, in one
    transaction: every file is checked first, and any bad row rolls everything back."""
    from pgclip.db.models import get_model

    found = read_manifest(directory)
    name, identity = target_model(found, model_name, pretrained)
    if on_total:
        on_total(found.rows)
    with connection(url, role="import") as conn:
        known = get_model(conn, name, identity)
        conn.commit()  # no transaction held while open_clip's config loads
        _check_dimension(found, name, identity, known)
        with conn.transaction():
            model, registered = db.register_model(
                conn, name, identity, found.dimension,
                {k: v for k, v in (("m", settings.hnsw_m), ("ef_construction", settings.hnsw_ef_construction))
                 if v is not None})  # unset: by the collection's size, when its index is built
            counts = db.ImportCounts()
            for part in found.parts:
                for batch in batches(part):
                    counts.add(db.import_rows(conn, model, batch, ts_config=settings.text_search_config))
                    if progress:
                        progress(len(batch))
    db.build_index(url, model)  # for a model new here: built once over every vector; else a no-op
    with connection(url, role="import") as conn:
        # A fresh database's configured model has no vectors: the imported one takes over.
        activated = counts.vectors_added > 0 and activate_if_unused(conn, model)
        model = get_model(conn, name, identity) or model
    return ImportReport(model, registered, activated, counts)
