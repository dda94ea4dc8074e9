"""Tasks by name: ``create(config, dataset)`` for ``config.task``.

- ``classification``: cross-entropy, distillation, top-k (``mlpbnn.tasks.classification``);
- ``keypoints``: heatmap MSE, heatmap distillation, COCO keypoint AP (``mlpbnn.tasks.keypoints``).

A new task is a ``Task`` subclass (``mlpbnn.tasks.base``) registered where it is defined with
``register_task(name, factory, sections=...)``, or from anywhere with ``register(name, factory)``;
the trainer needs nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlpbnn.tasks import classification, keypoints  # noqa: F401 - each registers its task
from mlpbnn.tasks.base import TASKS, Evaluator, Task, TaskEntry, register_task

Factory = Callable[[Any, Any], Task]


def register(name: str, factory: Factory) -> None:
    """Makes ``config.task = name`` build ``factory(config, dataset)``."""
    register_task(name, factory)


def names() -> list[str]:
    return TASKS.names()


def create(config: Any, dataset: Any) -> Task:
    return TASKS.get(config.task).create(config, dataset)


__all__ = ["TASKS", "Evaluator", "Task", "TaskEntry", "create", "names", "register", "register_task"]
