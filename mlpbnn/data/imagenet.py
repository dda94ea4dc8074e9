"""ILSVRC2012 (ImageNet-1k) through tensorflow-datasets' ``imagenet2012`` builder, read by position.

Preparation runs TFDS's own builder on the official tars (``ILSVRC2012_img_train.tar``: a tar of
per-synset tars of JPEGs; ``ILSVRC2012_img_val.tar``: flat JPEGs whose labels come from TFDS's
``validation_labels.txt``, matched to the *sorted* member names) and writes ``array_record`` files,
which allow random access: the training stream is then addressed by position, like every dataset
here (``mlpbnn.data.base``). While TFDS writes the records, every image is also decoded with PIL in
a thread pool; corrupt or truncated files are listed by name (console and ``corrupt_images.txt``
next to the prepared data) instead of being skipped silently or stopping the preparation, and
decode to the mean image (all zeros after normalisation) if they are ever read.

Images are decoded here, not by TFDS: TFDS converts the 22 known CMYK training JPEGs to RGB when
preparing, but its numpy decoder returns 4 channels for any other CMYK file; PIL's ``convert("RGB")``
handles grayscale, CMYK (Adobe-inverted included) and the one PNG alike.

Training: Inception-style random resized crop (area ``crop_scale_min``..1 of the image, aspect
3/4..4/3, ten tries, then torchvision's fallback: the largest centred crop within the aspect
range), horizontal flip, resize to ``image_size``, ImageNet mean/std normalisation and, as an
option (``lighting``, off by default), AlexNet's PCA colour noise on the 0-1 scale. The randomness
of the example at global stream position ``p`` is drawn from ``(seed, p)`` alone, so a run resumed
at a position reproduces the batches exactly, whatever the process or worker count.
Evaluation: shorter side to ``round(image_size * eval_resize / 224)`` (256 at 224), centre crop.

Reading is a grain pipeline (https://github.com/google/grain): a ``MapDataset`` whose ``k``-th element
is this process's rows of the ``k``-th global batch, read from the array_record files with grain's
``ArrayRecordDataSource`` and decoded by ``Augment``, run by ``workers`` grain worker processes
(``mp_prefetch``; each worker makes whole batches, so the batches do not depend on the worker count)
or, with ``workers=0``, by grain's read threads in this process (PIL releases the GIL).

Command line::

    python -m mlpbnn.data.imagenet prepare --manual_dir DIR_WITH_TARS [--data_dir ~/tensorflow_datasets]
    python -m mlpbnn.data.imagenet info [--data_dir DIR]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import math
import os
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mlpbnn.data.base import Batch, ClassificationDataset, eval_pad_size, local_slice, stream_indices

# AUTO_WORKERS, ENDLESS and MEAN stay importable from here (tests, benchmarks).
from mlpbnn.data.pipeline import (  # noqa: F401
    AUTO_WORKERS,
    ENDLESS,
    MEAN,
    STD,
    grain_stream,
    normalise_into,
    threads,
    worker_processes,
)

NAME = "imagenet2012"
TAR_FILES = {"train": "ILSVRC2012_img_train.tar", "validation": "ILSVRC2012_img_val.tar"}
TEST_TAR = "ILSVRC2012_img_test.tar"
CORRUPT_LIST = "corrupt_images.txt"
FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
           "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST,
           "area": Image.Resampling.BOX}
ASPECT_RANGE = (3 / 4, 4 / 3)
CROP_TRIES = 10
_AUG_KEY = 0x1A6E  # keeps the augmentation seeds apart from stream_indices' permutation seeds
_LIGHT_KEY = 0x119F  # and Lighting's apart from both
# AlexNet's PCA of ImageNet's RGB pixels on the 0-1 scale (Krizhevsky et al., NeurIPS 2012, sec. 4.1):
# eigenvalues and unit eigenvectors (columns), as published with fb.resnet.torch's Lighting.
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
PCA_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                       [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]], np.float32)


def _say(msg: str) -> None:
    print(f"[imagenet] {msg}", file=sys.stderr, flush=True)


def default_data_dir() -> str:
    """TFDS's default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def _builder(data_dir: str):
    import tensorflow_datasets as tfds
    return tfds.builder(NAME, data_dir=os.path.expanduser(data_dir), file_format="array_record")


# ----------------------------------------------------------------------------------------------
# Preparation

def check_image(data: bytes) -> tuple[str, str | None]:
    """Decodes an image file completely; returns (PIL mode, None) or ("", error message)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            mode = im.mode
            im.draft(None, (1, 1))  # JPEG: 1/8-scale decode, which still reads every coded byte
            im.load()
        return mode, None
    except Image.UnidentifiedImageError:
        return "", "not a readable image (unknown format or garbage bytes)"
    except Exception as e:  # noqa: BLE001 - any decoder failure is a corrupt file
        return "", f"{type(e).__name__}: {e}"


class _Verifier:
    """Decodes the images TFDS is writing in a thread pool, keeping a bounded number in flight."""

    def __init__(self, workers: int, log: Callable[[str], None], every: int = 50_000):
        n = threads(workers)
        self.pool = ThreadPoolExecutor(n, thread_name_prefix="imagenet-verify")
        self.pending: collections.deque[tuple[str, str, Future]] = collections.deque()
        self.limit, self.log, self.every = 8 * n, log, every
        self.checked = 0
        self.modes: collections.Counter[str] = collections.Counter()
        self.corrupt: list[tuple[str, str, str]] = []

    def submit(self, archive: str, name: str, data: bytes) -> None:
        self.pending.append((archive, name, self.pool.submit(check_image, data)))
        while len(self.pending) > self.limit:
            self._pop()

    def _pop(self) -> None:
        archive, name, fut = self.pending.popleft()
        mode, err = fut.result()
        self.checked += 1
        if err:
            self.corrupt.append((archive, name, err))
            self.log(f"corrupt image {name} in {archive}: {err}")
        else:
            self.modes[mode] += 1
        if self.checked % self.every == 0:
            self.log(f"checked {self.checked:,} images, {len(self.corrupt)} corrupt")

    def drain(self) -> None:
        while self.pending:
            self._pop()

    def close(self) -> None:
        self.drain()
        self.pool.shutdown()


def _hook_verifier(builder, verifier: _Verifier) -> None:
    """Wraps the builder's example generator so that each image is checked as TFDS writes it: one
    pass over the archives. ``imagenet2012``'s split generators pass ``validation_labels`` for the
    validation split and ``labels_exist=False`` for the test split."""
    original = builder._generate_examples

    def generate(**kwargs):
        if kwargs.get("validation_labels"):
            archive = TAR_FILES["validation"]
        elif kwargs.get("labels_exist", True) is False:
            archive = TEST_TAR
        else:
            archive = TAR_FILES["train"]
        for key, record in original(**kwargs):
            image = record["image"]
            data = image if isinstance(image, bytes) else image.read()
            name = record["file_name"]
            verifier.submit(archive, name.decode() if isinstance(name, bytes) else str(name), data)
            yield key, {**record, "image": data}
        verifier.drain()

    builder._generate_examples = generate


@dataclass
class PrepareReport:
    data_dir: str  # the prepared dataset's versioned folder
    splits: dict[str, int]
    already_prepared: bool = False
    checked: int = 0
    modes: dict[str, int] = field(default_factory=dict)
    corrupt: list[tuple[str, str, str]] = field(default_factory=list)  # (archive, file name, error)
    seconds: float = 0.0

    def summary(self) -> str:
        sizes = ", ".join(f"{k} {v:,}" for k, v in self.splits.items())
        head = f"imagenet2012 at {self.data_dir}: {sizes}"
        if self.already_prepared:
            head += " (already prepared)"
        else:
            modes = ", ".join(f"{k} {v:,}" for k, v in sorted(self.modes.items()))
            head += f"; prepared in {self.seconds:.1f} s"
            if self.checked:
                head += f", {self.checked:,} images decoded ({modes})"
        if not self.corrupt:
            return head + "; no corrupt images found" if self.checked else head
        lines = [f"{head}; {len(self.corrupt)} corrupt image(s), read as the mean image:"]
        lines += [f"  {archive}: {name}: {err}" for archive, name, err in self.corrupt]
        return "\n".join(lines)


def _read_corrupt_list(version_dir: str) -> list[tuple[str, str, str]]:
    path = Path(version_dir) / CORRUPT_LIST
    if not path.is_file():
        return []
    rows = [ln.split("\t", 2) for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    return [(r[0], r[1], r[2] if len(r) > 2 else "") for r in rows]


def _split_sizes(builder) -> dict[str, int]:
    return {str(k): v.num_examples for k, v in builder.info.splits.items()}


def _require_splits(builder, splits: Sequence[str], manual_dir: str) -> None:
    have = _split_sizes(builder)
    missing = [s for s in splits if s not in have]
    if missing:
        raise FileNotFoundError(
            f"imagenet2012 at {builder.data_dir} was prepared without the {', '.join(missing)} split(s) "
            f"({', '.join(TAR_FILES[s] for s in missing)} was missing then); delete that folder and prepare "
            f"again with all tars in the manual dir{' ' + manual_dir if manual_dir else ''}")


def is_prepared(data_dir: str) -> bool:
    return _builder(data_dir or default_data_dir()).is_prepared()


def prepare(manual_dir: str, data_dir: str = "", splits: Sequence[str] = ("train", "validation"),
            verify: bool = True, workers: int = 0, log: Callable[[str], None] = _say) -> PrepareReport:
    """Prepares ``imagenet2012`` (array_record) in ``data_dir`` from the tars in ``manual_dir``.

    ``splits`` are required: a missing tar for one of them raises ``FileNotFoundError`` naming it
    (TFDS itself prepares whichever tars are present, and the test tar if it is there). With
    ``verify``, every image is decoded while TFDS writes it and the corrupt ones are reported."""
    import tensorflow_datasets as tfds

    unknown = [s for s in splits if s not in TAR_FILES]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; valid: {', '.join(TAR_FILES)}")
    data_dir = os.path.expanduser(data_dir or default_data_dir())
    builder = _builder(data_dir)
    if builder.is_prepared():
        _require_splits(builder, splits, manual_dir)
        return PrepareReport(str(builder.data_dir), _split_sizes(builder), already_prepared=True,
                             corrupt=_read_corrupt_list(str(builder.data_dir)))
    if not manual_dir:
        raise FileNotFoundError(
            f"imagenet2012 is not prepared in {data_dir} and no manual dir was given: put "
            f"{' and '.join(TAR_FILES[s] for s in splits)} (from https://image-net.org/download-images) in a "
            "folder and pass it as --manual_dir (or --config.data.manual_dir)")
    manual = Path(manual_dir).expanduser()
    missing = [str(manual / TAR_FILES[s]) for s in splits if not (manual / TAR_FILES[s]).is_file()]
    if missing:
        raise FileNotFoundError(
            f"ImageNet tar file(s) not found: {', '.join(missing)}. Download the ILSVRC2012 tars from "
            f"https://image-net.org/download-images into {manual} (names unchanged)")
    present = {name: (manual / name).stat().st_size for name in (*TAR_FILES.values(), TEST_TAR)
               if (manual / name).is_file()}
    log(f"preparing imagenet2012 in {data_dir} (array_record) from "
        + ", ".join(f"{k} ({v / 2**30:.2f} GiB)" for k, v in present.items())
        + ("; decoding every image to find corrupt ones" if verify else "")
        + ". The full dataset takes hours; TFDS shows its progress below.")
    verifier = _Verifier(workers, log) if verify else None
    if verifier is not None:
        _hook_verifier(builder, verifier)
    t0 = time.time()
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    finally:
        if verifier is not None:
            verifier.close()
    report = PrepareReport(str(builder.data_dir), _split_sizes(builder), seconds=time.time() - t0)
    if verifier is not None:
        report.checked, report.modes, report.corrupt = verifier.checked, dict(verifier.modes), verifier.corrupt
        lines = ["# archive\tfile name\terror  (corrupt images found while preparing)"]
        lines += ["\t".join(row) for row in verifier.corrupt]
        (Path(builder.data_dir) / CORRUPT_LIST).write_text("\n".join(lines) + "\n")
    log(report.summary())
    return report


# ----------------------------------------------------------------------------------------------
# Decoding and augmentation

def random_resized_crop(rng: np.random.Generator, height: int, width: int, scale_min: float = 0.08,
                        ratio: tuple[float, float] = ASPECT_RANGE, tries: int = CROP_TRIES
                        ) -> tuple[int, int, int, int]:
    """Inception crop box ``(top, left, h, w)``: area uniform in ``[scale_min, 1]`` of the image,
    log-uniform aspect ``w/h`` in ``ratio``; after ``tries`` misses, the largest centred box whose
    aspect lies in ``ratio`` (torchvision's ``RandomResizedCrop`` semantics)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(tries):
        target = area * rng.uniform(scale_min, 1.0)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def eval_geometry(height: int, width: int, resize: int, size: int) -> tuple[float, float, float, float]:
    """Source-pixel box ``(left, upper, right, lower)`` that ends up in the ``size`` centre crop
    after resizing the shorter side to ``resize`` (torchvision's Resize + CenterCrop)."""
    if width <= height:
        nw, nh = resize, int(resize * height / width)
    else:
        nw, nh = int(resize * width / height), resize
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    sx, sy = nw / width, nh / height
    return left / sx, top / sy, (left + size) / sx, (top + size) / sy


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def _rgb(im: Image.Image, want: tuple[float, float] | None, size0: tuple[int, int]
         ) -> tuple[Image.Image, float, float]:
    """Decodes ``im`` as RGB, at a reduced JPEG scale (1/2, 1/4 or 1/8, libjpeg's DCT scaling) when
    the result keeps at least ``want`` pixels (width, height); returns the image and the factors that
    map original pixel coordinates to its own."""
    sx = sy = 1.0
    if want is not None:
        drafted = im.draft("RGB", (max(1, math.ceil(want[0])), max(1, math.ceil(want[1]))))
        if drafted is not None:  # (mode, (0, 0, w0 / scale, h0 / scale))
            sx, sy = drafted[1][2] / size0[0], drafted[1][3] / size0[1]
    im = im.convert("RGB") if im.mode != "RGB" else im
    im.load()
    return im, sx, sy


def decode_rgb(data: bytes) -> np.ndarray:
    """The image as an (h, w, 3) uint8 RGB array, whatever its colour space (grayscale, CMYK)."""
    with _open(data) as im:
        return np.asarray(_rgb(im, None, im.size)[0])


def parse_record(raw: bytes) -> tuple[bytes, int, str]:
    """(image bytes, label, file name) of one serialised ``imagenet2012`` example (a tf.train.Example
    with TFDS's flat feature keys ``image``, ``label`` and ``file_name``)."""
    from tensorflow_datasets.proto import tf_example_pb2

    feature = tf_example_pb2.Example.FromString(raw).features.feature
    return (feature["image"].bytes_list.value[0], int(feature["label"].int64_list.value[0]),
            feature["file_name"].bytes_list.value[0].decode())


def lighting_noise(rng: np.random.Generator, alphastd: float) -> np.ndarray:
    """AlexNet's PCA colour noise (Krizhevsky, Sutskever, Hinton, NeurIPS 2012, sec. 4.1): the RGB shift
    ``sum_j eigvec[:, j] * alpha_j * eigval_j`` with ``alpha_j ~ N(0, alphastd)``, on the 0-1 pixel scale,
    added to every pixel of the image. Its covariance is ``alphastd**2 * V diag(eigval**2) V^T``."""
    alpha = rng.normal(0.0, alphastd, 3)
    return (PCA_EIGVEC.astype(np.float64) @ (alpha * PCA_EIGVAL)).astype(np.float32)


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(name: str, err: Exception) -> None:
    """One line per corrupt file and process (a grain worker is a process of its own)."""
    with _warned_lock:
        if name in _warned:
            return
        _warned.add(name)
    _say(f"cannot decode {name} ({type(err).__name__}: {err}); using the mean image")


@dataclass(frozen=True)
class Augment:
    """Decoding and augmentation of one image: a pure function of its bytes, ``seed`` and (training) its
    global stream position, so that any process or worker computes the same pixels. Picklable: grain's
    worker processes receive it."""

    seed: int
    size: int
    crop_scale_min: float = 0.08
    resize_method: str = "bilinear"
    eval_resize: int = 256  # the shorter side before the centre crop, in pixels
    draft: bool = True
    lighting: float = 0.0  # alphastd of lighting_noise; 0: off

    def train_pixels(self, data: bytes, position: int) -> np.ndarray:
        """uint8 (S, S, 3): random resized crop + flip drawn from (seed, position)."""
        rng = np.random.default_rng([self.seed, _AUG_KEY, int(position)])
        s = self.size
        with _open(data) as im:
            w0, h0 = im.size
            top, left, h, w = random_resized_crop(rng, h0, w0, self.crop_scale_min)
            flip = rng.random() < 0.5
            want = (w0 * s / w, h0 * s / h) if self.draft else None
            rgb, sx, sy = _rgb(im, want, (w0, h0))
            out = rgb.resize((s, s), FILTERS[self.resize_method],
                             box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy))
        arr = np.asarray(out)
        return arr[:, ::-1] if flip else arr

    def lighting_shift(self, position: int) -> np.ndarray:
        """The RGB shift (0-1 scale) that Lighting adds at ``position``. Its own generator: the crop's
        draw count depends on the image size, and switching Lighting on must not move the crops."""
        return lighting_noise(np.random.default_rng([self.seed, _LIGHT_KEY, int(position)]), self.lighting)

    def eval_pixels(self, data: bytes) -> np.ndarray:
        """uint8 (S, S, 3): shorter side to ``eval_resize``, centre crop."""
        s, r = self.size, self.eval_resize
        with _open(data) as im:
            w0, h0 = im.size
            box = eval_geometry(h0, w0, r, s)
            want = (w0 * r / min(w0, h0), h0 * r / min(w0, h0)) if self.draft else None
            rgb, sx, sy = _rgb(im, want, (w0, h0))
            out = rgb.resize((s, s), FILTERS[self.resize_method],
                             box=(box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy))
        return np.asarray(out)

    def fill(self, out: np.ndarray, raw: bytes, position: int | None) -> int:
        """Parses one serialised example, writes its normalised pixels into ``out`` (training when
        ``position`` is given, else evaluation) and returns its label. A file that cannot be decoded
        becomes the mean image (zeros after normalisation) with a warning: it must not stop a long run."""
        data, label, name = parse_record(raw)
        try:
            arr = self.eval_pixels(data) if position is None else self.train_pixels(data, position)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a corrupt file
            _warn_once(name, e)
            out[...] = 0.0
            return label
        normalise_into(out, arr)
        if position is not None and self.lighting:
            # On the 0-1 scale before normalisation: (x + shift - mean) / std = normalised x + shift / std.
            out += self.lighting_shift(position) / STD
        return label


class _TrainBatch:
    """grain map function: ``k`` -> this process's rows of the ``k``-th global batch of the stream that
    starts at ``start``. Runs in grain's worker processes (or read threads)."""

    def __init__(self, records: Any, augment: Augment, start: int, global_batch: int, rows: slice, size: int):
        self.records, self.augment, self.start, self.global_batch, self.rows, self.size = (
            records, augment, int(start), int(global_batch), rows, int(size))
        # stream_indices draws a whole permutation per call: keep a chunk of the stream. A tuple,
        # replaced whole, so that concurrent read threads never see half an update.
        self._chunk = max(64 * self.global_batch, 4096)
        self._cache: tuple[int, np.ndarray] = (0, np.empty(0, np.int64))

    def indices(self, pos: int) -> np.ndarray:
        """Example indices of the global batch at stream position ``pos``."""
        start, cache = self._cache
        if not start <= pos <= pos + self.global_batch <= start + len(cache):
            start, cache = pos, stream_indices(pos, self._chunk, self.size, self.augment.seed)
            self._cache = (start, cache)
        return cache[pos - start:pos - start + self.global_batch]

    def __call__(self, k: int) -> Batch:
        pos = self.start + int(k) * self.global_batch
        idx = self.indices(pos)[self.rows]
        positions = np.arange(pos, pos + self.global_batch)[self.rows]
        images = np.empty((len(idx), *_shape(self.augment)), np.float32)
        labels = np.empty(len(idx), np.int32)
        for i, raw in enumerate(_read(self.records, idx)):
            labels[i] = self.augment.fill(images[i], raw, int(positions[i]))
        return {"images": images, "labels": labels}


class _EvalBatch:
    """grain map function: ``k`` -> this process's rows of the ``k``-th evaluation batch, padded with
    zeros after the last example and masked (the real rows of a process are a prefix of its slice)."""

    def __init__(self, records: Any, augment: Augment, global_batch: int, rows: slice, size: int):
        self.records, self.augment, self.global_batch, self.rows, self.size = (
            records, augment, int(global_batch), rows, int(size))

    def __call__(self, k: int) -> Batch:
        start = int(k) * self.global_batch
        idx = np.arange(start, start + self.global_batch)[self.rows]
        idx = idx[idx < self.size]
        n = self.rows.stop - self.rows.start
        images = np.zeros((n, *_shape(self.augment)), np.float32)
        labels = np.zeros(n, np.int32)
        for i, raw in enumerate(_read(self.records, idx)):
            labels[i] = self.augment.fill(images[i], raw, None)
        return {"images": images, "labels": labels, "mask": (np.arange(n) < len(idx)).astype(np.float32)}


def _shape(augment: Augment) -> tuple[int, int, int]:
    return (augment.size, augment.size, 3)


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
        self.builder = _builder(self.data_dir)
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
        sizes = _split_sizes(self.builder)
        self.train_size, self.eval_size = sizes.get("train", 0), sizes.get("validation", 0)
        self.synsets: list[str] = list(self.builder.info.features["label"].names)
        self._sources: dict[tuple[str, bool], Any] = {}
        self._records: dict[str, Any] = {}
        for split in sizes:  # opens the array_record readers; fails here if the data is in another format
            self.source(split, raw=True)
        self.corrupt = _read_corrupt_list(str(self.builder.data_dir))
        if self.corrupt:
            _say(f"{len(self.corrupt)} corrupt image(s) listed in {Path(self.builder.data_dir) / CORRUPT_LIST} "
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
        if split not in _split_sizes(self.builder):
            tar = TAR_FILES.get(split, split)
            raise FileNotFoundError(f"imagenet2012 at {self.builder.data_dir} has no {split} split ({tar} was "
                                    "not in the manual dir when it was prepared)")

    def _stream(self, fn: Callable[[int], Batch], length: int) -> Iterator[Batch]:
        return grain_stream(fn, length, self.workers, self.prefetch)

    # --- the Dataset interface

    def train_batches(self, position: int, global_batch: int, process_index: int = 0,
                      process_count: int = 1) -> Iterator[tuple[Batch, int]]:
        rows = local_slice(global_batch, process_index, process_count)
        if not self.train_size:
            self._require("train")  # raises, naming the missing tar
        fn = _TrainBatch(self.records("train"), self.augment, position, global_batch, rows, self.train_size)
        with contextlib.closing(self._stream(fn, ENDLESS)) as batches:
            for k, batch in enumerate(batches):
                yield batch, int(position) + (k + 1) * global_batch

    def eval_batches(self, global_batch: int, process_index: int = 0,
                     process_count: int = 1) -> Iterator[Batch]:
        rows = local_slice(global_batch, process_index, process_count)
        if not self.eval_size:
            self._require("validation")  # raises, naming the missing tar
        fn = _EvalBatch(self.records("validation"), self.augment, global_batch, rows, self.eval_size)
        with contextlib.closing(self._stream(fn, eval_pad_size(self.eval_size, global_batch) // global_batch)) as b:
            yield from b

# ----------------------------------------------------------------------------------------------
# Tars in the official layout (tests and benchmarks)

def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))


def encode_jpeg(pixels: np.ndarray, mode: str = "RGB", quality: int = 95) -> bytes:
    """JPEG bytes of an (h, w, 3) uint8 RGB image, stored in ``mode`` (``L`` or ``CMYK`` give the
    grayscale and CMYK files that ILSVRC2012 contains)."""
    im = Image.fromarray(np.asarray(pixels, np.uint8), "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_tars(manual_dir: str | os.PathLike, train: dict[str, Sequence[tuple[str, bytes]]] | None = None,
               validation: Sequence[tuple[str, bytes]] | None = None) -> list[Path]:
    """Writes ``ILSVRC2012_img_train.tar`` (one inner ``<synset>.tar`` per synset, holding
    ``(file name, bytes)`` images) and/or ``ILSVRC2012_img_val.tar`` (flat files; TFDS labels them
    with the first lines of its ``validation_labels.txt`` in sorted name order)."""
    out = Path(manual_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if train is not None:
        path = out / TAR_FILES["train"]
        with tarfile.open(path, "w") as outer:
            for synset, images in train.items():
                buf = io.BytesIO()
                with tarfile.open(fileobj=buf, mode="w") as inner:
                    for name, data in images:
                        _add_member(inner, name, data)
                _add_member(outer, f"{synset}.tar", buf.getvalue())
        written.append(path)
    if validation is not None:
        path = out / TAR_FILES["validation"]
        with tarfile.open(path, "w") as tar:
            for name, data in validation:
                _add_member(tar, name, data)
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------------
# Command line

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlpbnn.data.imagenet", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="prepare tfds imagenet2012 (array_record) from the ILSVRC2012 tars")
    p.add_argument("--manual_dir", required=True, help=f"folder holding {' and/or '.join(TAR_FILES.values())}")
    p.add_argument("--data_dir", default="", help="TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    p.add_argument("--splits", default="train,validation",
                   help="splits whose tar must be present (comma-separated; default both)")
    p.add_argument("--no_verify", action="store_true", help="skip decoding every image to find corrupt ones")
    p.add_argument("--workers", type=int, default=0, help="verification threads (0: all cores)")
    i = sub.add_parser("info", help="describe a prepared imagenet2012")
    i.add_argument("--data_dir", default="")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            splits = [s.strip() for s in args.splits.split(",") if s.strip()]
            report = prepare(args.manual_dir, args.data_dir, splits, verify=not args.no_verify, workers=args.workers)
            if report.already_prepared:
                _say(report.summary())
        else:
            ds = ImageNet(args.data_dir, 0)
            print(ds.describe())
            print(PrepareReport(str(ds.builder.data_dir), _split_sizes(ds.builder), True, corrupt=ds.corrupt).summary())
    except (FileNotFoundError, ValueError) as e:
        _say(f"error: {e}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
