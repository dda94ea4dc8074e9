"""What a task is: the pieces of training and evaluation that differ between, say, classification
and pose estimation. The trainer (``mlpbnn.train``) knows nothing else about the task.

A task supplies

- ``model_args()``: the head's arguments for ``models.create`` (``num_classes=...``);
- ``loss(outputs, batch, teacher_outputs)``: the mean training loss and per-step metrics (batch
  means), with or without a frozen teacher's outputs (distillation);
- ``predict(apply, images)``: the evaluation outputs of a batch of images given ``apply`` (the
  model in eval mode); by default ``apply(images)``, a task may add test-time augmentation
  (keypoints: the flip test);
- ``eval_outputs(outputs, batch)``: per-example device arrays of one evaluation batch (computed in
  the jit'd eval step, sharded along the batch like the batch itself);
- ``evaluator()``: a fresh host-side ``Evaluator`` for one pass over the evaluation set, whose
  result has the metrics ``eval_metrics`` and ``count``;
- ``best_metric``/``metric_mode(name)``: which evaluation metric picks the best checkpoint by
  default (``config.best_metric='auto'``) and whether larger is better; ``progress_metric``: the
  training metric shown on the progress bar;
- ``summary(metrics)``: the final line printed after training.

Evaluators accumulate on the host. ``update`` receives this process's rows of the eval outputs
as numpy arrays together with this process's batch (which may carry host-only fields under
``batch['host']``: image ids, crop geometry, ...; those never go to the devices). ``result``
gathers across processes (``gather_rows``/``allgather``), so every process returns the same
numbers, and includes ``count``: the number of real (unpadded) examples seen. ``write(directory,
prefix)``, which the trainer calls on process 0 after ``result``, saves what the evaluation made
(keypoints: the result JSON and a picture; by default nothing).

A task registers itself where it is defined: ``register_task(name, factory, sections=...)``, the
factory ``(config, dataset) -> Task`` and the config sections it reads beside the trainer's (a
name -> frozen dataclass, e.g. keypoints' ``eval``), which config validation checks.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

Array = jax.Array
from mlpbnn.data.base import HOST  # noqa: E402,F401  (batch key of the host-only fields)
from mlpbnn.registry import Registry  # noqa: E402


class Evaluator(abc.ABC):
    """One evaluation pass, accumulated on the host (see the module docstring)."""

    @abc.abstractmethod
    def update(self, outputs: dict[str, np.ndarray], batch: dict[str, Any]) -> None:
        """One eval batch: this process's rows of the outputs and of the batch."""

    @abc.abstractmethod
    def result(self) -> dict[str, float]:
        """The metrics over the whole evaluation set, identical on every process."""

    def write(self, directory: str | Path, prefix: str = "") -> None:
        """Saves what the evaluation made under ``directory`` (file names start with ``prefix``);
        called on process 0 after ``result``. Nothing by default."""
        return None


class Task(abc.ABC):
    """Base class of tasks; see the module docstring for the contract."""

    name: str = ""
    best_metric: str = ""
    progress_metric: str = "loss"

    @abc.abstractmethod
    def model_args(self) -> dict[str, Any]:
        """Head arguments for ``models.create`` (and checked against a teacher's)."""

    @abc.abstractmethod
    def loss(self, outputs: Array, batch: dict[str, Array],
             teacher_outputs: Array | None = None) -> tuple[Array, dict[str, Array]]:
        """(mean loss, {metric: batch mean}) of one training batch; float32."""

    def predict(self, apply: Any, images: Array) -> Array:
        """The model's evaluation outputs of ``images``; ``apply(images)`` unless the task adds
        test-time augmentation. Runs inside the jit'd eval step."""
        return apply(images)

    @abc.abstractmethod
    def eval_outputs(self, outputs: Array, batch: dict[str, Array]) -> dict[str, Array]:
        """Per-example values of one padded eval batch (rows along axis 0)."""

    @property
    @abc.abstractmethod
    def eval_metrics(self) -> tuple[str, ...]:
        """The names of the metrics ``evaluator().result()`` returns (besides ``count``)."""

    @abc.abstractmethod
    def evaluator(self) -> Evaluator:
        """A fresh accumulator for one evaluation pass."""

    def metric_mode(self, name: str) -> str:
        """'max' if larger values of eval metric ``name`` are better, else 'min'."""
        return "min" if name == "loss" else "max"

    def summary(self, metrics: dict[str, float]) -> str:
        return "eval " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def local_rows(x: jax.Array | np.ndarray) -> np.ndarray:
    """This process's rows of a global array sharded along axis 0, in the order of the host-local
    batch it was assembled from (``jax.make_array_from_process_local_data``)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    shards = {s.index[0].start or 0: s for s in x.addressable_shards}  # replicas of a row block: keep one
    return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)])


def allgather(x: np.ndarray) -> np.ndarray:
    """``x`` of every process stacked on a new leading axis ([process_count, ...]), bit-exact.

    ``multihost_utils.process_allgather`` goes through jax arrays, which would round float64 to
    float32 without x64 mode; the bytes are sent instead and viewed back."""
    x = np.ascontiguousarray(x)
    if jax.process_count() == 1:
        return x[None]
    from jax.experimental import multihost_utils

    raw = x.reshape(-1).view(np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(raw))
    return gathered.view(x.dtype).reshape(jax.process_count(), *x.shape)


def gather_rows(x: np.ndarray) -> np.ndarray:
    """The rows of every process concatenated in process order (equal row counts per process,
    as padded eval batches have)."""
    g = allgather(x)
    return g.reshape(-1, *x.shape[1:])


@dataclasses.dataclass(frozen=True)
class TaskEntry:
    """A registered task: ``create(config, dataset) -> Task`` and the config sections it reads
    (name -> frozen dataclass; ``mlpbnn.registry.from_section`` checks them)."""

    create: Callable[[Any, Any], Task]
    sections: Mapping[str, type] = dataclasses.field(default_factory=dict)


TASKS: Registry[TaskEntry] = Registry("task")


def register_task(name: str, create: Callable[[Any, Any], Task], sections: Mapping[str, type] | None = None) -> None:
    """Makes ``config.task = name`` build ``create(config, dataset)`` (called where the task is defined)."""
    TASKS.register(name, TaskEntry(create, dict(sections or {})))
