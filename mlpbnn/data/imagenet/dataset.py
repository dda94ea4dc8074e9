"""ILSVRC2012 from a prepared TFDS ``imagenet2012``, read by position on grain.

The training stream is addressed by position, like every dataset here (``mlpbnn.data.base``):
``pipeline.TrainBatch`` and ``pipeline.EvalBatch`` over a split's array_record files (grain's
``ArrayRecordDataSource``), decoded by ``Augment``, run by ``workers`` grain worker processes
(``mp_prefetch``; each worker makes whole batches, so the batches do not depend on the worker count)
or, with ``workers=0``, by grain's read threads in this process (PIL releases the GIL).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlpbnn.data import pipeline
from mlpbnn.data.base import Batch, ClassificationDataset
from mlpbnn.data.imagenet.augment import FILTERS, Augment
from mlpbnn.data.imagenet.prepare import (
    CORRUPT_LIST,
    TAR_FILES,
    default_data_dir,
    is_prepared,
    prepare,
    read_corrupt_list,
    say,
    split_sizes,
    tfds_builder,
)
from mlpbnn.data.pipeline import threads, worker_processes


@dataclass(frozen=True)
class _Split:
    """A split's serialised examples and their decoding: ``pipeline.Examples`` for grain's workers."""

    records: Any  # grain.sources.ArrayRecordDataSource
    augment: Augment
    size: int

    def __len__(self) -> int:
        return self.size

    def train_batch(self, indices: np.ndarray, positions: np.ndarray) -> Batch:
        return self._batch(indices, [int(p) for p in positions])

    def eval_batch(self, indices: np.ndarray) -> Batch:
        return self._batch(indices, [None] * len(indices))

    def _batch(self, indices: np.ndarray, positions: Sequence[int | None]) -> Batch:
        images = np.empty((len(indices), self.augment.size, self.augment.size, 3), np.float32)
        labels = np.empty(len(indices), np.int32)
        for i, raw in enumerate(_read(self.records, indices)):
            labels[i] = self.augment.fill(images[i], raw, positions[i])
        return {"images": images, "labels": labels}


def _read(records: Any, indices: np.ndarray) -> Sequence[bytes]:
    """Serialised examples at ``indices``, in that order (array_record reads them file by file)."""
    return records.__getitems__([int(i) for i in indices]) if len(indices) else []


class ImageNet(ClassificationDataset):
    """ILSVRC2012 from a prepared TFDS ``imagenet2012`` (array_record) in ``data_dir``, read with grain."""

    num_classes = 1000

    def __init__(self, data_dir: str, seed: int, *, image_size: int = 224, crop_scale_min: float = 0.08,
                 resize_method: str = "bilinear", eval_resize: int = 256, workers: int = -1, prefetch: int = 1,
                 draft: bool = True, lighting: float = 0.0):
        if resize_method not in FILTERS:
            raise ValueError(f"data.resize_method must be one of {', '.join(FILTERS)}, got {resize_method!r}")
        if not 0.0 < crop_scale_min <= 1.0:
            raise ValueError(f"data.crop_scale_min must be in (0, 1], got {crop_scale_min}")
        if not lighting >= 0.0:
            raise ValueError(f"data.lighting must be >= 0 (0: off), got {lighting}")
        self.data_dir = os.path.expanduser(data_dir or default_data_dir())
        self.builder = tfds_builder(self.data_dir)
        if not self.builder.is_prepared():
            raise FileNotFoundError(
                f"imagenet2012 is not prepared in {self.data_dir}: run 'python -m mlpbnn.data.imagenet prepare "
                f"--manual_dir DIR_WITH_TARS --data_dir {self.data_dir}' or set data.manual_dir")
        size = int(image_size)
        resize = int(round(size * eval_resize / 224))
        if resize < size:
            raise ValueError(f"data.eval_resize {eval_resize} gives a resize of {resize} < image size {size}")
        self.augment = Augment(int(seed), size, float(crop_scale_min), resize_method, resize, bool(draft),
                               float(lighting))
        self.seed, self.size, self.eval_resize = int(seed), size, resize
        self.image_shape = (size, size, 3)
        self.workers = worker_processes(workers)
        self.prefetch = max(1, int(prefetch))
        sizes = split_sizes(self.builder)
        self.train_size, self.eval_size = sizes.get("train", 0), sizes.get("validation", 0)
        self.synsets: list[str] = list(self.builder.info.features["label"].names)
        self._sources: dict[tuple[str, bool], Any] = {}
        self._records: dict[str, Any] = {}
        for split in sizes:  # opens the array_record readers; fails here if the data is in another format
            self.source(split, raw=True)
        self.corrupt = read_corrupt_list(str(self.builder.data_dir))
        if self.corrupt:
            say(f"{len(self.corrupt)} corrupt image(s) listed in {Path(self.builder.data_dir) / CORRUPT_LIST} "
                 "are read as the mean image")

    @classmethod
    def from_config(cls, data_config: Any, seed: int) -> ImageNet:
        """``data.data_dir`` (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``); if it holds
        no prepared imagenet2012, ``data.manual_dir`` (the folder with the tars) prepares it first.
        Optional keys: ``image_size`` (224), ``crop_scale_min`` (0.08), ``resize_method`` (bilinear;
        also bicubic, lanczos, nearest, area), ``eval_resize`` (256: the resize for 224 crops, scaled
        with ``image_size``), ``workers`` (-1: one grain worker process per core, at most 32; 0: decode
        in this process with one grain read thread per core), ``prefetch`` (1 batch ready per worker),
        ``draft`` (True: decode large JPEGs at a reduced scale when the crop still gets >= its output
        resolution), ``lighting`` (0.0: AlexNet PCA colour noise's alphastd, off)."""
        get = data_config.get
        data_dir = os.path.expanduser(get("data_dir", "") or default_data_dir())
        manual_dir = get("manual_dir", "") or ""
        workers = int(get("workers", -1))
        if not is_prepared(data_dir):
            import jax
            if jax.process_count() > 1:
                raise FileNotFoundError(
                    f"imagenet2012 is not prepared in {data_dir}; with several processes prepare it once first "
                    "(python -m mlpbnn.data.imagenet prepare --manual_dir M --data_dir D) in a shared folder")
            prepare(manual_dir, data_dir, workers=max(workers, 0))
        return cls(data_dir, seed, image_size=get("image_size", 224) or 224,
                   crop_scale_min=get("crop_scale_min", 0.08), resize_method=get("resize_method", "bilinear"),
                   eval_resize=get("eval_resize", 256) or 256, workers=workers, prefetch=get("prefetch", 1),
                   draft=get("draft", True), lighting=get("lighting", 0.0) or 0.0)

    def describe(self) -> str:
        a = self.augment
        decode = (f"{self.workers} grain worker processes" if self.workers
                  else f"in-process, {threads(0)} grain read threads")
        return (super().describe() + f" (tfds imagenet2012 at {self.builder.data_dir}; train crop area "
                f">= {a.crop_scale_min}{f', lighting {a.lighting}' if a.lighting else ''}, eval resize "
                f"{a.eval_resize} + centre crop, {a.resize_method}, {decode})")

    # --- reading

    def source(self, split: str, raw: bool = False):
        """TFDS's view of the split, for inspection: a random-access sequence of ``{"image": bytes,
        "label": int, "file_name": bytes}`` (``raw``: of serialised examples, see ``parse_record``)."""
        key = (split, raw)
        if key not in self._sources:
            self._require(split)
            import tensorflow_datasets as tfds
            if raw:
                self._sources[key] = self.builder.as_data_source(
                    split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
            else:
                self._sources[key] = self.builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
        return self._sources[key]

    def records(self, split: str):
        """The split's serialised examples as grain's ``ArrayRecordDataSource`` over TFDS's file
        instructions (the order of ``source(split, raw=True)``); it pickles as file names and offsets,
        so grain's workers open their own readers."""
        if split not in self._records:
            self._require(split)
            import grain
            self._records[split] = grain.sources.ArrayRecordDataSource(
                list(self.builder.info.splits[split].file_instructions))
        return self._records[split]

    def _require(self, split: str) -> None:
        if split not in split_sizes(self.builder):
            tar = TAR_FILES.get(split, split)
            raise FileNotFoundError(f"imagenet2012 at {self.builder.data_dir} has no {split} split ({tar} was "
                                    "not in the manual dir when it was prepared)")

    # --- the Dataset interface

    def train_batches(self, position: int, global_batch: int, process_index: int = 0,
                      process_count: int = 1) -> Iterator[tuple[Batch, int]]:
        if not self.train_size:
            self._require("train")  # raises, naming the missing tar
        examples = _Split(self.records("train"), self.augment, self.train_size)
        yield from pipeline.train_batches(examples, self.seed, position, global_batch, process_index,
                                          process_count, self.workers, self.prefetch)

    def eval_batches(self, global_batch: int, process_index: int = 0,
                     process_count: int = 1) -> Iterator[Batch]:
        if not self.eval_size:
            self._require("validation")  # raises, naming the missing tar
        examples = _Split(self.records("validation"), self.augment, self.eval_size)
        yield from pipeline.eval_batches(examples, global_batch, process_index, process_count, self.workers,
                                         self.prefetch)
