"""The in-memory datasets: Fashion-MNIST from its IDX gz files, refused with the file named when
damaged; digits as the quick start sees it."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from mlpbnn.data.small import FASHION_MNIST_FILES, digits, fashion_mnist


def _write_idx(directory, n_train=6, n_test=4, labels_train=None):
    rng = np.random.default_rng(0)
    counts = {FASHION_MNIST_FILES[0]: n_train, FASHION_MNIST_FILES[1]: labels_train or n_train,
              FASHION_MNIST_FILES[2]: n_test, FASHION_MNIST_FILES[3]: n_test}
    for name, n in counts.items():
        if "images" in name:
            body = struct.pack(">IIII", 2051, n, 28, 28) + rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes()
        else:
            body = struct.pack(">II", 2049, n) + rng.integers(0, 10, n, dtype=np.uint8).tobytes()
        with gzip.open(directory / name, "wb") as f:
            f.write(body)


def test_fashion_mnist_reads_idx_files(tmp_path):
    _write_idx(tmp_path)
    ds = fashion_mnist(str(tmp_path), seed=0)
    assert (ds.train_size, ds.eval_size, ds.image_shape, ds.num_classes) == (6, 4, (28, 28, 1), 10)


def test_corrupt_gzip_is_named(tmp_path):
    _write_idx(tmp_path)
    (tmp_path / FASHION_MNIST_FILES[2]).write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ValueError, match=rf"{FASHION_MNIST_FILES[2]}: not a readable gzip file"):
        fashion_mnist(str(tmp_path), seed=0)


def test_mismatched_counts_name_both_files(tmp_path):
    _write_idx(tmp_path, n_train=6, labels_train=5)
    with pytest.raises(ValueError, match=rf"{FASHION_MNIST_FILES[0]} has 6 images but {FASHION_MNIST_FILES[1]} "
                                         r"has 5 labels"):
        fashion_mnist(str(tmp_path), seed=0)


def test_digits_split_and_scale():
    ds = digits(0)
    assert (ds.train_size, ds.eval_size) == (1437, 360)
    assert ds.x_train.min() == -1.0 and ds.x_train.max() == 1.0
