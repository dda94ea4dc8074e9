"""Datasets by name: each dataset's module registers it (``base.register_dataset``) with its config
section, a frozen dataclass that is the one home of its defaults and checks.

- ``digits``: scikit-learn's digits, embedded (the quick start's default; ``small.py``);
- ``fashion_mnist``: Fashion-MNIST from its IDX files (``small.py``);
- ``imagenet``: ILSVRC2012 through tensorflow-datasets (``imagenet/``);
- ``coco``: COCO person keypoints, top-down (``coco.py``);
- ``mpii``: MPII Human Pose in HRNet's layout, top-down, scored by PCKh (``mpii.py``, through
  ``coco.py``'s crops and targets);
- ``pose_synthetic``: generated stick figures in COCO's format through the same pipeline
  (``coco.py`` + ``synthetic_pose.py``; the pose quick start).

``section(name, **overrides)`` is the ``data`` config section of a dataset at its defaults;
``parse(config.data)`` checks one (``SectionError`` naming the field); ``create(config.data,
seed)`` builds the dataset. A new dataset is one module that registers itself, imported here.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from mlpbnn.data import coco, imagenet, mpii, small  # noqa: F401 - each registers its datasets
from mlpbnn.data.base import DATASETS, Dataset, DatasetEntry
from mlpbnn.registry import SectionError, from_section, section_dict

__all__ = ["DATASETS", "Dataset", "DatasetEntry", "SectionError", "check", "create", "names", "parse", "section"]


def names() -> list[str]:
    return DATASETS.names()


def section(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """``data`` for dataset ``name``: ``name`` and its section's fields at their defaults."""
    c = ml_collections.ConfigDict({"name": name})
    c.update(section_dict(DATASETS.get(name).config, **overrides))
    return c


def parse(data_config: Any) -> Any:
    """The section dataclass of ``config.data`` (its ``name`` picks the dataset); unknown names,
    unknown fields and bad values are a ``SectionError`` naming the field."""
    name = data_config.get("name", "")
    if name not in DATASETS:
        raise SectionError(f"config.data.name: {name!r} is not valid; choose one of {', '.join(names())}")
    entry = DATASETS.get(name)
    return from_section(entry.config, data_config, "data", ignore=("name",))


def check(data_config: Any) -> None:
    """``parse`` and the dataset's checks of its files (missing data found before any work)."""
    parsed = parse(data_config)
    try:
        DATASETS.get(data_config.name).check_files(parsed)
    except ValueError as e:
        message = str(e)
        raise SectionError(f"config.data.{message}" if message.split(":", 1)[0] in parsed.__dataclass_fields__
                           else f"config.data: {message}") from None


def create(data_config: Any, seed: int) -> Dataset:
    """The dataset ``config.data`` describes."""
    return DATASETS.get(data_config.name).create(parse(data_config), seed)
