"""MNIST (IDX files) and CIFAR-10 (python batches) from a local folder, as PNG files for the ``classes`` protocol.

Nothing is downloaded: the user points at the files. Each reader checks what it
reads (IDX magic numbers, dimensions and counts; CIFAR's arrays and labels) and
says in one line which file is wrong and how. CIFAR batches are pickles, so they
are read with an unpickler that builds only dicts, lists, bytes, str, int and
numpy arrays, and refuses any other global (a pickle from the internet could
otherwise run code).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import random
import struct
import zlib
from pathlib import Path
from typing import Any

from pgclip.core.errors import InvalidInput, NotFound
from pgclip.evaluate.datasets import LabeledImages

SPLITS = ("test", "train")
MNIST_FILES = {"test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
               "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")}
IDX_IMAGES, IDX_LABELS = 2051, 2049  # magic numbers: unsigned bytes, 3 and 1 dimensions
CIFAR_FILES = {"test": ("test_batch",), "train": tuple(f"data_batch_{i}" for i in range(1, 6))}
CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_SIDE = 32


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InvalidInput(f"split must be test or train, got {split!r}")


def _folder(folder: Path, what: str) -> Path:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise NotFound(f"no {what} folder {str(root)!r}: give --data DIR with the {what} files")
    return root.resolve()


def _sample(n: int, max_images: int | None, seed: int) -> list[int]:
    """Every index, or ``max_images`` of them drawn with ``seed`` (as digits does), in order."""
    if max_images is not None and max_images < n:
        return sorted(random.Random(seed).sample(range(n), max_images))
    return list(range(n))


def _write_png(path: Path, pixels: Any, mode: str) -> None:
    from PIL import Image

    if path.is_file():
        return  # written by an earlier run from the same files
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    Image.fromarray(pixels, mode=mode).save(tmp, format="PNG")
    tmp.replace(path)


# --- MNIST ---------------------------------------------------------------------------


def _find(root: Path, base: str) -> Path:
    """``base`` or ``base.gz``; also the ``t10k-images.idx3-ubyte`` spelling some mirrors use."""
    dotted = base.replace("-idx", ".idx")
    for name in (base, base + ".gz", dotted, dotted + ".gz"):
        if (root / name).is_file():
            return root / name
    raise NotFound(f"no {base} (or {base}.gz) in {root}")


def _read_idx(path: Path, magic: int, dims: int) -> tuple[tuple[int, ...], bytes]:
    """The dimensions and the data of an IDX file (gzip or plain), checked against ``magic`` and the sizes."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise InvalidInput(f"{path.name}: cannot read it ({exc})") from None
    header = 4 + 4 * dims
    if len(raw) < header:
        raise InvalidInput(f"{path.name}: truncated, {len(raw)} bytes is shorter than an IDX header")
    found = struct.unpack(">I", raw[:4])[0]
    if found != magic:
        raise InvalidInput(f"{path.name}: not an MNIST {'image' if magic == IDX_IMAGES else 'label'} file "
                           f"(IDX magic number {found}, expected {magic})")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    expected = 1
    for d in shape:
        expected *= d
    if len(raw) - header != expected:
        dims_text = " x ".join(str(d) for d in shape)
        raise InvalidInput(f"{path.name}: {'truncated' if len(raw) - header < expected else 'too long'}, "
                           f"{len(raw) - header} data bytes for {dims_text} (expected {expected})")
    return shape, raw[header:]


def mnist_dataset(
    folder: Path, cache_dir: Path, *, split: str = "test", max_images: int | None = None, seed: int = 0,
) -> LabeledImages:
    """MNIST's ``split`` (test: 10,000 images; train: 60,000) read from IDX files in ``folder``, as PNG files.

    Reads ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (train:
    ``train-...``), gzip or not. Images are written as they are (28x28
    greyscale, white ink on black) to ``cache_dir/mnist-<split>-<hash>/<label>/<index>.png``,
    the hash naming the files' contents; files already there are reused.
    ``max_images`` draws a subset with ``seed`` before anything is written.
    """
    import numpy as np

    _check_split(split)
    root = _folder(folder, "MNIST")
    images_path, labels_path = (_find(root, base) for base in MNIST_FILES[split])
    (n, rows, cols), pixels = _read_idx(images_path, IDX_IMAGES, 3)
    (n_labels,), labels = _read_idx(labels_path, IDX_LABELS, 1)
    if n != n_labels:
        raise InvalidInput(f"{images_path.name} has {n} images but {labels_path.name} has {n_labels} labels")
    if n == 0 or rows == 0 or cols == 0:
        raise InvalidInput(f"{images_path.name}: no images ({n} x {rows} x {cols})")
    if max(labels) > 9:
        raise InvalidInput(f"{labels_path.name}: label {max(labels)} is not a digit 0..9")
    digest = hashlib.sha256(pixels + labels).hexdigest()[:12]
    out = Path(cache_dir).expanduser() / f"mnist-{split}-{digest}"
    grid = np.frombuffer(pixels, dtype=np.uint8).reshape(n, rows, cols)
    items: list[tuple[Path, str]] = []
    for i in _sample(n, max_images, seed):
        label = str(labels[i])
        path = out / label / f"{i:05d}.png"
        _write_png(path, grid[i], "L")
        items.append((path, label))
    description = (f"MNIST {split} split ({n} images, {rows}x{cols} greyscale) from {root}, cached in {out}")
    return LabeledImages(f"mnist-{split}", out, items, description)


# --- CIFAR-10 ------------------------------------------------------------------------


def _numpy_globals() -> dict[tuple[str, str], Any]:
    import numpy as np

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core", "numpy._core"):  # pickles from numpy 1.x name numpy.core, from 2.x numpy._core
        allowed[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5 arrays
    return allowed


class _Forbidden(pickle.UnpicklingError):
    """A global outside the allowed few: refused before it is imported or called."""


class _SafeUnpickler(pickle.Unpickler):
    """Builds only builtins dict/list/bytes/str/int and numpy arrays; any other global is refused unimported."""

    allowed: dict[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in ("dict", "list", "bytes", "str", "int"):
            return {"dict": dict, "list": list, "bytes": bytes, "str": str, "int": int}[name]
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        raise _Forbidden(f"it refers to {module}.{name}, which a CIFAR-10 batch never does")


def _unpickle(path: Path) -> Any:
    """The object in ``path``, unpickled safely (see :class:`_SafeUnpickler`), or a one-line InvalidInput."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{path.name}: cannot read it ({exc.strerror or exc})") from None
    unpickler = _SafeUnpickler(io.BytesIO(raw), encoding="bytes")  # the original batches are Python 2 pickles
    unpickler.allowed = _numpy_globals()
    try:
        return unpickler.load()
    except _Forbidden as exc:
        raise InvalidInput(f"{path.name}: refused, not a CIFAR-10 python batch: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any malformed pickle: EOFError, ValueError, struct.error, ...
        raise InvalidInput(f"{path.name}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from None


def _field(batch: Any, key: str) -> Any:
    for k in (key.encode(), key):
        if isinstance(batch, dict) and k in batch:
            return batch[k]
    return None


def _cifar_names(root: Path) -> list[str]:
    meta = root / "batches.meta"
    if not meta.is_file():
        return list(CIFAR_NAMES)
    names = _field(_unpickle(meta), "label_names")
    if not isinstance(names, list) or not names or not all(isinstance(x, (bytes, str)) and x for x in names):
        raise InvalidInput(f"{meta.name}: no label_names list (a CIFAR-10 batches.meta has ten class names)")
    decoded = [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in names]
    bad = [x for x in decoded if "/" in x or "\\" in x or x in (".", "..")]
    if bad:
        raise InvalidInput(f"{meta.name}: class name {bad[0]!r} cannot be a folder name")
    return decoded


def _cifar_batch(path: Path, classes: int) -> tuple[Any, list[int]]:
    import numpy as np

    batch = _unpickle(path)
    data, labels = _field(batch, "data"), _field(batch, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise InvalidInput(f"{path.name}: data must be a uint8 array of N x 3072, got {shape}")
    if not isinstance(labels, list) or len(labels) != len(data):
        count = len(labels) if isinstance(labels, list) else type(labels).__name__
        raise InvalidInput(f"{path.name}: {len(data)} images but labels is {count}")
    wrong = [x for x in labels if not isinstance(x, int) or not 0 <= x < classes]
    if wrong:
        raise InvalidInput(f"{path.name}: label {wrong[0]!r} is not a class index 0..{classes - 1}")
    return data, labels


def cifar10_dataset(
    folder: Path, cache_dir: Path, *, split: str = "test", max_images: int | None = None, seed: int = 0,
) -> LabeledImages:
    """CIFAR-10's ``split`` (test: ``test_batch``; train: ``data_batch_1..5``) from ``folder``, as PNG files.

    Class names come from ``batches.meta`` when it is there, else the ten
    standard names. Images are written as they are (32x32 RGB) to
    ``cache_dir/cifar10-<split>-<hash>/<class>/<index>.png``; files already there
    are reused. ``max_images`` draws a subset with ``seed`` before anything is written.
    """
    import numpy as np

    _check_split(split)
    root = _folder(folder, "CIFAR-10")
    paths = [root / name for name in CIFAR_FILES[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise NotFound(f"no {', '.join(missing)} in {root} (the CIFAR-10 python version: cifar-10-batches-py)")
    names = _cifar_names(root)
    datas, labels = [], []
    sha = hashlib.sha256()
    for path in paths:
        data, batch_labels = _cifar_batch(path, len(names))
        datas.append(data)
        labels.extend(batch_labels)
        sha.update(np.ascontiguousarray(data).tobytes())
        sha.update(bytes(batch_labels) if len(names) <= 256 else str(batch_labels).encode())
    sha.update("\n".join(names).encode())
    data = np.concatenate(datas)
    out = Path(cache_dir).expanduser() / f"cifar10-{split}-{sha.hexdigest()[:12]}"
    items: list[tuple[Path, str]] = []
    for i in _sample(len(data), max_images, seed):
        label = names[labels[i]]
        path = out / label / f"{i:05d}.png"
        _write_png(path, data[i].reshape(3, CIFAR_SIDE, CIFAR_SIDE).transpose(1, 2, 0), "RGB")
        items.append((path, label))
    description = f"CIFAR-10 {split} split ({len(data)} images, 32x32 RGB) from {root}, cached in {out}"
    return LabeledImages(f"cifar10-{split}", out, items, description)
