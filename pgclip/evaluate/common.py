"""What both protocols share: the papers' figures, the limits, the encoder interface and progress bars."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pgclip.core.errors import InvalidInput
from pgclip.core.search_request import MAX_K  # noqa: F401 - the most results one search returns, re-exported

if TYPE_CHECKING:  # the db modules load when a command runs, not with the CLI
    from pgclip.db.models import ModelRow

# --- the papers' figures ------------------------------------------------------------

PAPER_CAPTIONS = {
    "source": "seed 000 (Novi Sad): CLIP + Pinecone, Flickr30k, 500 random images",
    "top": {1: 0.61, 3: 0.75, 5: 0.85, 10: 0.94},  # caption -> image
    "image_top": None,  # image -> caption: not reported by the paper
}
PAPER_CLASSES = {
    "source": "seed 003 (CLIP-DB): CLIP + Chroma, leave-one-out",
    "MNIST": {1: 0.938, 5: 0.983},
    "CIFAR-10": {1: 0.280, 5: 0.665},
}
CAPTION_TOP = (1, 3, 5, 10)
SET_KEY = "eval_set"  # metadata key: the evaluation set an image belongs to (`eval captions` ranks only its images)
MAX_SET_NAME = 200  # characters
RANK_CELLS = 8_000_000  # image x caption scores per block of the image -> caption ranking (64 MB of float64)
CLASS_K = 5  # top-1 and top-5: five neighbours per query
TEXT_BATCH = 64  # captions per encode_texts call
DIGITS = "digits"
MNIST = "mnist"  # IDX files in a folder the user gives (--data)
CIFAR10 = "cifar10"  # python batches in a folder the user gives (--data)
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


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()
