"""The CLIP encoder: one object that turns images and texts into unit vectors.

Start here. :class:`ClipEncoder` is what workers, the API, search and eval use; it keeps
open_clip's own preprocessing and tokenizer and runs the model on a backend chosen by
PGCLIP_ENCODER: ``torch``, ``onnx`` (ONNX Runtime, fp32: the same vectors to cosine
0.9999+, faster on a CPU) or ``onnx-int8`` (weights quantized to int8: faster still, other
vectors). Its neighbours: ``weights.py`` (tags, checkpoints, test models, the torch
model), ``preprocess.py`` (open_clip's transform split for the worker's pipeline),
``backends.py`` (the torch and ONNX Runtime runners), ``onnx_export.py`` (the exports
and their cache). torch, open_clip and onnxruntime are imported inside functions:
importing this is cheap.

Identity: the models table names weights (:func:`pretrained_identity`); vectors of one
models row must all come from one precision. torch and ONNX fp32 share the weights'
identity; int8 vectors are a model of their own (identity ``<weights>+onnx-int8``), so
switching to int8 is a re-embed, and whoever encodes for a row uses the backend its
identity implies (:func:`backend_for_identity`).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pgclip.core.errors import ModelLoadError
from pgclip.workers.preprocess import SplitPreprocess
from pgclip.workers.weights import (
    is_test_model,
    model_dimension,
    register_test_models,
    weights_identity,
)

if TYPE_CHECKING:
    from pgclip.core.settings import Settings

__all__ = [
    "ClipEncoder", "backend_for_identity", "is_test_model", "model_dimension", "pretrained_identity",
    "register_test_models", "weights_of",
]

INT8 = "onnx-int8"
INT8_SUFFIX = "+" + INT8
# PGCLIP_ENCODER=auto: torch on a GPU (ONNX Runtime runs here on the CPU only); on the CPU
# the fastest backend whose vectors match torch's at cosine >= 0.9999 (benchmarks/README.md).
AUTO_ON_CPU = "onnx"


def pretrained_identity(model_name: str, pretrained: str, backend: str = "auto") -> str:
    """What the models table records for these weights run by `backend`: ``random-seed-0``
    for test models, ``sha256:<hex>`` of a checkpoint file, else the tag; with the suffix
    ``+onnx-int8`` for int8 vectors, which must not mix with the others."""
    identity = weights_identity(model_name, pretrained)
    return identity + INT8_SUFFIX if backend == INT8 else identity


def weights_of(identity: str) -> str:
    """The weights' part of a models row's identity (its int8 suffix removed)."""
    return identity.removesuffix(INT8_SUFFIX)


def backend_for_identity(identity: str, configured: str) -> str:
    """The backend that encodes for a models row: int8 for an int8 identity; otherwise the
    configured backend, or the fp32 default where int8 is configured (the row holds fp32 vectors)."""
    if identity.endswith(INT8_SUFFIX):
        return INT8
    return "auto" if configured == INT8 else configured


class ClipEncoder:
    """An open_clip model with its own preprocessing and tokenizer. Cheap to construct;
    weights load once, on :meth:`load` or the first encode, even when threads race.
    Every vector returned is float32 with unit L2 norm.

    ``backend``: ``auto``, ``torch``, ``onnx`` or ``onnx-int8`` (see the module). ``torch_threads``
    is the process's thread budget for the model, whichever backend runs it (0: torch's
    default, one per core). ``model_threads`` (0: auto) is how many threads will encode at
    once, each on an equal share of that budget: a worker's throughput setting (see
    :meth:`_resolve_model_threads`; the worker starts :attr:`model_threads` model threads).
    1, the default, gives a single query the whole budget."""

    def __init__(
        self, model_name: str, pretrained: str, *, device: str = "auto", torch_threads: int = 0, model_threads: int = 1,
        backend: str = "auto",
    ) -> None:
        self.model_name = model_name
        self.pretrained = pretrained
        self._requested_device = device
        self._requested_backend = backend
        self._torch_threads = torch_threads
        self._requested_model_threads = model_threads
        self._lock = threading.Lock()
        self._runner: Any = None  # with _preprocess, _tokenizer, _device, _dtype, _split: set by load()
        self._preprocess = self._tokenizer = self._device = self._dtype = None
        self._split: SplitPreprocess | None = None
        self.model_threads = 1  # resolved by load()
        self.backend = backend  # "auto" resolved by load()

    @classmethod
    def from_settings(cls, settings: Settings, *, worker: bool = False) -> ClipEncoder:
        """The configured model (PGCLIP_MODEL, PGCLIP_PRETRAINED, PGCLIP_DEVICE, PGCLIP_ENCODER,
        PGCLIP_TORCH_THREADS); for a worker, also PGCLIP_MODEL_THREADS."""
        return cls(settings.model, settings.pretrained, device=settings.device, torch_threads=settings.torch_threads,
                   model_threads=settings.model_threads if worker else 1, backend=settings.encoder)

    @functools.cached_property
    def dimension(self) -> int:
        """Length of every vector this encoder returns (from the model config, no load)."""
        return model_dimension(self.model_name)

    @functools.cached_property
    def weights_identity(self) -> str:
        """The weights' identity, whatever the backend; a checkpoint is hashed once per encoder."""
        return weights_identity(self.model_name, self.pretrained)

    @property
    def pretrained_identity(self) -> str:
        """The identity of the models row this encoder's vectors belong to (:func:`pretrained_identity`)."""
        return self.weights_identity + INT8_SUFFIX if self._requested_backend == INT8 else self.weights_identity

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
        """Load weights (or their ONNX export), preprocessing and tokenizer once; raise
        :class:`ModelLoadError` (one line saying what to change) when model, tag, checkpoint,
        device or backend is unusable."""
        if self._runner is not None:
            return
        with self._lock:  # two requests may arrive for a model neither has loaded
            if self._runner is None:
                self._load()

    def _load(self) -> None:
        import torch

        self.dimension  # unknown model names fail here, before anything heavy
        device = self._requested_device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        backend = self._resolve_backend(device)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadError(f"PGCLIP_DEVICE={device}, but torch finds no CUDA device here: "
                                 "set PGCLIP_DEVICE to cpu or auto")
        if device.startswith("cuda:") and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise ModelLoadError(f"PGCLIP_DEVICE={device}, but torch finds {torch.cuda.device_count()} CUDA "
                                 "device(s) here, numbered from 0")
        budget = self._torch_threads or torch.get_num_threads()
        model_threads = self._resolve_model_threads(device, budget)
        threads = max(1, budget // model_threads)
        # Process-wide (one encoder per process): threads that start encoding later take
        # this too, so with model threads each one runs on its share.
        if self._torch_threads > 0 or model_threads > 1:
            torch.set_num_threads(threads)
        precision = "fp16" if device.startswith("cuda") else "fp32"
        if backend == "torch":
            from pgclip.workers.backends import TorchRunner
            from pgclip.workers.weights import build_torch_model

            model, preprocess, tokenizer = build_torch_model(self.model_name, self.pretrained, device=device,
                                                             precision=precision)
            runner: Any = TorchRunner(model)
        else:
            from pgclip.workers.backends import load_onnx

            runner, preprocess, tokenizer = load_onnx(
                self.model_name, self.pretrained, self.weights_identity,
                precision="int8" if backend == INT8 else "fp32", threads=threads,
            )
        self._preprocess, self._tokenizer, self._device = preprocess, tokenizer, device
        self._split = SplitPreprocess.of(preprocess)
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model_threads, self.backend = model_threads, backend
        self._runner = runner  # set last: load() tests it without the lock

    def _resolve_backend(self, device: str) -> str:
        backend = self._requested_backend
        if backend == "auto":
            return AUTO_ON_CPU if device == "cpu" else "torch"
        if backend not in ("torch", "onnx", INT8):
            raise ModelLoadError(f"unknown encoder backend {backend!r}: PGCLIP_ENCODER is auto, torch, onnx or onnx-int8")
        if backend != "torch" and device != "cpu":
            raise ModelLoadError(
                f"PGCLIP_ENCODER={backend} runs on the CPU, and the device is {device}: "
                "use PGCLIP_ENCODER=torch (or auto) on a GPU, or PGCLIP_DEVICE=cpu"
            )
        return backend

    def _resolve_model_threads(self, device: str, budget: int) -> int:
        """How many threads will encode at once. On a GPU, one. On the CPU, auto means two when
        there are at least two threads to share, for every backend: a worker decodes the next
        batches on the same cores while the model runs, and one model running on all the cores
        stalls whenever that decoding takes one of them (each step waits for its slowest thread);
        with two, the other keeps going and the scheduler hands the idle core to the decoder.
        ONNX Runtime gains the same way: two runs at once on one intra-op thread each beat one run
        on two threads, fp32 and int8 alike (measured on 2 cores in benchmarks/README.md)."""
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
        return self._runner.encode_images(self.batch(prepared))

    def batch(self, prepared: Sequence[Any]) -> Any:
        """The model's input tensor, on its device and in its dtype, for a batch from :meth:`prepare`:
        what every backend gets, to the bit."""
        import torch

        self.load()
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
        return self._runner.encode_texts(self._tokenizer(list(texts)).to(self._device))
