"""Datasets by name: ``create(config.data, seed)``.

- ``digits``: scikit-learn's digits, embedded (the quick start's default);
- ``fashion_mnist``: Fashion-MNIST from its IDX files (``data.dir``);
- ``imagenet``: ILSVRC2012 through tensorflow-datasets (``mlpbnn.data.imagenet``).
"""

from __future__ import annotations

from typing import Any

from mlpbnn.data.base import Dataset

NAMES = ("digits", "fashion_mnist", "imagenet")


def create(data_config: Any, seed: int) -> Dataset:
    name = data_config.name
    if name == "digits":
        from mlpbnn.data.small import digits
        return digits(seed, augment=data_config.get("augment", "none"))
    if name == "fashion_mnist":
        from mlpbnn.data.small import fashion_mnist
        return fashion_mnist(data_config.get("dir", ""), seed, augment=data_config.get("augment", "none"))
    if name == "imagenet":
        from mlpbnn.data.imagenet import ImageNet
        return ImageNet.from_config(data_config, seed)
    raise ValueError(f"unknown data.name {name!r}; valid: {', '.join(NAMES)}")
