"""ONNX exports of an open_clip model for ONNX Runtime: made once, cached on disk.

An entry (``<cache>/onnx/<model>-<precision>-<key hash>/``) holds ``image.onnx`` and
``text.onnx`` (one graph per tower, batch size free) and ``export.json``: the key, the
sha256 of each graph and open_clip's preprocessing config, so that a process finding the
entry needs neither the torch model nor the weights. The key is everything that changes
the graph: model, weights identity, precision, this module's format, the ONNX opset and
the versions of torch, open_clip and onnxruntime. An entry is checked against its key and
digests each time it is used; anything else (stale, half written, corrupt) is rebuilt,
never used. Entries are written to a temporary directory and renamed into place, under a
file lock, so processes starting together export once and never read half an entry.

int8 is onnxruntime's dynamic quantization of the fp32 export: weights int8 per tensor,
activations quantized per batch at run time, nothing to calibrate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pgclip.core import logs
from pgclip.core.errors import ModelLoadError
from pgclip.workers.weights import cache_dir, file_sha256, one_line

EXPORT_FORMAT = 1  # bump whenever this module changes what it writes
OPSET = 17  # the first with LayerNormalization as one operator
TOWERS = ("image", "text")
INPUTS = {"image": "pixels", "text": "tokens"}
META = "export.json"

# (open_clip model in eval mode, its tokenizer): built only when an entry must be exported.
ModelBuilder = Callable[[], tuple[Any, Any]]


@dataclasses.dataclass(frozen=True)
class Export:
    """A verified cache entry."""

    directory: Path
    preprocess_cfg: dict[str, Any]  # open_clip's PreprocessCfg of the exported model

    def graph(self, tower: str) -> Path:
        return self.directory / f"{tower}.onnx"


def cached_export(model_name: str, weights: str, precision: str, build: ModelBuilder) -> Export:
    """The entry for (model, weights identity, precision "fp32" or "int8"), exported first if
    there is none usable; raise :class:`ModelLoadError` when it cannot be written."""
    key = export_key(model_name, weights, precision)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    entry = cache_dir() / "onnx" / f"{model_name.replace('/', '_')}-{precision}-{digest}"
    found = _verified(entry, key)  # without the lock: a read-only cache with a good entry works
    if found is not None:
        return found
    try:
        with _locked(entry.with_name(entry.name + ".lock")):
            found = _verified(entry, key)  # another process may have exported it meanwhile
            if found is not None:
                return found
            if precision == "int8":
                fp32 = cached_export(model_name, weights, "fp32", build)
                return _write(entry, key, lambda tmp: _quantize(fp32, tmp))
            model, tokenizer = build()  # before any word of exporting: a weights error is the one line said
            return _write(entry, key, lambda tmp: _export(model, tokenizer, tmp))
    except ModelLoadError:
        raise  # the weights: said by whoever built the model
    except OSError as exc:
        raise ModelLoadError(
            f"cannot write the ONNX export of {model_name!r} under {entry.parent}: {one_line(exc)}; "
            "set XDG_CACHE_HOME to a writable directory, or PGCLIP_ENCODER=torch"
        ) from exc
    except Exception as exc:  # an architecture the exporter or the quantizer cannot handle
        raise ModelLoadError(
            f"cannot export {model_name!r} ({precision}) to ONNX: {one_line(exc)}; PGCLIP_ENCODER=torch runs it with torch"
        ) from exc


def discard(export: Export) -> None:
    """Remove an entry that verified but that ONNX Runtime refuses: the next use exports again."""
    shutil.rmtree(export.directory, ignore_errors=True)


def export_key(model_name: str, weights: str, precision: str) -> dict[str, Any]:
    import onnxruntime
    import open_clip
    import torch

    return {
        "model": model_name, "weights": weights, "precision": precision, "format": EXPORT_FORMAT, "opset": OPSET,
        "torch": torch.__version__, "open_clip": open_clip.__version__, "onnxruntime": onnxruntime.__version__,
    }


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` between processes (released when the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _verified(entry: Path, key: dict[str, Any]) -> Export | None:
    try:
        meta = json.loads((entry / META).read_text())
        if meta["key"] != key:
            return None
        if any(file_sha256(entry / f"{tower}.onnx") != meta["sha256"][tower] for tower in TOWERS):
            return None
        return Export(entry, meta["preprocess_cfg"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(entry: Path, key: dict[str, Any], make: Callable[[Path], dict[str, Any]]) -> Export:
    """Run `make` (which writes the towers' graphs into a directory and returns the preprocess
    config) in a temporary directory, then put that directory in the entry's place."""
    if entry.exists():
        _progress(f"the ONNX export in {entry} is stale or corrupt: exporting again")
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        started = time.monotonic()
        _progress(f"exporting {key['model']} ({key['precision']}) for ONNX Runtime, once: into {entry.parent}")
        preprocess_cfg = make(tmp)
        meta = {"key": key, "sha256": {t: file_sha256(tmp / f"{t}.onnx") for t in TOWERS},
                "preprocess_cfg": preprocess_cfg}
        (tmp / META).write_text(json.dumps(meta, indent=1))
        if entry.exists():  # stale or corrupt: out of the way first (a rename cannot replace a directory)
            old = entry.with_name(f".{entry.name}.{os.getpid()}.old")
            os.rename(entry, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, entry)
        _progress(f"exported {key['model']} ({key['precision']}) in {time.monotonic() - started:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Export(entry, preprocess_cfg)


def _export(model: Any, tokenizer: Any, out: Path) -> dict[str, Any]:
    """Both towers of the fp32 model, traced by torch's TorchScript-based exporter.

    Not the torch.export-based one (torch's default since 2.9): on ViT-B-32 its graph ran at
    half the speed in ONNX Runtime (attention left as many small operators), and it needs
    onnxscript. Traced with a batch of two, so nothing specialises on a batch of one."""
    import torch

    size = model.visual.preprocess_cfg["size"]
    height, width = (size, size) if isinstance(size, int) else size
    samples = {"image": torch.zeros(2, 3, height, width), "text": tokenizer(["a photo", "of a dog"])}
    for tower in TOWERS:
        # With gradients on, nn.MultiheadAttention takes its plain path: its inference fast path
        # is one fused operator that the exporter cannot write.
        with warnings.catch_warnings(), torch.inference_mode(False), torch.enable_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes are not the user's business
            torch.onnx.export(
                _tower_module(model, tower), (samples[tower],), str(out / f"{tower}.onnx"), dynamo=False,
                opset_version=OPSET, input_names=[INPUTS[tower]], output_names=["features"],
                dynamic_axes={INPUTS[tower]: {0: "batch"}, "features": {0: "batch"}},
            )
    return {k: list(v) if isinstance(v, tuple) else v for k, v in model.visual.preprocess_cfg.items()}


def _quantize(fp32: Export, out: Path) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for tower in TOWERS:
        quantize_dynamic(fp32.graph(tower), out / f"{tower}.onnx", weight_type=QuantType.QInt8)
    return fp32.preprocess_cfg


def _tower_module(model: Any, tower: str) -> Any:
    """One tower of `model` as a module of its own (what the exporter traces)."""
    import torch

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> Any:
            return self.model.encode_image(x) if tower == "image" else self.model.encode_text(x)

    return Tower().eval()


# Its own level, so that the notice passes in commands that log only errors otherwise.
_notices = logging.getLogger("pgclip.encoder.export")
_notices.setLevel(logging.INFO)


def _progress(message: str) -> None:
    # A minute-long export should not look like a hang: the user sees it whatever the log
    # level, and a process logging JSON gets it as one of its JSON lines.
    if logs.structured():
        _notices.info(message)
    else:
        print(f"pgclip: {message}", file=sys.stderr, flush=True)
