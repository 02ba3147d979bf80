"""MNIST (IDX) and CIFAR-10 (python batch) readers: tiny files built here, real PNG files written and read back."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pgclip.core.errors import InvalidInput, NotFound
from pgclip.evaluate.datasets import load_dataset
from pgclip.evaluate.readers import CIFAR_NAMES, cifar10_dataset, mnist_dataset


def idx(magic: int, array: np.ndarray) -> bytes:
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, n: int = 12, *, split: str = "t10k", gz: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """n random 28x28 digits; image i's pixel (0, 0) is i, so a file is traceable to its index."""
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n)
    labels = (np.arange(n) * 7) % 10
    folder.mkdir(parents=True, exist_ok=True)
    files = {f"{split}-images-idx3-ubyte": idx(2051, images), f"{split}-labels-idx1-ubyte": idx(2049, labels)}
    for name, data in files.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_images_and_labels_become_png_files_per_class(tmp_path, gz):
    images, labels = write_mnist(tmp_path / "mnist", gz=gz)
    dataset = mnist_dataset(tmp_path / "mnist", tmp_path / "cache")
    assert dataset.name == "mnist-test" and len(dataset.items) == 12
    assert dataset.classes == sorted({str(x) for x in labels})
    for path, label in dataset.items:
        i = int(path.stem)
        assert label == str(labels[i]) and path.parent.name == label
        with Image.open(path) as im:
            assert im.mode == "L" and im.size == (28, 28)
            assert np.array_equal(np.asarray(im), images[i])  # exact pixels, not resampled


def test_mnist_limit_samples_before_writing_and_reuses_files(tmp_path):
    write_mnist(tmp_path / "mnist", n=50)
    first = mnist_dataset(tmp_path / "mnist", tmp_path / "cache", max_images=5, seed=3)
    assert len(first.items) == 5
    assert len(list((tmp_path / "cache").rglob("*.png"))) == 5  # a quick run writes few files
    again = mnist_dataset(tmp_path / "mnist", tmp_path / "cache", max_images=5, seed=3)
    assert again.items == first.items
    other = mnist_dataset(tmp_path / "mnist", tmp_path / "cache", max_images=5, seed=4)
    assert other.items != first.items
    mtimes = {p: p.stat().st_mtime_ns for p, _ in first.items}
    mnist_dataset(tmp_path / "mnist", tmp_path / "cache", max_images=5, seed=3)
    assert {p: p.stat().st_mtime_ns for p, _ in first.items} == mtimes  # not rewritten


def test_mnist_train_split_and_different_files_get_their_own_cache(tmp_path):
    write_mnist(tmp_path / "a", n=6, split="train")
    write_mnist(tmp_path / "b", n=7, split="train")
    a = mnist_dataset(tmp_path / "a", tmp_path / "cache", split="train")
    b = mnist_dataset(tmp_path / "b", tmp_path / "cache", split="train")
    assert a.name == "mnist-train" and a.root != b.root and len(b.items) == 7
    with pytest.raises(NotFound, match="t10k-images-idx3-ubyte"):
        mnist_dataset(tmp_path / "a", tmp_path / "cache", split="test")


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_mnist_bad_files_are_one_line_errors_naming_the_file(tmp_path):
    folder = tmp_path / "mnist"
    images, labels = write_mnist(folder)
    image_file = folder / "t10k-images-idx3-ubyte"

    image_file.write_bytes(idx(2049, images))  # a label magic number in the image file
    with pytest.raises(InvalidInput) as exc:
        mnist_dataset(folder, tmp_path / "cache")
    assert "t10k-images-idx3-ubyte" in one_line(exc) and "magic number 2049, expected 2051" in str(exc.value)

    image_file.write_bytes(idx(2051, images)[:-100])
    with pytest.raises(InvalidInput) as exc:
        mnist_dataset(folder, tmp_path / "cache")
    assert "t10k-images-idx3-ubyte: truncated" in one_line(exc)

    image_file.write_bytes(b"\x00\x00")
    with pytest.raises(InvalidInput, match="shorter than an IDX header"):
        mnist_dataset(folder, tmp_path / "cache")

    image_file.write_bytes(idx(2051, images[:5]))
    with pytest.raises(InvalidInput) as exc:
        mnist_dataset(folder, tmp_path / "cache")
    assert "has 5 images but t10k-labels-idx1-ubyte has 12 labels" in one_line(exc)

    image_file.unlink()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx(2051, images))[:40])
    with pytest.raises(InvalidInput) as exc:
        mnist_dataset(folder, tmp_path / "cache")
    assert "t10k-images-idx3-ubyte.gz: cannot read it" in one_line(exc)

    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(NotFound) as exc:
        mnist_dataset(folder, tmp_path / "cache")
    assert "no t10k-images-idx3-ubyte (or t10k-images-idx3-ubyte.gz)" in one_line(exc)
    with pytest.raises(NotFound, match="no MNIST folder"):
        mnist_dataset(tmp_path / "nowhere", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing written from bad files


def write_cifar(folder: Path, name: str, n: int, *, protocol: int = pickle.HIGHEST_PROTOCOL, offset: int = 0,
                meta: list[bytes] | None = None) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(n + offset)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(x) for x in (np.arange(n) + offset) % 10]
    folder.mkdir(parents=True, exist_ok=True)
    batch = {b"batch_label": b"testing batch", b"labels": labels, b"data": data,
             b"filenames": [f"img{i}.png".encode() for i in range(n)]}
    (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    if meta is not None:
        (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": meta, b"num_vis": 3072}, protocol=protocol))
    return data, labels


@pytest.mark.parametrize("protocol", [4, 5])
def test_cifar_batch_becomes_rgb_png_files_named_by_class(tmp_path, protocol):
    data, labels = write_cifar(tmp_path / "cifar", "test_batch", 15, protocol=protocol)
    dataset = cifar10_dataset(tmp_path / "cifar", tmp_path / "cache")
    assert dataset.name == "cifar10-test" and len(dataset.items) == 15
    assert dataset.classes == sorted(CIFAR_NAMES)  # no batches.meta: the standard names
    for path, label in dataset.items:
        i = int(path.stem)
        assert label == CIFAR_NAMES[labels[i]]
        with Image.open(path) as im:
            assert im.mode == "RGB" and im.size == (32, 32)
            pixels = np.asarray(im)
        # CIFAR rows are 1024 red, 1024 green, 1024 blue values, row-major.
        assert pixels[0, 0].tolist() == [data[i, 0], data[i, 1024], data[i, 2048]]
        assert pixels[0, 1, 2] == data[i, 2049] and pixels[1, 0, 0] == data[i, 32]


def test_cifar_train_split_meta_names_and_limit(tmp_path):
    folder = tmp_path / "cifar"
    names = [f"kind{i}".encode() for i in range(10)]
    for b in range(1, 6):
        write_cifar(folder, f"data_batch_{b}", 4, offset=b, meta=names)
    dataset = cifar10_dataset(folder, tmp_path / "cache", split="train")
    assert len(dataset.items) == 20 and set(dataset.classes) <= {n.decode() for n in names}
    small = cifar10_dataset(folder, tmp_path / "cache2", split="train", max_images=3, seed=1)
    assert len(small.items) == 3 and len(list((tmp_path / "cache2").rglob("*.png"))) == 3
    (folder / "data_batch_4").unlink()
    with pytest.raises(NotFound) as exc:
        cifar10_dataset(folder, tmp_path / "cache", split="train")
    assert "no data_batch_4 in" in one_line(exc)


class Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_cifar_pickle_with_a_forbidden_global_is_refused_unexecuted(tmp_path, monkeypatch):
    folder = tmp_path / "cifar"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Boom(), b"labels": [0]}))
    with pytest.raises(InvalidInput) as exc:
        cifar10_dataset(folder, tmp_path / "cache")
    message = one_line(exc)
    assert "test_batch: refused" in message and "system" in message
    assert not (tmp_path / "PWNED").exists()


def test_cifar_malformed_batches_are_one_line_errors(tmp_path):
    folder = tmp_path / "cifar"
    folder.mkdir()
    batch = folder / "test_batch"
    batch.write_bytes(b"not a pickle at all")
    with pytest.raises(InvalidInput) as exc:
        cifar10_dataset(folder, tmp_path / "cache")
    assert "test_batch: not a CIFAR-10 python batch" in one_line(exc)

    batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(InvalidInput, match="uint8 array of N x 3072"):
        cifar10_dataset(folder, tmp_path / "cache")

    batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}))
    with pytest.raises(InvalidInput, match="2 images but labels is 1"):
        cifar10_dataset(folder, tmp_path / "cache")

    batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}))
    with pytest.raises(InvalidInput, match="label 12 is not a class index 0..9"):
        cifar10_dataset(folder, tmp_path / "cache")

    good = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})
    batch.write_bytes(good[: len(good) // 2])
    with pytest.raises(InvalidInput) as exc:
        cifar10_dataset(folder, tmp_path / "cache")
    assert "test_batch: not a CIFAR-10 python batch" in one_line(exc)
    assert not (tmp_path / "cache").exists()


def test_load_dataset_selects_the_readers_by_name(tmp_path, monkeypatch):
    write_mnist(tmp_path / "mnist")
    monkeypatch.chdir(tmp_path)  # a ./mnist folder: with --data, still the reader
    dataset = load_dataset("mnist", cache_dir=tmp_path / "cache", data=Path("mnist"), max_images=4, name="m")
    assert dataset.name == "m" and len(dataset.items) == 4 and dataset.items[0][0].suffix == ".png"
    assert str(tmp_path / "mnist") in dataset.description
    monkeypatch.chdir(tmp_path / "cache")
    with pytest.raises(InvalidInput, match="mnist needs --data DIR"):
        load_dataset("mnist", cache_dir=tmp_path / "cache")
    with pytest.raises(InvalidInput, match="--data is for mnist and cifar10"):
        load_dataset("digits", cache_dir=tmp_path / "cache", data=tmp_path / "mnist")
    with pytest.raises(InvalidInput, match="split must be test or train"):
        load_dataset("cifar10", cache_dir=tmp_path / "cache", data=tmp_path, split="val")
