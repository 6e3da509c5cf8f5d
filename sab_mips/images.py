"""Image datasets for pixel-by-pixel classification, read from IDX files (the MNIST format) on disk.

    images = load_images("fashion-mnist")           # or a directory of IDX files
    images.splits["train"].pixels                   # (N, P) uint8, P = rows·cols pixels in row-major order
    images.splits["train"].labels                   # (N,) int64 in [0, images.classes)

**Sources.** ``load_images(source)`` takes a named dataset (``DATASETS``) or a directory. Nothing is
downloaded at run time:

* ``fashion-mnist``: Fashion-MNIST (Zalando; 60,000 training and 10,000 test images of 28×28 grey
  pixels, 10 classes of clothing), from the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/``), installed by ``make data``.
* a directory holding the four files of the MNIST layout, each plain or gzipped (``.gz``):
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte`` (MNIST's own files, for instance).

**Splits** (fixed, the same for every run): test = the t10k files; valid = the last N // 12 images of the
training files (5,000 of Fashion-MNIST's 60,000), train = the others. Labels are the classes 0 … C − 1,
C = the largest training label + 1.

**Normalisation** (``normalise``): a pixel p becomes (p / 255 − mean) / std, with the mean and standard
deviation of all the training split's pixels (Fashion-MNIST: 0.286 and 0.353), so the input of every step has
zero mean and unit variance over the training data.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import UserError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
VALID_DIVISOR = 12  # valid = the last N // 12 training images (5,000 of 60,000)
SPLITS = ("train", "valid", "test")

# IDX element types: the third byte of the magic number -> big-endian numpy dtype
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class NamedDataset:
    """An image dataset that installs from a package: its directory and the command that installs it."""

    name: str
    describe: str
    directory: Path
    install: str


DATASETS: dict[str, NamedDataset] = {d.name: d for d in (
    NamedDataset("fashion-mnist", "Fashion-MNIST, 70,000 28x28 images of 10 kinds of clothing", FASHION_MNIST_DIR,
                 "apt-get install dataset-fashion-mnist (or make data)"),
)}
DEFAULT_DATASET = "fashion-mnist"


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in IDX file ``path`` (gzipped when its name ends in .gz), in native byte order.

    UserError naming the file when it is not IDX: a bad magic number, or fewer bytes than its header says."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:  # gzip raises these for a damaged archive
        raise UserError(f"cannot read {path}: {error}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise UserError(f"{path} is not an IDX file (its first bytes are not an IDX magic number)")
    dtype, ndim = np.dtype(IDX_TYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path} is truncated: its header is cut short")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) < header + count * dtype.itemsize:
        raise UserError(f"{path} is truncated: its header promises {count} values of {dtype.itemsize} byte(s) "
                        f"({'x'.join(map(str, shape))}), it holds {(len(data) - header) // dtype.itemsize}")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in .gz): the inverse of ``read_idx``."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}
    array = np.ascontiguousarray(array)
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise UserError(f"IDX has no element type for {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    body = array.astype(np.dtype(IDX_TYPES[code])).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + body)


@dataclass(frozen=True)
class ImageSplit:
    """The images of one split: ``pixels`` (N, P) uint8 in row-major order, ``labels`` (N,) int64."""

    pixels: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass(frozen=True)
class ImageData:
    """An image dataset split into train / valid / test (see the module's docstring)."""

    source: str
    shape: tuple[int, int]  # (rows, cols) of every image
    classes: int
    mean: float  # of the training split's pixels, scaled to [0, 1]
    std: float
    splits: dict[str, ImageSplit]

    @property
    def pixel_count(self) -> int:
        return self.shape[0] * self.shape[1]

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels -> float32 with the training split's zero mean and unit variance."""
        return (pixels.float() / 255.0 - self.mean) / self.std


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def dataset_directory(source: str) -> Path:
    """The directory of ``source`` (a dataset name or a path); UserError saying what to install or pass."""
    if source in DATASETS:
        dataset = DATASETS[source]
        if _find(dataset.directory, FILES["train"][0]) is None:
            raise UserError(f"dataset {source!r} is not installed (looked in {dataset.directory}): "
                            f"{dataset.install}")
        return dataset.directory
    path = Path(source)
    if not path.is_dir():
        raise UserError(f"--data {source!r} is neither a dataset name ({', '.join(DATASETS)}) nor a directory "
                        f"of IDX files")
    return path


def _read_pair(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_name, labels_name = FILES[split]
    found = {name: _find(directory, name) for name in (images_name, labels_name)}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise UserError(f"{directory} lacks {' and '.join(missing)} (plain or .gz): an image directory holds "
                        f"{', '.join(n for pair in FILES.values() for n in pair)}")
    images, labels = read_idx(found[images_name]), read_idx(found[labels_name])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise UserError(f"{found[images_name]}: expected images as an (N, rows, cols) array of bytes, got "
                        f"{images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or labels.dtype.kind not in "iu":
        raise UserError(f"{found[labels_name]}: expected {images.shape[0]} integer labels, got {labels.dtype} "
                        f"{labels.shape}")
    if labels.size and labels.min() < 0:
        raise UserError(f"{found[labels_name]}: labels must be >= 0")
    return images, labels


def load_images(source: str = DEFAULT_DATASET) -> ImageData:
    """Load, check and split the images of ``source`` (a name in ``DATASETS`` or a directory of IDX files).

    UserError (one line) for a dataset that is not installed, a missing or malformed file, training and test
    images of different sizes, test labels the training split lacks, or too few training images to split."""
    directory = dataset_directory(source)
    train_images, train_labels = _read_pair(directory, "train")
    test_images, test_labels = _read_pair(directory, "test")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise UserError(f"{directory}: training images are {train_images.shape[1:]}, test images "
                        f"{test_images.shape[1:]}: they must be the same size")
    n = train_images.shape[0]
    valid = n // VALID_DIVISOR
    if valid < 1 or test_images.shape[0] < 1:
        raise UserError(f"{directory}: {n} training and {test_images.shape[0]} test images are too few (needs "
                        f">= {VALID_DIVISOR} training images, to keep 1/{VALID_DIVISOR} for validation, and a test image)")
    classes = int(train_labels.max()) + 1
    if test_labels.size and int(test_labels.max()) >= classes:
        raise UserError(f"{directory}: a test label ({int(test_labels.max())}) exceeds the training labels' "
                        f"largest ({classes - 1})")
    flat = lambda a: torch.from_numpy(a.reshape(a.shape[0], -1).copy())  # noqa: E731 (N, P) uint8
    labels = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    train_pixels = flat(train_images[: n - valid])
    scaled = train_pixels.double() / 255.0
    splits = {"train": ImageSplit(train_pixels, labels(train_labels[: n - valid])),
              "valid": ImageSplit(flat(train_images[n - valid:]), labels(train_labels[n - valid:])),
              "test": ImageSplit(flat(test_images), labels(test_labels))}
    std = float(scaled.std()) if scaled.numel() > 1 else 1.0
    return ImageData(source=source, shape=tuple(train_images.shape[1:]), classes=classes, mean=float(scaled.mean()),
                     std=std if std > 0 else 1.0, splits=splits)
