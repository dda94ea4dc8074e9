"""What the trainer needs from a dataset, and the host-batch -> global-array step.

A dataset yields *host-local* numpy batches: on each process, its own contiguous slice of every
global batch. ``to_global`` assembles them into one ``jax.Array`` sharded over the mesh's
``data`` axis, so that the jit'd step sees the global batch (BatchNorm statistics included).

Training input is addressed by position: ``train_batches(position)`` starts at the
``position``-th global example of an endless, seed-determined stream, so a checkpoint that
stores the position resumes on exactly the next batch. Evaluation covers every example once:
the last global batch is padded and carries ``mask`` = 0 on the padding.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mlpbnn.registry import Registry

Batch = dict[str, Any]
HOST = "host"  # batch key of host-only fields (mlpbnn.tasks.base reads them in evaluators)


class Dataset(abc.ABC):
    """Any task's data. Batches are dicts of host-local numpy arrays: ``images`` (NHWC float32,
    the model's input, ``image_shape`` per example) and whatever the task reads (labels,
    heatmaps, ...); evaluation batches add ``mask`` and may carry host-only fields under
    ``batch['host']`` (ids, geometry), which ``to_global`` never sends to the devices."""

    image_shape: tuple[int, int, int]
    train_size: int
    eval_size: int

    @abc.abstractmethod
    def train_batches(self, position: int, global_batch: int, process_index: int = 0,
                      process_count: int = 1) -> Iterator[tuple[Batch, int]]:
        """Host-local training batches from ``position`` on, each with the position after it."""

    @abc.abstractmethod
    def eval_batches(self, global_batch: int, process_index: int = 0,
                     process_count: int = 1) -> Iterator[Batch]:
        """Host-local evaluation batches with ``mask``; padded, never dropped."""

    def describe(self) -> str:
        return (f"{type(self).__name__}: {self.train_size:,} train / {self.eval_size:,} eval images "
                f"{'x'.join(map(str, self.image_shape))}")

    def eval_set(self, source: str) -> Dataset:
        """This dataset with the evaluation set ``source`` ('': its own), for a named evaluation
        (``config.evals``; COCO: 'gt' or 'det' boxes). ValueError naming the valid sources."""
        if source:
            raise ValueError(f"{type(self).__name__} has one evaluation set; source must be '', got {source!r}")
        return self


class ClassificationDataset(Dataset):
    """Images with integer ``labels`` in ``range(num_classes)``."""

    num_classes: int

    def describe(self) -> str:
        return super().describe() + f", {self.num_classes} classes"


class KeypointsDataset(Dataset):
    """Top-down keypoint crops: batches with ``heatmaps`` and ``target_weight`` of
    ``heatmap_shape`` (H, W, K) targets of ``skeleton``'s joints (``mlpbnn.pose.skeleton``),
    evaluated by ``benchmark``: 'coco' (keypoint AP against ``val_coco``, pycocotools' ``COCO`` of
    the evaluation split) or 'pckh' (MPII's PCKh against ``pckh_gt``,
    ``mlpbnn.pose.pckh.PckhGroundTruth``, one person per evaluation row in its order); its
    images ``load_image`` reads (for pictures of the results)."""

    heatmap_shape: tuple[int, int, int]
    skeleton: Any
    benchmark: str = "coco"
    val_coco: Any = None
    pckh_gt: Any = None

    @abc.abstractmethod
    def load_image(self, image_id: int) -> np.ndarray:
        """The evaluation image ``image_id`` as RGB uint8 (H, W, 3)."""


def local_slice(global_batch: int, process_index: int, process_count: int) -> slice:
    """This process's rows of a global batch."""
    if global_batch % process_count:
        raise ValueError(f"batch_size {global_batch} is not divisible by the {process_count} processes")
    per = global_batch // process_count
    return slice(process_index * per, (process_index + 1) * per)


def _pad_rows(v: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([v, np.zeros((size - len(v), *v.shape[1:]), v.dtype)])


def pad_to(batch: Batch, size: int) -> Batch:
    """Pads every array (host-only fields too) to ``size`` rows with zeros and sets ``mask``
    (1 real, 0 padding)."""
    n = len(batch["images"])
    out = {k: ({h: _pad_rows(a, size) for h, a in v.items()} if k == HOST else _pad_rows(v, size))
           for k, v in batch.items()}
    out["mask"] = (np.arange(size) < n).astype(np.float32)
    return out


def data_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def to_global(batch: Batch, mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global jax.Arrays sharded along the batch axis (host-only
    fields under ``batch['host']`` stay behind)."""
    sharding = data_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items() if k != HOST}


def eval_pad_size(n: int, global_batch: int) -> int:
    return -(-n // global_batch) * global_batch


def stream_indices(start: int, count: int, size: int, seed: int) -> np.ndarray:
    """Indices of examples ``start .. start+count-1`` of the endless stream that visits a fresh
    seed-determined permutation of ``range(size)`` every epoch."""
    g = np.arange(start, start + count)
    epochs, offsets = np.divmod(g, size)
    out = np.empty(count, np.int64)
    for e in np.unique(epochs):
        perm = np.random.default_rng([seed, int(e)]).permutation(size)
        sel = epochs == e
        out[sel] = perm[offsets[sel]]
    return out


def describe_batch(batch: dict[str, Any]) -> str:
    return ", ".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in batch.items())


# ------------------------------------------------------------------------------ registration


def _no_files(section: Any) -> None:
    """A dataset whose section names no files to check before the run."""


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset.

    Attributes:
      config: its config section, a frozen dataclass: the fields' defaults are the section's
        defaults (``data.section``), its ``__post_init__`` checks their values naming the field.
      create: ``create(section, seed) -> Dataset`` from that dataclass.
      check_files: raises ValueError naming the field when the section's files are missing (run
        by config validation before anything is built).
      input_spec: ``input_spec(section)``, the preprocessing of one image for export and
        ``mlpbnn.infer`` (size, channels, mean and std, resize), or None.
    """

    config: type
    create: Callable[[Any, int], Dataset]
    check_files: Callable[[Any], None] = _no_files
    input_spec: Callable[[Any], dict[str, Any]] | None = None


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def register_dataset(name: str, config: type, create: Callable[[Any, int], Dataset], *,
                     check_files: Callable[[Any], None] = _no_files,
                     input_spec: Callable[[Any], dict[str, Any]] | None = None) -> None:
    """Registers dataset ``name`` (called where the dataset is defined)."""
    DATASETS.register(name, DatasetEntry(config, create, check_files, input_spec))
