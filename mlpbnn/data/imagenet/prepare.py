"""Preparing TFDS's ``imagenet2012`` (array_record) from the official ILSVRC2012 tars.

TFDS's own builder reads ``ILSVRC2012_img_train.tar`` (a tar of per-synset tars of JPEGs) and
``ILSVRC2012_img_val.tar`` (flat JPEGs whose labels come from TFDS's ``validation_labels.txt``,
matched to the *sorted* member names) and writes ``array_record`` files, which allow random access.
While it writes them, every image is also decoded with PIL in a thread pool; corrupt or truncated
files are listed by name (console and ``corrupt_images.txt`` next to the prepared data) instead of
being skipped silently or stopping the preparation.
"""

from __future__ import annotations

import collections
import io
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mlpbnn.data.pipeline import threads

NAME = "imagenet2012"
TAR_FILES = {"train": "ILSVRC2012_img_train.tar", "validation": "ILSVRC2012_img_val.tar"}
TEST_TAR = "ILSVRC2012_img_test.tar"
CORRUPT_LIST = "corrupt_images.txt"


def say(msg: str) -> None:
    print(f"[imagenet] {msg}", file=sys.stderr, flush=True)


def default_data_dir() -> str:
    """TFDS's default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def tfds_builder(data_dir: str):
    import tensorflow_datasets as tfds
    return tfds.builder(NAME, data_dir=os.path.expanduser(data_dir), file_format="array_record")


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


def read_corrupt_list(version_dir: str) -> list[tuple[str, str, str]]:
    path = Path(version_dir) / CORRUPT_LIST
    if not path.is_file():
        return []
    rows = [ln.split("\t", 2) for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    return [(r[0], r[1], r[2] if len(r) > 2 else "") for r in rows]


def split_sizes(builder) -> dict[str, int]:
    return {str(k): v.num_examples for k, v in builder.info.splits.items()}


def _require_splits(builder, splits: Sequence[str], manual_dir: str) -> None:
    have = split_sizes(builder)
    missing = [s for s in splits if s not in have]
    if missing:
        raise FileNotFoundError(
            f"imagenet2012 at {builder.data_dir} was prepared without the {', '.join(missing)} split(s) "
            f"({', '.join(TAR_FILES[s] for s in missing)} was missing then); delete that folder and prepare "
            f"again with all tars in the manual dir{' ' + manual_dir if manual_dir else ''}")


def is_prepared(data_dir: str) -> bool:
    return tfds_builder(data_dir or default_data_dir()).is_prepared()


def prepare(manual_dir: str, data_dir: str = "", splits: Sequence[str] = ("train", "validation"),
            verify: bool = True, workers: int = 0, log: Callable[[str], None] = say) -> PrepareReport:
    """Prepares ``imagenet2012`` (array_record) in ``data_dir`` from the tars in ``manual_dir``.

    ``splits`` are required: a missing tar for one of them raises ``FileNotFoundError`` naming it
    (TFDS itself prepares whichever tars are present, and the test tar if it is there). With
    ``verify``, every image is decoded while TFDS writes it and the corrupt ones are reported."""
    import tensorflow_datasets as tfds

    unknown = [s for s in splits if s not in TAR_FILES]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; valid: {', '.join(TAR_FILES)}")
    data_dir = os.path.expanduser(data_dir or default_data_dir())
    builder = tfds_builder(data_dir)
    if builder.is_prepared():
        _require_splits(builder, splits, manual_dir)
        return PrepareReport(str(builder.data_dir), split_sizes(builder), already_prepared=True,
                             corrupt=read_corrupt_list(str(builder.data_dir)))
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
    report = PrepareReport(str(builder.data_dir), split_sizes(builder), seconds=time.time() - t0)
    if verifier is not None:
        report.checked, report.modes, report.corrupt = verifier.checked, dict(verifier.modes), verifier.corrupt
        lines = ["# archive\tfile name\terror  (corrupt images found while preparing)"]
        lines += ["\t".join(row) for row in verifier.corrupt]
        (Path(builder.data_dir) / CORRUPT_LIST).write_text("\n".join(lines) + "\n")
    log(report.summary())
    return report
