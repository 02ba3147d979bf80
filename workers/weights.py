"""Which weights a model runs with, and the open_clip torch model built from them.

Models are open_clip names (``ViT-B-32``) with weights from a pretrained tag or a local
checkpoint file; ``test-*`` models (``model_configs/``) have seeded random weights, for
tests only. A tag's weights come from the local cache, or from the hub after one short
probe says a download can start: a machine without network fails in seconds, with the fix.
torch and open_clip are imported inside functions: importing this is cheap.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pgclip.core.errors import ModelLoadError

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
TEST_WEIGHTS_IDENTITY = "random-seed-0"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
HUB_PROBE_TIMEOUT = 5.0  # seconds: one HEAD request deciding whether a download can start at all
HOW_TO_FIX = (
    "set PGCLIP_PRETRAINED to a local checkpoint file (e.g. open_clip_pytorch_model.bin) "
    "or run once with network access to cache it; PGCLIP_MODEL=test-tiny runs with random weights for tests only"
)

_hub_offline_lock = threading.Lock()  # huggingface_hub's offline switch is one global


@functools.cache  # a racing second call only re-adds the same directory, which is harmless
def register_test_models() -> None:
    """Make open_clip know the ``test-*`` model configs shipped in ``model_configs/``."""
    import open_clip
    open_clip.add_model_config(MODEL_CONFIG_DIR)


def is_test_model(name: str) -> bool:
    """True for the tiny random-weight models that exist for tests only."""
    return name.startswith("test-")


def model_dimension(model_name: str) -> int:
    """The embedding dimension of an open_clip model, read from its config (no weights loaded)."""
    import open_clip

    register_test_models()
    # Schema names (hf-hub:, local-dir:) would fetch their config; only plain names are supported.
    config = None if ":" in model_name else open_clip.get_model_config(model_name)
    if config is None:
        raise ModelLoadError(f"unknown model {model_name!r}: open_clip.list_models() lists valid names")
    return int(config["embed_dim"])


def checkpoint_file(pretrained: str) -> Path | None:
    """The local checkpoint `pretrained` names, or None for a tag; raise when a path names nothing."""
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path
    if "/" in pretrained or os.sep in pretrained or pretrained.endswith(CHECKPOINT_SUFFIXES):
        raise ModelLoadError(f"checkpoint file not found: {pretrained}")
    return None


def weights_identity(model_name: str, pretrained: str) -> str:
    """What names the weights whatever runs them: ``random-seed-0`` for test models
    (whatever `pretrained` says), ``sha256:<hex>`` of a checkpoint file, else the tag."""
    if is_test_model(model_name):
        return TEST_WEIGHTS_IDENTITY
    path = checkpoint_file(pretrained)
    if path is None:
        return pretrained
    return f"sha256:{_checkpoint_digest(path)}"


def cache_dir() -> Path:
    """pgclip's per-user cache (checkpoint digests, ONNX exports): safe to delete, rebuilt on use."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("pgclip"))


def _checkpoint_digest(path: Path) -> str:
    """The sha256 of a checkpoint file, remembered by path, size, mtime and inode.

    Every process that registers or loads the model asks (each `pgclip ingest`, worker,
    search), and hashing costs 0.4 s per 600 MB. A file changed in place gets a new mtime,
    so a stale answer needs a deliberate mtime reset; the digest names weights, it does
    not guard them. Without a writable cache directory every call hashes."""
    stat = path.stat()
    key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns, stat.st_ino]
    cache_file = cache_dir() / "checkpoint-digests.json"
    try:
        cache = json.loads(cache_file.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = file_sha256(path)
    cache[key] = {"stamp": stamp, "sha256": digest}
    with contextlib.suppress(OSError):  # a read-only home: hash again next time
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)  # atomic: processes starting together never read half a file
    return digest


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_torch_model(model_name: str, pretrained: str, *, device: str, precision: str) -> tuple[Any, Any, Any]:
    """open_clip's (model in eval mode, eval transform, tokenizer) with the weights loaded;
    raise :class:`ModelLoadError` (one line saying what to change) when they cannot be."""
    import open_clip
    import torch

    test_model = is_test_model(model_name)
    checkpoint = None if test_model else checkpoint_file(pretrained)
    if not test_model and checkpoint is None:
        _ensure_cached(model_name, pretrained)
    create = functools.partial(open_clip.create_model_and_transforms, precision=precision, device=device)
    try:
        if test_model:
            register_test_models()
            # Seeded on a forked RNG: identical weights in every process, caller's RNG untouched.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model, _, preprocess = create(model_name)
        else:
            with _hub_offline():  # a tag's weights are cached by now: never ask the hub again
                model, _, preprocess = create(model_name, str(checkpoint or pretrained))
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as exc:  # a corrupt or mismatched checkpoint, no CUDA, a broken config
        raise ModelLoadError(f"cannot load model {model_name!r} with weights {pretrained!r}: {one_line(exc)}") from exc
    return model.eval(), preprocess, tokenizer


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """huggingface_hub answers from its cache only inside this block."""
    # The HF_HUB_OFFLINE variable is read once, at import; this constant on every request.
    from huggingface_hub import constants

    with _hub_offline_lock:
        saved, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
        try:
            yield
        finally:
            constants.HF_HUB_OFFLINE = saved


def _probe_hub(url: str) -> None:
    """One HEAD for `url` with a short timeout and no retries; raise unless a download can go on."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    try:
        huggingface_hub.get_hf_file_metadata(url, timeout=HUB_PROBE_TIMEOUT)
    except HfHubHTTPError as exc:  # it answered: fine, unless a download would retry this for a minute
        if exc.response.status_code in (408, 429) or exc.response.status_code >= 500:
            raise


def check_weights(model_name: str, pretrained: str) -> None:
    """Raise ModelLoadError unless a worker could run these weights: a tag open_clip knows for
    the model (getting its file is the worker's business: it may run on another machine), or
    a checkpoint file that loads into the model (`pgclip reembed` checks before it queues)."""
    if is_test_model(model_name):
        return
    path = checkpoint_file(pretrained)
    if path is None:
        _check_tag(model_name, pretrained)
    else:
        build_torch_model(model_name, str(path), device="cpu", precision="fp32")


def _check_tag(model_name: str, tag: str) -> None:
    import open_clip

    if not open_clip.is_pretrained_cfg(model_name, tag):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise ModelLoadError(
            f"unknown pretrained tag {tag!r} for model {model_name!r} (known tags: {tags}); "
            "or set PGCLIP_PRETRAINED to a local checkpoint file"
        )


def _ensure_cached(model_name: str, tag: str) -> None:
    """Check the tag and put its weights in the local cache, or raise ModelLoadError fast."""
    # A plain open_clip download without network retries for about a minute per file;
    # here the cache is asked first, then one short HEAD decides whether to download.
    import huggingface_hub
    import open_clip

    _check_tag(model_name, tag)
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg.get("hf_hub"):
        return  # URL-only tags (none in open_clip 3.x) are left to open_clip's own download
    with _hub_offline(), contextlib.suppress(Exception):  # not cached: try the network below
        open_clip.download_pretrained(cfg)
        return
    repo_id, filename = os.path.split(cfg["hf_hub"])
    try:
        _probe_hub(huggingface_hub.hf_hub_url(repo_id, filename or "open_clip_pytorch_model.bin"))
        open_clip.download_pretrained(cfg)
    except Exception as exc:  # DNS, refused, timeout, HF_HUB_OFFLINE=1, a 5xx proxy, a failed download
        raise ModelLoadError(
            f"cannot load weights {tag!r} for model {model_name!r}: not in the local cache and "
            f"download failed ({one_line(exc, 160)}); {HOW_TO_FIX}"
        ) from exc
