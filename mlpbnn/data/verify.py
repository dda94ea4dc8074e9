"""Image files checked before a run: every image a dataset will read decodes completely.

libjpeg treats a truncated JPEG as a warning ("Premature end of JPEG file", printed without a file
name) and OpenCV's ``imread``, the pose pipeline's decoder (``mlpbnn.data.coco.read_image``),
returns the image with its missing rows grey; Pillow does the same only when
``ImageFile.LOAD_TRUNCATED_IMAGES`` is set. A file therefore passes only if

1. it is not empty and Pillow identifies it (the header: format and size),
2. Pillow decodes every pixel with truncated images refused (``Image.load``), and
3. OpenCV, as the pipeline calls it, decodes it to the same width and height,

and, where the annotations give one, its size is theirs (boxes and joints are in those pixels).

Files are checked by a thread pool (both decoders release the GIL while decoding). A file that
passed is remembered, with its size in bytes, its modification time (ns) and its width and height,
in one small JSON cache file per image folder under ``$XDG_CACHE_HOME/mlpbnn/verified_images``
(``~/.cache`` without it), so a rerun decodes only new or changed files. Failed files are never
cached: they are decoded again on every run until fixed.

Config fields (``VerifyConfig``, mixed into a dataset's ``data`` section): ``verify_images``
(false skips the check, for trusted data) and ``bad_images``: ``refuse`` (the run is refused, each
bad file named on its own line, at most ``MAX_LISTED`` of them, with the count) or ``skip`` (the
boxes of bad images are dropped, said in one summary line).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Collection, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlpbnn.data.pipeline import threads

POLICIES = ("refuse", "skip")
MAX_LISTED = 20  # bad files named one per line in a refusal; the rest are counted
_CACHE_VERSION = 1  # bump when the checks change, so that older verdicts are not trusted


def _say(msg: str) -> None:
    print(f"[verify] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class VerifyConfig:
    """The ``data`` fields of a dataset whose image files are checked before the run.

    Attributes:
      verify_images: decode every image the run reads before training (cached: a rerun decodes
        only new or changed files); false skips it, for trusted data.
      bad_images: what an image that does not decode completely does: 'refuse' the run (each bad
        file named) or 'skip' (its boxes are dropped, one summary line).
    """

    verify_images: bool = True
    bad_images: str = "refuse"

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)  # the dataset's own checks (mixed in first)
        if parent is not None:
            parent()
        if self.bad_images not in POLICIES:
            raise ValueError(f"bad_images: must be one of {', '.join(POLICIES)}, got {self.bad_images!r}")


class BadImagesError(ValueError):
    """Image files that do not decode completely; the message names each (one line each)."""


def decode(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of the image file ``path`` after a complete decode by Pillow (header, then
    every pixel, truncated data refused) and by OpenCV as the pipeline reads it. ValueError with
    the reason otherwise."""
    import cv2
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    if os.path.getsize(path) == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            size = image.size
            try:
                image.load()
            except OSError as e:  # Pillow's "image file is truncated (N bytes not processed)" and decoder errors
                raise ValueError(f"does not decode completely ({e})") from None
    except UnidentifiedImageError:
        raise ValueError("not an image (Pillow cannot identify its format)") from None
    except Image.DecompressionBombError as e:
        raise ValueError(str(e)) from None
    except (OSError, SyntaxError) as e:  # unreadable, or a malformed header
        raise ValueError(f"cannot be read ({type(e).__name__}: {e})") from None
    decoded = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if decoded is None:
        raise ValueError("OpenCV cannot decode it (the pipeline reads images with OpenCV)")
    if (decoded.shape[1], decoded.shape[0]) != size:
        raise ValueError(f"OpenCV decodes it as {decoded.shape[1]}x{decoded.shape[0]}, Pillow as {size[0]}x{size[1]}")
    return size


@dataclass
class Verified:
    """What ``verify_files`` found: ``sizes`` (width, height) of the good files, ``bad`` the reason
    for each bad one, ``decoded`` how many files were decoded (the rest came from the cache)."""

    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)
    decoded: int = 0


def cache_dir() -> Path:
    """The folder of the verification caches: ``$XDG_CACHE_HOME/mlpbnn/verified_images``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlpbnn" / "verified_images"


def _cache_file(folder: str, root: Path) -> Path:
    digest = hashlib.sha256(folder.encode()).hexdigest()[:16]  # one file per absolute folder path
    return root / f"{Path(folder).name or 'root'}-{digest}.json"


def _read_cache(path: Path) -> dict[str, list[int]]:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: everything is decoded again
        return {}
    if not isinstance(content, dict) or content.get("version") != _CACHE_VERSION:
        return {}
    files = content.get("files")
    return files if isinstance(files, dict) else {}


def _write_cache(path: Path, files: dict[str, list[int]]) -> None:
    """Atomically (a temporary file renamed), so that a kill or a concurrent run never leaves half
    a cache; a cache that cannot be written only costs the next run its decoding."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": _CACHE_VERSION, "files": files}, separators=(",", ":")))
        os.replace(tmp, path)
    except OSError as e:
        _say(f"cannot write the verification cache {path} ({e.strerror or e}); the next run decodes again")


def verify_files(paths: Sequence[str | os.PathLike], *, workers: int = -1, cache: Path | str | None = None,
                 use_cache: bool = True) -> Verified:
    """Checks each file of ``paths`` (``decode``) with ``workers`` threads (-1: one per core), the
    files unchanged since they last passed (same size and modification time) from the cache
    folder ``cache`` (default ``cache_dir()``) without decoding."""
    from PIL import ImageFile

    root = Path(cache) if cache is not None else cache_dir()
    result = Verified()
    by_folder: dict[str, list[tuple[str, str, list[int]]]] = {}  # folder -> (path, name, [bytes, mtime_ns])
    for p in dict.fromkeys(os.fspath(p) for p in paths):
        try:
            st = os.stat(p)
        except OSError as e:
            result.bad[p] = f"cannot be read ({e.strerror or e})"
            continue
        folder, name = os.path.split(os.path.abspath(p))
        by_folder.setdefault(folder, []).append((p, name, [st.st_size, st.st_mtime_ns]))
    caches = {folder: _read_cache(_cache_file(folder, root)) if use_cache else {} for folder in by_folder}
    todo = []
    for folder, files in by_folder.items():
        for p, name, stamp in files:
            known = caches[folder].get(name)
            if isinstance(known, list) and len(known) == 4 and known[:2] == stamp:
                result.sizes[p] = (known[2], known[3])
            else:
                todo.append((folder, p, name, stamp))
    if not todo:
        return result
    n = threads(workers)
    _say(f"decoding {len(todo):,} image files with {n} threads ({len(result.sizes):,} unchanged since checked)")
    start = time.perf_counter()

    def check(item: tuple[str, str, str, list[int]]) -> str | tuple[int, int]:
        try:
            return decode(item[1])
        except (ValueError, OSError) as e:
            return str(e)

    # Pillow reads this flag at every load: a program that set it (to read damaged files elsewhere)
    # would make truncated files pass. Nothing else decodes while the run is being checked.
    truncated_ok, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with ThreadPoolExecutor(n) as pool:
            verdicts = list(pool.map(check, todo))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok
    result.decoded = len(todo)
    changed = set()
    for (folder, p, name, stamp), verdict in zip(todo, verdicts, strict=True):
        if isinstance(verdict, str):
            result.bad[p] = verdict
            caches[folder].pop(name, None)
        else:
            result.sizes[p] = verdict
            caches[folder][name] = [*stamp, *verdict]
        changed.add(folder)
    if use_cache:
        for folder in changed:
            _write_cache(_cache_file(folder, root), caches[folder])
    _say(f"decoded {len(todo):,} files in {time.perf_counter() - start:.1f} s: {len(result.bad):,} bad")
    return result


def check_images(files: Mapping[Hashable, str], policy: str, *, what: str = "",
                 sizes: Mapping[Hashable, tuple[int, int]] | None = None,
                 boxes: Mapping[Hashable, int] | None = None, workers: int = -1,
                 cache: Path | str | None = None, advice: str = "") -> set[Hashable]:
    """The keys of ``files`` (e.g. (split, image_id) -> path) whose image does not decode completely
    (``verify_files``) or whose (width, height) is not ``sizes[key]`` (the annotations' size).

    ``policy`` 'refuse': any bad image is a ``BadImagesError`` naming each file and its reason on
    its own line (at most ``MAX_LISTED``, then the count). 'skip': they are returned for the caller
    to drop, after one summary line (with ``boxes``, the number of boxes per key, their boxes'
    count). ``what`` names the images in messages ('COCO', 'MPII'); ``advice`` replaces the
    refusal's advice (fix them, skip them or trust the data)."""
    if policy not in POLICIES:
        raise ValueError(f"bad_images: must be one of {', '.join(POLICIES)}, got {policy!r}")
    found = verify_files(list(files.values()), workers=workers, cache=cache)
    bad: dict[Hashable, str] = {}
    for key, path in files.items():
        reason = found.bad.get(path)
        if reason is None and sizes is not None and key in sizes:
            expected, got = tuple(sizes[key]), found.sizes[path]
            if got != expected:
                reason = f"is {got[0]}x{got[1]}, the annotations say {expected[0]}x{expected[1]}"
        if reason is not None:
            bad[key] = reason
    if not bad:
        return set()
    paths = {files[k]: r for k, r in bad.items()}  # a file of two splits is named once
    label = f"{what} image" if what else "image"
    if policy == "refuse":
        lines = [f"  {p}: {r}" for p, r in sorted(paths.items())[:MAX_LISTED]]
        if len(paths) > MAX_LISTED:
            lines.append(f"  ... and {len(paths) - MAX_LISTED:,} more")
        advice = advice or ("fix or remove them, set data.bad_images=skip to drop their boxes, or "
                            "data.verify_images=false to skip this check")
        raise BadImagesError(f"{len(paths):,} of {len(set(files.values())):,} {label} files do not decode "
                             f"completely; {advice}:\n" + "\n".join(lines))
    dropped = f"{sum(boxes.get(k, 0) for k in bad):,} boxes of " if boxes is not None else ""
    first = ", ".join(f"{os.path.basename(p)} ({r})" for p, r in sorted(paths.items())[:3])
    more = f" and {len(paths) - 3:,} more" if len(paths) > 3 else ""
    _say(f"dropped the {dropped}{len(paths):,} {label} files that do not decode completely "
         f"(data.bad_images=skip): {first}{more}")
    return set(bad)


def keep_rows(records: Any, keep: np.ndarray) -> Any:
    """``records`` (a dataclass of arrays whose rows are examples, ``mlpbnn.data.coco.Records``)
    with only the rows where ``keep`` is true."""
    return dataclasses.replace(records, **{f.name: getattr(records, f.name)[keep] for f in dataclasses.fields(records)})


def without_images(coco: Any, image_ids: Collection[int]) -> Any:
    """A new pycocotools ``COCO`` of ``coco``'s dataset without the images ``image_ids`` and their
    annotations (so that COCOeval, which evaluates every image of its ground truth, skips them)."""
    from pycocotools.coco import COCO

    drop = set(image_ids)
    dataset = {**coco.dataset, "images": [im for im in coco.dataset["images"] if im["id"] not in drop],
               "annotations": [a for a in coco.dataset["annotations"] if a["image_id"] not in drop]}
    out = COCO()
    out.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        out.createIndex()
    return out


def verify_top_down(dataset: Any, policy: str, what: str, *, workers: int = -1,
                    cache: Path | str | None = None) -> None:
    """Checks every image file a top-down keypoints dataset reads (``mlpbnn.data.coco.TopDownKeypoints``:
    ``train_records`` on ``train_images``, ``eval_records`` (COCO: every set of ``box_records``) on
    ``val_images``; only ``FileImages`` are files), sizes against ``train_coco`` / ``val_coco``
    where the dataset has them (``check_images``). Under 'skip' the rows of bad images are dropped
    from the records, and the images from ``val_coco`` (evaluation then covers the good images
    only); a dataset without ``val_coco`` (MPII, scored by PCKh over every person) cannot skip
    evaluation images and refuses them."""
    from mlpbnn.data.coco import FileImages

    val_sets = getattr(dataset, "box_records", None) or {"eval": dataset.eval_records}
    splits = {"train": (dataset.train_images, {"train": dataset.train_records}, getattr(dataset, "train_coco", None)),
              "val": (dataset.val_images, {k: r for k, r in val_sets.items() if r is not None},
                      getattr(dataset, "val_coco", None))}
    files: dict[Hashable, str] = {}
    sizes: dict[Hashable, tuple[int, int]] = {}
    boxes: Counter = Counter()
    for split, (images, records, gt) in splits.items():
        if not isinstance(images, FileImages):
            continue
        for r in records.values():
            for i in r.image_id.tolist():
                files[split, i] = images.path(i)
                boxes[split, i] += 1
                if gt is not None and i in gt.imgs:
                    sizes[split, i] = (int(gt.imgs[i]["width"]), int(gt.imgs[i]["height"]))
    if policy == "skip" and getattr(dataset, "val_coco", None) is None:
        check_images({k: p for k, p in files.items() if k[0] == "val"}, "refuse", what=f"{what} evaluation",
                     workers=workers, cache=cache, advice=f"{what}'s benchmark scores every evaluation person, so "
                     "data.bad_images=skip drops training images only; fix or remove them")
    bad = check_images(files, policy, what=what, sizes=sizes, boxes=boxes, workers=workers, cache=cache)
    if not bad:
        return
    drop = {split: np.array(sorted(i for s, i in bad if s == split), np.int64) for split in splits}
    dataset.train_records = keep_rows(dataset.train_records, ~np.isin(dataset.train_records.image_id, drop["train"]))
    kept = {k: None if r is None else keep_rows(r, ~np.isin(r.image_id, drop["val"])) for k, r in val_sets.items()}
    if hasattr(dataset, "box_records"):
        dataset.box_records = kept
        dataset.eval_records = kept[dataset.eval_boxes]
    else:
        dataset.eval_records = kept["eval"]
    if len(drop["val"]):
        dataset.val_coco = without_images(dataset.val_coco, drop["val"].tolist())
    dataset.train_size, dataset.eval_size = len(dataset.train_records), len(dataset.eval_records)
