"""Tasks by name: ``create(config, dataset)`` for ``config.task``.

- ``classification``: cross-entropy, distillation, top-k (``mlpbnn.tasks.classification``);
- ``keypoints``: heatmap MSE, heatmap distillation, COCO keypoint AP (``mlpbnn.tasks.keypoints``).

A new task is a ``Task`` subclass (``mlpbnn.tasks.base``) and a factory
``(config, dataset) -> Task`` registered with ``register(name, factory)``; the trainer needs
nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlpbnn.tasks import classification, keypoints
from mlpbnn.tasks.base import Evaluator, Task

Factory = Callable[[Any, Any], Task]
_REGISTRY: dict[str, Factory] = {"classification": classification.from_config, "keypoints": keypoints.from_config}


def register(name: str, factory: Factory) -> None:
    """Makes ``config.task = name`` build ``factory(config, dataset)``."""
    if name in _REGISTRY and _REGISTRY[name] is not factory:
        raise ValueError(f"task {name!r} is already registered")
    _REGISTRY[name] = factory


def names() -> list[str]:
    return sorted(_REGISTRY)


def create(config: Any, dataset: Any) -> Task:
    if config.task not in _REGISTRY:
        raise ValueError(f"unknown task {config.task!r}; valid: {', '.join(names())}")
    return _REGISTRY[config.task](config, dataset)


__all__ = ["Evaluator", "Task", "create", "names", "register"]
