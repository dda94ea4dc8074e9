"""Datasets by name: ``create(config.data, seed)``.

- ``digits``: scikit-learn's digits, embedded (the quick start's default);
- ``fashion_mnist``: Fashion-MNIST from its IDX files (``data.dir``);
- ``imagenet``: ILSVRC2012 through tensorflow-datasets (``mlpbnn.data.imagenet``);
- ``coco``: COCO person keypoints, top-down (``mlpbnn.data.coco``);
- ``pose_synthetic``: generated stick figures in COCO's format through the same pipeline
  (``mlpbnn.data.synthetic_pose``; the pose quick start).
"""

from __future__ import annotations

from typing import Any

from mlpbnn.data.base import Dataset

NAMES = ("digits", "fashion_mnist", "imagenet", "coco", "pose_synthetic")


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
    if name == "coco":
        from mlpbnn.data.coco import CocoKeypoints
        return CocoKeypoints.from_config(data_config, seed)
    if name == "pose_synthetic":
        from mlpbnn.data.coco import synthetic
        return synthetic(data_config, seed)
    raise ValueError(f"unknown data.name {name!r}; valid: {', '.join(NAMES)}")
