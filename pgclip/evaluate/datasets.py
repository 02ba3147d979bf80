"""Labeled image sets for the ``classes`` protocol: a folder of class sub-folders, or scikit-learn's digits."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from pgclip.core.errors import InvalidInput, NotFound, PgclipError
from pgclip.evaluate.common import CIFAR10, DEFAULT_SIZE, DIGITS, MNIST


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
        raise NotFound(f"no dataset {str(root)!r}: give a folder with one sub-folder per class, '{DIGITS}', "
                       f"'{MNIST} --data DIR' or '{CIFAR10} --data DIR'")
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
    invert: bool = False, max_images: int | None = None, seed: int = 0, data: Path | None = None,
    split: str = "test",
) -> LabeledImages:
    """``digits``, ``mnist``/``cifar10`` (files in ``data``) or a folder of class sub-folders;
    ``max_images`` takes a seeded random subset."""
    if spec in (MNIST, CIFAR10) and (data is not None or not Path(spec).is_dir()):  # --data: even beside ./mnist
        from pgclip.evaluate.readers import cifar10_dataset, mnist_dataset

        if data is None:
            raise InvalidInput(f"{spec} needs --data DIR: the folder with the {spec} files (nothing is downloaded)")
        reader = mnist_dataset if spec == MNIST else cifar10_dataset
        dataset = reader(Path(data), cache_dir, split=split, max_images=max_images, seed=seed)
        if name:
            dataset.name = name
        return dataset
    if data is not None:
        raise InvalidInput(f"--data is for {MNIST} and {CIFAR10}, not {spec!r}")
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
