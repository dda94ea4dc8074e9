"""ILSVRC2012 from a prepared TFDS ``imagenet2012``, read by position on grain.

The training stream is addressed by position, like every dataset here (``mlpbnn.data.base``):
``pipeline.TrainBatch`` and ``pipeline.EvalBatch`` over a split's array_record files (grain's
``ArrayRecordDataSource``), decoded by ``Augment``, run by ``workers`` grain worker processes
(``mp_prefetch``; each worker makes whole batches, so the batches do not depend on the worker count)
or, with ``workers=0``, by grain's read threads in this process (PIL releases the GIL).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlpbnn.data import pipeline
from mlpbnn.data.base import Batch, ClassificationDataset, register_dataset
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
from mlpbnn.registry import from_section


@dataclasses.dataclass(frozen=True)
class ImageNetConfig:
    """``data`` for ``imagenet``.

    Attributes:
      data_dir: the TFDS data folder ('': ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      manual_dir: the folder with ``ILSVRC2012_img_{train,val}.tar``, to prepare ``data_dir`` from
        when it holds no prepared imagenet2012.
      image_size: the crops' side (224).
      crop_scale_min: the random-resized crop's smallest area fraction (0.08).
      resize_method: bilinear (default), bicubic, lanczos, nearest or area.
      eval_resize: the shorter side an evaluation image is resized to for 224 crops (256), scaled
        with ``image_size``.
      workers: grain worker processes (-1: one per core, at most 32; 0: decode in this process
        with one grain read thread per core). prefetch: batches ready per worker.
      draft: decode large JPEGs at a reduced scale when the crop still gets >= its resolution.
      lighting: AlexNet's PCA colour noise, its alphastd (0: off).
    """

    data_dir: str = ""
    manual_dir: str = ""
    image_size: int = 224
    crop_scale_min: float = 0.08
    resize_method: str = "bilinear"
    eval_resize: int = 256
    workers: int = -1
    prefetch: int = 1
    draft: bool = True
    lighting: float = 0.0

    def __post_init__(self) -> None:
        if self.resize_method not in FILTERS:
            raise ValueError(f"resize_method: must be one of {', '.join(FILTERS)}, got {self.resize_method!r}")
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ValueError(f"crop_scale_min: must be in (0, 1], got {self.crop_scale_min}")
        if not self.lighting >= 0.0:
            raise ValueError(f"lighting: must be >= 0 (0 is off), got {self.lighting}")
        if int(self.image_size) < 1:
            raise ValueError(f"image_size: must be >= 1, got {self.image_size}")
        if int(round(self.image_size * self.eval_resize / 224)) < self.image_size:
            raise ValueError(f"eval_resize: {self.eval_resize} gives a resize of "
                             f"{int(round(self.image_size * self.eval_resize / 224))} < image size {self.image_size}")
        if self.workers < -1:
            raise ValueError(f"workers: must be -1 (one per core), 0 (in this process) or a count, got {self.workers}")

    def check_files(self) -> None:
        """Missing data, found before anything is built: a prepared ``data_dir``, or a
        ``manual_dir`` to prepare it from."""
        data_dir = self.data_dir or default_data_dir()
        if is_prepared(data_dir):
            return
        if not self.manual_dir:
            raise ValueError(f"manual_dir: imagenet2012 is not prepared in {data_dir} (data.data_dir) and no "
                             "data.manual_dir names the folder with ILSVRC2012_img_train.tar and "
                             "ILSVRC2012_img_val.tar to prepare it from")
        if not Path(self.manual_dir).is_dir():
            raise ValueError(f"manual_dir: {self.manual_dir} is not a directory")

    def input_spec(self) -> dict[str, Any]:
        """Evaluation's preprocessing of one image: RGB, the shorter side to ``round(image_size *
        eval_resize / 224)``, a centre crop of ``image_size``, ImageNet's mean and std."""
        from mlpbnn.data.pipeline import MEAN, STD
        return {"dataset": "imagenet", "height": self.image_size, "width": self.image_size, "channels": 3,
                "mode": "RGB", "mean": [float(v) for v in MEAN], "std": [float(v) for v in STD],
                "resize": "shorter_side_center_crop",
                "shorter_side": int(round(self.image_size * self.eval_resize / 224)), "filter": self.resize_method}


@dataclasses.dataclass(frozen=True)
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

    def __init__(self, data_dir: str, seed: int, config: ImageNetConfig | None = None, **changes: Any):
        """The prepared imagenet2012 in ``data_dir`` read as ``config`` says (``ImageNetConfig``;
        ``changes`` replace some of its fields, e.g. ``image_size=64, workers=0``)."""
        try:
            c = dataclasses.replace(config or ImageNetConfig(), **changes)
        except ValueError as e:
            raise ValueError(f"data.{e}") from None
        image_size, crop_scale_min, resize_method, eval_resize = c.image_size, c.crop_scale_min, c.resize_method, \
            c.eval_resize
        workers, prefetch, draft, lighting = c.workers, c.prefetch, c.draft, c.lighting
        self.data_dir = os.path.expanduser(data_dir or default_data_dir())
        self.builder = tfds_builder(self.data_dir)
        if not self.builder.is_prepared():
            raise FileNotFoundError(
                f"imagenet2012 is not prepared in {self.data_dir}: run 'python -m mlpbnn.data.imagenet prepare "
                f"--manual_dir DIR_WITH_TARS --data_dir {self.data_dir}' or set data.manual_dir")
        size = int(image_size)
        resize = int(round(size * eval_resize / 224))
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
    def from_config(cls, section: ImageNetConfig | Mapping[str, Any], seed: int) -> ImageNet:
        """The dataset of the config section ``section`` (an ``ImageNetConfig`` or the ``data``
        mapping); if ``data_dir`` holds no prepared imagenet2012, ``manual_dir`` (the folder with
        the tars) prepares it first."""
        if not isinstance(section, ImageNetConfig):
            section = from_section(ImageNetConfig, section, "data", ignore=("name",))
        data_dir = os.path.expanduser(section.data_dir or default_data_dir())
        if not is_prepared(data_dir):
            import jax
            if jax.process_count() > 1:
                raise FileNotFoundError(
                    f"imagenet2012 is not prepared in {data_dir}; with several processes prepare it once first "
                    "(python -m mlpbnn.data.imagenet prepare --manual_dir M --data_dir D) in a shared folder")
            prepare(section.manual_dir, data_dir, workers=max(section.workers, 0))
        return cls(data_dir, seed, section)

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


register_dataset("imagenet", ImageNetConfig, ImageNet.from_config, check_files=ImageNetConfig.check_files,
                 input_spec=ImageNetConfig.input_spec)
