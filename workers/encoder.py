"""The CLIP encoder: one object that turns images and texts into unit vectors.

Models are open_clip names (``ViT-B-32``) with weights from a pretrained tag or a local
checkpoint file; ``test-*`` models (``model_configs/``) have seeded random weights, for
tests only. torch and open_clip are imported inside functions: importing this is cheap.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pgclip.core.errors import ModelLoadError

if TYPE_CHECKING:
    from pgclip.core.settings import Settings

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


def _checkpoint_file(pretrained: str) -> Path | None:
    """The local checkpoint `pretrained` names, or None for a tag; raise when a path names nothing."""
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path
    if "/" in pretrained or os.sep in pretrained or pretrained.endswith(CHECKPOINT_SUFFIXES):
        raise ModelLoadError(f"checkpoint file not found: {pretrained}")
    return None


def pretrained_identity(model_name: str, pretrained: str) -> str:
    """What the models table records to identify the weights: ``random-seed-0`` for test
    models (whatever `pretrained` says), ``sha256:<hex>`` of a checkpoint file, else the tag."""
    if is_test_model(model_name):
        return TEST_WEIGHTS_IDENTITY
    path = _checkpoint_file(pretrained)
    if path is None:
        return pretrained
    return f"sha256:{_checkpoint_digest(path)}"


def _digest_cache_file() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("pgclip")) / "checkpoint-digests.json"


def _checkpoint_digest(path: Path) -> str:
    """The sha256 of a checkpoint file, remembered by path, size, mtime and inode.

    Every process that registers or loads the model asks (each `pgclip ingest`, worker,
    search), and hashing costs 0.4 s per 600 MB. A file changed in place gets a new mtime,
    so a stale answer needs a deliberate mtime reset; the digest names weights, it does
    not guard them. Without a writable cache directory every call hashes."""
    stat = path.stat()
    key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns, stat.st_ino]
    cache_file = _digest_cache_file()
    try:
        cache = json.loads(cache_file.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    cache[key] = {"stamp": stamp, "sha256": digest.hexdigest()}
    with contextlib.suppress(OSError):  # a read-only home: hash again next time
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)  # atomic: processes starting together never read half a file
    return digest.hexdigest()


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


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


def _ensure_cached(model_name: str, tag: str) -> None:
    """Check the tag and put its weights in the local cache, or raise ModelLoadError fast."""
    # A plain open_clip download without network retries for about a minute per file;
    # here the cache is asked first, then one short HEAD decides whether to download.
    import huggingface_hub
    import open_clip

    if not open_clip.is_pretrained_cfg(model_name, tag):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise ModelLoadError(
            f"unknown pretrained tag {tag!r} for model {model_name!r} (known tags: {tags}); "
            "or set PGCLIP_PRETRAINED to a local checkpoint file"
        )
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
            f"download failed ({_one_line(exc, 160)}); {HOW_TO_FIX}"
        ) from exc


class ClipEncoder:
    """An open_clip model with its own preprocessing and tokenizer. Cheap to construct;
    weights load once, on :meth:`load` or the first encode, even when threads race.
    Every vector returned is float32 with unit L2 norm.

    ``torch_threads`` is the process's torch thread budget (0: torch's default, one per
    core). ``model_threads`` (0: auto) is how many threads will encode at once, each on
    an equal share of that budget: a worker's throughput setting (see
    :meth:`_resolve_model_threads`; the worker starts :attr:`model_threads` model threads).
    1, the default, gives a single query the whole budget."""

    def __init__(
        self, model_name: str, pretrained: str, *, device: str = "auto", torch_threads: int = 0, model_threads: int = 1
    ) -> None:
        self.model_name = model_name
        self.pretrained = pretrained
        self._requested_device = device
        self._torch_threads = torch_threads
        self._requested_model_threads = model_threads
        self._lock = threading.Lock()
        self._model: Any = None  # with _preprocess, _tokenizer, _device, _dtype, _split: set by load()
        self._preprocess = self._tokenizer = self._device = self._dtype = None
        self._split: _SplitPreprocess | None = None
        self.model_threads = 1  # resolved by load()

    @classmethod
    def from_settings(cls, settings: Settings, *, worker: bool = False) -> ClipEncoder:
        """The configured model (PGCLIP_MODEL, PGCLIP_PRETRAINED, PGCLIP_DEVICE, PGCLIP_TORCH_THREADS);
        for a worker, also PGCLIP_MODEL_THREADS."""
        return cls(settings.model, settings.pretrained, device=settings.device, torch_threads=settings.torch_threads,
                   model_threads=settings.model_threads if worker else 1)

    @functools.cached_property
    def dimension(self) -> int:
        """Length of every vector this encoder returns (from the model config, no load)."""
        return model_dimension(self.model_name)

    @functools.cached_property
    def pretrained_identity(self) -> str:
        """See :func:`pretrained_identity`; a checkpoint is hashed once per encoder."""
        return pretrained_identity(self.model_name, self.pretrained)

    @property
    def device(self) -> str:
        """The torch device the model runs on ("cpu", "cuda", ...); loads the model."""
        self.load()
        return self._device  # type: ignore[return-value]

    @property
    def preprocess(self) -> Any:
        """open_clip's eval transform for this model (PIL image -> tensor); loads the model."""
        self.load()
        return self._preprocess

    def load(self) -> None:
        """Load weights, preprocessing and tokenizer once; raise :class:`ModelLoadError`
        (one line saying what to change) when model, tag, checkpoint or device is unusable."""
        if self._model is not None:
            return
        with self._lock:  # two requests may arrive for a model neither has loaded
            if self._model is None:
                self._load()

    def _load(self) -> None:
        import open_clip
        import torch

        self.dimension  # unknown model names fail here, before anything heavy
        test_model = is_test_model(self.model_name)
        checkpoint = None if test_model else _checkpoint_file(self.pretrained)
        if not test_model and checkpoint is None:
            _ensure_cached(self.model_name, self.pretrained)
        device = self._requested_device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        budget = self._torch_threads or torch.get_num_threads()
        model_threads = self._resolve_model_threads(device, budget)
        # Process-wide (one encoder per process): threads that start encoding later take
        # this too, so with model threads each one runs on its share.
        if self._torch_threads > 0 or model_threads > 1:
            torch.set_num_threads(max(1, budget // model_threads))
        precision = "fp16" if device.startswith("cuda") else "fp32"
        create = functools.partial(open_clip.create_model_and_transforms, precision=precision, device=device)
        try:
            if test_model:
                # Seeded on a forked RNG: identical weights in every process, caller's RNG untouched.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    model, _, preprocess = create(self.model_name)
            else:
                with _hub_offline():  # a tag's weights are cached by now: never ask the hub again
                    model, _, preprocess = create(self.model_name, str(checkpoint or self.pretrained))
            tokenizer = open_clip.get_tokenizer(self.model_name)
        except Exception as exc:  # a corrupt or mismatched checkpoint, no CUDA, a broken config
            raise ModelLoadError(
                f"cannot load model {self.model_name!r} with weights {self.pretrained!r}: {_one_line(exc)}"
            ) from exc
        model.eval()
        self._preprocess, self._tokenizer, self._device = preprocess, tokenizer, device
        self._split = _SplitPreprocess.of(preprocess)
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model_threads = model_threads
        self._model = model  # set last: load() tests it without the lock

    def _resolve_model_threads(self, device: str, budget: int) -> int:
        """How many threads will encode at once. On a GPU, one. On the CPU, auto means two when
        there are at least two torch threads to share: a worker decodes the next batches on
        the same cores while the model runs, and one model running on all the cores stalls
        whenever that decoding takes one of them (each step waits for its slowest thread);
        with two, the other keeps going and the scheduler hands the idle core to the decoder
        (measured on 2 cores in benchmarks/README.md)."""
        if not device.startswith("cpu"):
            return 1
        if self._requested_model_threads > 0:
            return self._requested_model_threads
        return 2 if budget >= 2 else 1

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Unit vectors, shape (len(images), dimension), for RGB images from ``decode.decode``."""
        return self.encode_prepared([self.prepare(image) for image in images])

    def prepare(self, image: Image.Image) -> Any:
        """open_clip's preprocessing of one RGB image, up to what :meth:`encode_prepared` takes.
        Separate so that a worker can prepare the next batch while the model runs this one.

        When the model's transform ends in ToTensor + Normalize (every open_clip eval transform
        does), this runs the steps before them (resize, crop, mode) and returns the 8-bit pixels;
        :meth:`encode_prepared` finishes the batch in one vectorised step. The result is the
        same to the bit, and no torch operation runs outside the model threads: torch gives
        every thread that calls it its own pool of OpenMP threads, and another pool in the
        decode thread would fight the model's for the same cores."""
        self.load()
        if self._split is not None:
            pixels = self._split.pixels(image)
            if pixels is not None:
                return pixels
        return self._preprocess(image)

    def encode_prepared(self, prepared: Sequence[Any]) -> np.ndarray:
        """Unit vectors, shape (len(prepared), dimension), for inputs from :meth:`prepare`."""
        if not prepared:
            return np.empty((0, self.dimension), dtype=np.float32)
        self.load()
        return self._encode(self._model.encode_image, self._batch(prepared))

    def _batch(self, prepared: Sequence[Any]) -> Any:
        """The model's input tensor, on its device and in its dtype, for a batch from :meth:`prepare`."""
        import torch

        if all(isinstance(p, np.ndarray) for p in prepared):
            # 8 bits a channel cross to the device, a quarter of the float bytes.
            batch = self._split.finish(torch.from_numpy(np.stack(prepared)).to(self._device))
        else:  # some images took open_clip's whole transform: finish the others one by one
            batch = torch.stack([
                self._split.finish(torch.from_numpy(p[None]))[0] if isinstance(p, np.ndarray) else p
                for p in prepared
            ]).to(self._device)
        return batch.to(dtype=self._dtype)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors, shape (len(texts), dimension), tokenized by the model's own tokenizer."""
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        self.load()
        return self._encode(self._model.encode_text, self._tokenizer(list(texts)).to(self._device))

    @staticmethod
    def _encode(encode: Any, inputs: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            # Normalised in float32 even on fp16 GPUs, so stored vectors have unit norm to ~1e-7.
            return torch.nn.functional.normalize(encode(inputs).float(), dim=-1).cpu().numpy()


class _SplitPreprocess:
    """open_clip's eval transform cut before its ToTensor + Normalize tail: the pixel steps run
    per image (decode thread), the tail on a whole batch (model threads), with the same operations
    in the same order as torchvision's ``to_tensor`` and ``normalize``, so the same floats."""

    def __init__(self, pixel_steps: Any, mean: Sequence[float], std: Sequence[float]) -> None:
        self.pixel_steps = pixel_steps
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    @classmethod
    def of(cls, preprocess: Any) -> _SplitPreprocess | None:
        """The split of a torchvision ``Compose`` ending in ToTensor + Normalize; None for anything else."""
        from torchvision import transforms

        steps = list(getattr(preprocess, "transforms", ()))
        if len(steps) < 2 or not isinstance(preprocess, transforms.Compose):
            return None
        to_tensor, normalize = steps[-2:]
        # Exact classes: a subclass may convert differently.
        if type(to_tensor) not in _to_tensor_classes() or type(normalize) is not transforms.Normalize:
            return None
        return cls(transforms.Compose(steps[:-2]), normalize.mean, normalize.std)

    def pixels(self, image: Image.Image) -> np.ndarray | None:
        """The image after the pixel steps as (height, width, 3) uint8; None if they made something
        other than an 8-bit RGB image (the caller then runs the whole transform)."""
        out = self.pixel_steps(image)
        if not isinstance(out, Image.Image) or out.mode != "RGB":
            return None
        return np.array(out)  # a writable copy: torch.from_numpy warns about read-only arrays

    def finish(self, pixels: Any) -> Any:
        """ToTensor + Normalize of a (batch, height, width, 3) uint8 tensor: float32 (batch, 3, h, w)."""
        import torch

        x = pixels.permute(0, 3, 1, 2).contiguous().to(dtype=torch.float32).div(255)
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)


def _to_tensor_classes() -> tuple[type, ...]:
    """torchvision's ToTensor and open_clip's MaybeToTensor (which passes tensors through and
    converts images exactly like ToTensor)."""
    from torchvision.transforms import ToTensor

    try:
        from open_clip.transform import MaybeToTensor
    except ImportError:  # an open_clip from before MaybeToTensor: plain ToTensor
        return (ToTensor,)
    return (ToTensor, MaybeToTensor)
