"""Small real datasets held in memory: scikit-learn's digits (the embedded quick-start data)
and Fashion-MNIST from its four standard IDX gz files."""

from __future__ import annotations

import dataclasses
import gzip
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np

from mlpbnn.data.base import (
    Batch,
    ClassificationDataset,
    eval_pad_size,
    local_slice,
    pad_to,
    register_dataset,
    stream_indices,
)

FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
AUGMENTATIONS = ("none", "crop_flip")


class ArrayDataset(ClassificationDataset):
    """Images and labels in memory. Training visits a fresh permutation each epoch (from
    ``seed``); ``augment='crop_flip'`` adds random translations (zero padding ``pad``) and
    horizontal flips, drawn from (seed, example position) so that resuming reproduces them."""

    def __init__(self, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                 num_classes: int, seed: int, augment: str = "none", pad: int = 2):
        if augment not in AUGMENTATIONS:
            raise ValueError(f"data.augment must be one of {AUGMENTATIONS}, got {augment!r}")
        (self.x_train, self.y_train), (self.x_test, self.y_test) = train, test
        self.num_classes, self.seed, self.augment, self.pad = num_classes, seed, augment, pad
        self.image_shape = tuple(self.x_train.shape[1:])
        self.train_size, self.eval_size = len(self.x_train), len(self.x_test)

    def _augment(self, images: np.ndarray, positions: np.ndarray) -> np.ndarray:
        out = np.empty_like(images)
        h, w = images.shape[1:3]
        p = self.pad
        padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        for i, pos in enumerate(positions):
            r = np.random.default_rng([self.seed, 1, int(pos)])
            dy, dx = r.integers(0, 2 * p + 1, 2)
            img = padded[i, dy:dy + h, dx:dx + w]
            out[i] = img[:, ::-1] if r.random() < 0.5 else img
        return out

    def train_batches(self, position: int, global_batch: int, process_index: int = 0,
                      process_count: int = 1) -> Iterator[tuple[Batch, int]]:
        rows = local_slice(global_batch, process_index, process_count)
        while True:
            positions = np.arange(position, position + global_batch)[rows]
            idx = stream_indices(position, global_batch, self.train_size, self.seed)[rows]
            images = self.x_train[idx]
            if self.augment == "crop_flip":
                images = self._augment(images, positions)
            position += global_batch
            yield {"images": images, "labels": self.y_train[idx]}, position

    def eval_batches(self, global_batch: int, process_index: int = 0,
                     process_count: int = 1) -> Iterator[Batch]:
        rows = local_slice(global_batch, process_index, process_count)
        total = eval_pad_size(self.eval_size, global_batch)
        for start in range(0, total, global_batch):
            batch = pad_to({"images": self.x_test[start:start + global_batch],
                            "labels": self.y_test[start:start + global_batch]}, global_batch)
            yield {k: v[rows] for k, v in batch.items()}


def digits(seed: int, test_size: int = 360, augment: str = "none") -> ArrayDataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits, split deterministically and stratified
    (``train_test_split(random_state=0)``) into 1,437 train and 360 test images; pixels 0..16
    mapped to [-1, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 8.0 - 1.0)[..., None]
    y = d.target.astype(np.int32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, random_state=0, stratify=y)
    return ArrayDataset((xtr, ytr), (xte, yte), 10, seed, augment, pad=1)


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: not a readable gzip file ({type(e).__name__}: {e})") from e
    if len(data) < 8:
        raise ValueError(f"{path}: too short for an IDX file ({len(data)} bytes)")
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        arr = np.frombuffer(data, np.uint8, offset=16)
        if arr.size != n * rows * cols:
            raise ValueError(f"{path}: truncated IDX image file ({arr.size} of {n * rows * cols} bytes)")
        return arr.reshape(n, rows, cols)
    if magic == 2049:
        arr = np.frombuffer(data, np.uint8, offset=8)
        if arr.size != n:
            raise ValueError(f"{path}: truncated IDX label file ({arr.size} of {n} labels)")
        return arr
    raise ValueError(f"{path}: not an IDX file (magic number {magic})")


FASHION_MEAN, FASHION_STD = 0.2860, 0.3530


def fashion_mnist(data_dir: str, seed: int, augment: str = "none") -> ArrayDataset:
    """Fashion-MNIST (Xiao et al. 2017), 60,000 train / 10,000 test 28x28 images, 10 classes,
    normalised with the training set's mean and std."""
    d = Path(data_dir or FASHION_MNIST_DIR)
    missing = [f for f in FASHION_MNIST_FILES if not (d / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found: {', '.join(missing)} missing in {d}. On Debian/Ubuntu install it with "
            f"'sudo apt-get install dataset-fashion-mnist' (files land in {FASHION_MNIST_DIR}); elsewhere "
            "download the four .gz files from https://github.com/zalandoresearch/fashion-mnist and pass "
            "--config.data.dir=DIR")
    xtr, ytr, xte, yte = (_read_idx(d / f) for f in FASHION_MNIST_FILES)
    for (images, labels), (fi, fl) in zip(((xtr, ytr), (xte, yte)),
                                         (FASHION_MNIST_FILES[:2], FASHION_MNIST_FILES[2:]), strict=True):
        if len(images) != len(labels):
            raise ValueError(f"Fashion-MNIST in {d}: {fi} has {len(images):,} images but {fl} has {len(labels):,} "
                             "labels")

    def norm(x):
        return ((x.astype(np.float32) / 255.0 - FASHION_MEAN) / FASHION_STD)[..., None]

    return ArrayDataset((norm(xtr), ytr.astype(np.int32)), (norm(xte), yte.astype(np.int32)), 10, seed, augment)


# ------------------------------------------------------------------------------ config sections


@dataclasses.dataclass(frozen=True)
class DigitsConfig:
    """``data`` for ``digits``: ``augment`` 'none' or 'crop_flip' (translations by up to one
    pixel and horizontal flips)."""

    augment: str = "none"
    dataset: ClassVar[str] = "digits"  # the name its messages use

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment: {self.augment!r} is not valid for {self.dataset}; choose one of "
                             f"{', '.join(AUGMENTATIONS)}")


@dataclasses.dataclass(frozen=True)
class FashionMnistConfig(DigitsConfig):
    """``data`` for ``fashion_mnist``: ``dir``, the folder of its four IDX gz files ('': Debian's
    ``dataset-fashion-mnist`` folder), and ``augment``."""

    dir: str = ""
    dataset: ClassVar[str] = "fashion_mnist"


def _check_fashion_files(section: FashionMnistConfig) -> None:
    if section.dir and not Path(section.dir).is_dir():
        raise ValueError(f"dir: {section.dir} is not a directory (it should hold the four Fashion-MNIST IDX gz files)")


def _gray_spec(name: str, size: int, mean: float, std: float, resize_filter: str, note: str = "") -> dict:
    spec = {"dataset": name, "height": size, "width": size, "channels": 1, "mode": "L", "mean": [mean],
            "std": [std], "resize": "stretch", "filter": resize_filter}
    return {**spec, "note": note} if note else spec


register_dataset("digits", DigitsConfig, lambda c, seed: digits(seed, augment=c.augment),
                 input_spec=lambda c: _gray_spec("digits", 8, 0.5, 0.5, "area",
                                                 "scikit-learn digits: 0..16 -> v/8 - 1; white ink on black; a .npy "
                                                 "batch holds that"))
register_dataset("fashion_mnist", FashionMnistConfig, lambda c, seed: fashion_mnist(c.dir, seed, augment=c.augment),
                 check_files=_check_fashion_files,
                 input_spec=lambda c: _gray_spec("fashion_mnist", 28, FASHION_MEAN, FASHION_STD, "bilinear"))
