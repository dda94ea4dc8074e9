"""COCO person keypoints for top-down pose estimation, in the protocol of HRNet's PyTorch code
(Sun et al., arXiv 1902.09212; leoxiaobin/deep-high-resolution-net.pytorch ``lib/dataset/coco.py``
and ``JointsDataset.py``), which SimpleBaseline (arXiv 1804.06208) shares and mmpose reproduces.

One example is one person box cropped from its image. Training boxes are the ground-truth ones
(HRNet's sanitising, instances without a labelled keypoint dropped); evaluation boxes are either the
ground-truth ones (score 1) or a person detector's (``det_file``, e.g. HRNet's
``COCO_val2017_detections_AP_H_56_person.json``; score >= ``image_thre``). A box becomes a centre and
a scale (aspect fixed to the input's, x1.25, pixel_std 200: ``mlpbnn.pose.geometry``).

Training augmentation in HRNet's order, all drawn from ``(seed, global stream position)`` so that a
resumed run, any process count and any worker count see the same pixels: half body (p 0.3, > 8
visible joints), scale ``clip(N(0,1) * 0.35 + 1, 0.65, 1.35)``, rotation ``clip(N(0,1) * 45, -90,
90)`` with p 0.6, horizontal flip (p 0.5, joints mirrored and left/right swapped); then the affine
crop (OpenCV ``warpAffine``, bilinear, zero border), ImageNet mean/std normalisation, and Gaussian
heatmap targets (sigma 2, a quarter of the input size) with per-joint weights
(``mlpbnn.pose.codec.encode``).

Batches: ``images`` (B, H, W, 3) float32; training adds ``heatmaps`` (B, H/4, W/4, 17) and
``target_weight`` (B, 17); evaluation adds ``mask`` and host-only fields under ``batch['host']``
(``image_id``, ``center``, ``scale``, ``score``, ``area``: what mapping predictions back to image
coordinates and HRNet's rescoring and OKS-NMS need). Every evaluation box is evaluated once: the
last batch is padded and masked.

Images are read by an ``ImageSource``: JPEG files through OpenCV (``FileImages``, BGR -> RGB as
HRNet's ``COLOR_RGB: true``), or generated ones (``mlpbnn.data.synthetic_pose``). Reading runs on
grain (``mlpbnn.data.pipeline``), with worker processes.

``input_spec`` states evaluation's crop of a person box (geometry, interpolation, normalisation)
for export and ``python -m mlpbnn.infer``, which crops with the same code (``eval_crops``) and
filters detector boxes with the same function (``read_detections``).

Bad input is refused before training, naming the file and the annotation or image id: unreadable
or malformed annotation JSON, annotations of unknown images, keypoint lists of the wrong length,
malformed boxes, missing image files; and every image a box reads must decode completely
(``mlpbnn.data.verify``: ``data.verify_images``, ``data.bad_images``). Detector boxes of
non-positive or non-finite size are dropped with one line giving their count.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import sys
import threading
from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mlpbnn.data import pipeline, verify
from mlpbnn.data.base import HOST, Batch, KeypointsDataset, register_dataset
from mlpbnn.data.pipeline import MEAN, STD, normalise_into, worker_processes
from mlpbnn.pose import codec, geometry
from mlpbnn.pose.skeleton import COCO, FLIP_INDEX, Skeleton
from mlpbnn.registry import from_section

NUM_JOINTS = 17
PIXEL_STD = geometry.PIXEL_STD  # a box's size in units of 200 pixels (HRNet's pixel_std)
BOX_PADDING = 1.25  # a box's aspect-fixed size times this is the crop (HRNet's _xywh2cs)
_AUG_KEY = 0xC0C0  # keeps the augmentation seeds apart from stream_indices' permutation seeds
SPLITS = {"train": "train2017", "val": "val2017"}
BOX_SOURCES = ("gt", "det")


def _say(msg: str) -> None:
    print(f"[coco] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Images


class ImageSource(Protocol):
    def load(self, image_id: int) -> np.ndarray:
        """The image as uint8 RGB (h, w, 3)."""


_warned: set[str] = set()
_warned_lock = threading.Lock()


def read_image(path: str | os.PathLike, color_rgb: bool = True) -> np.ndarray | None:
    """An image file as uint8 (h, w, 3), RGB (``color_rgb``, HRNet's COLOR_RGB) or OpenCV's BGR, read
    as evaluation reads it (OpenCV, EXIF orientation ignored: COCO's annotations are in the stored
    orientation); None when OpenCV cannot decode it."""
    import cv2

    image = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if color_rgb else image


@dataclass(frozen=True)
class FileImages:
    """Image files of a COCO split: ``directory / file_names[image_id]``, read with OpenCV (EXIF
    orientation ignored, as COCO's annotations are in the stored orientation). Picklable."""

    directory: str
    file_names: dict[int, str]
    color_rgb: bool = True

    def path(self, image_id: int) -> str:
        return os.path.join(self.directory, self.file_names[int(image_id)])

    def load(self, image_id: int) -> np.ndarray:
        path = self.path(image_id)
        image = read_image(path, self.color_rgb)
        if image is None:  # unreadable: warn once per process and file; a long run must not stop
            with _warned_lock:
                first = path not in _warned
                _warned.add(path)
            if first:
                _say(f"cannot decode {path} (image {image_id}); using a black image")
            return np.zeros((8, 8, 3), np.uint8)
        return image

    def missing(self, image_ids: Sequence[int]) -> list[int]:
        return [i for i in image_ids if not os.path.isfile(self.path(i))]


# ----------------------------------------------------------------------------------------------
# Annotations -> records (one per person box)


@dataclass(frozen=True)
class Records:
    """Person boxes as arrays (rows = examples): ``image_id`` (N,), ``joints`` (N, 17, 2) and
    ``visible`` (N, 17) in image pixels (ground truth; zeros for detections), ``center`` and
    ``scale`` (N, 2), ``score`` (N,: 1 for ground truth, the detector's otherwise)."""

    image_id: np.ndarray
    joints: np.ndarray
    visible: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.image_id)

    @property
    def area(self) -> np.ndarray:
        """HRNet's box area for OKS-NMS: that of the padded, aspect-fixed box."""
        return (self.scale[:, 0] * PIXEL_STD) * (self.scale[:, 1] * PIXEL_STD)

    @staticmethod
    def build(rows: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]],
              num_joints: int = NUM_JOINTS) -> Records:
        if not rows:
            z = np.zeros
            return Records(z(0, np.int64), z((0, num_joints, 2), np.float32), z((0, num_joints), np.float32),
                           z((0, 2), np.float64), z((0, 2), np.float64), z(0, np.float64))
        ids, joints, visible, center, scale, score = zip(*rows, strict=True)
        return Records(np.asarray(ids, np.int64), np.stack(joints).astype(np.float32),
                       np.stack(visible).astype(np.float32), np.stack(center), np.stack(scale),
                       np.asarray(score, np.float64))


def load_annotations(ann_file: str | Path) -> Any:
    """pycocotools ``COCO`` of a person-keypoints file, checked: unreadable JSON, annotations of
    unknown images, keypoint lists that are not 17 x 3 numbers and malformed boxes are ValueErrors
    naming the file and the annotation id."""
    from pycocotools.coco import COCO

    path = Path(ann_file)
    dataset = _read_json(path, "annotation")
    if not isinstance(dataset, dict) or not isinstance(dataset.get("images"), list) \
            or not isinstance(dataset.get("annotations"), list):
        raise ValueError(f"{path}: not a COCO annotation file (needs 'images' and 'annotations' lists)")
    check_annotations(dataset, str(path))
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _read_json(path: Path, what: str) -> Any:
    """The JSON content of ``path``; unreadable or invalid files are errors naming it and ``what``
    it should have been ('annotation', 'detection')."""
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read the {what} file ({e.strerror or e})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid {what} file ({type(e).__name__}: {e})") from e


def check_annotations(dataset: dict[str, Any], name: str) -> None:
    images = set()
    for im in dataset["images"]:
        if not isinstance(im, dict) or not {"id", "file_name", "width", "height"} <= im.keys():
            raise ValueError(f"{name}: image entry {im.get('id') if isinstance(im, dict) else im!r} needs "
                             "id, file_name, width and height")
        images.add(im["id"])
    for ann in dataset["annotations"]:
        aid = ann.get("id") if isinstance(ann, dict) else None
        where = f"{name}: annotation {aid}"
        if not isinstance(ann, dict) or aid is None:
            raise ValueError(f"{name}: an annotation without an id ({str(ann)[:80]})")
        if ann.get("image_id") not in images:
            raise ValueError(f"{where}: image_id {ann.get('image_id')!r} is not among the file's images")
        kpts = ann.get("keypoints")
        if not isinstance(kpts, list) or len(kpts) != 3 * NUM_JOINTS or not all(_number(v) for v in kpts):
            got = f"{len(kpts)} values" if isinstance(kpts, list) else repr(kpts)[:40]
            raise ValueError(f"{where}: keypoints must be {3 * NUM_JOINTS} numbers (x, y, v for 17 joints), "
                             f"got {got}")
        box = ann.get("bbox")
        if not isinstance(box, list) or len(box) != 4 or not all(_number(v) for v in box):
            raise ValueError(f"{where}: bbox must be 4 numbers [x, y, w, h], got {str(box)[:60]}")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def gt_records(coco: Any, aspect_ratio: float) -> Records:
    """HRNet's ground-truth records (``_load_coco_keypoint_annotation_kernal``): non-crowd person
    annotations with a sane box (``geometry.clean_box``) and at least one labelled keypoint,
    visibility clipped to {0, 1}, score 1; in image-id order."""
    rows = []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False)):
            if ann.get("category_id", 1) != 1:
                continue
            box = geometry.clean_box(*ann["bbox"], info["width"], info["height"], area=ann.get("area"))
            kpts = np.asarray(ann["keypoints"], np.float64).reshape(NUM_JOINTS, 3)
            if box is None or kpts.max() == 0:
                continue
            center, scale = geometry.box_to_center_scale(box, aspect_ratio, BOX_PADDING, PIXEL_STD)
            rows.append((image_id, kpts[:, :2], np.minimum(kpts[:, 2], 1), center, scale, 1.0))
    return Records.build(rows)


def read_detections(det_file: str | Path, image_thre: float = 0.0,
                    known_images: Container[int] | None = None) -> list[tuple[int, list[float], float]]:
    """HRNet's detector boxes (``_load_coco_person_detection_results``) of a file in COCO's detection
    result format (a list of ``{image_id, bbox [x, y, w, h], score, category_id?}``): (image_id,
    bbox, score) of the person boxes (category 1 or none given) with score >= ``image_thre``, in
    file order. A malformed file or entry is a ValueError naming the file and the entry; with
    ``known_images``, so is a kept box of an image not among them."""
    path = Path(det_file)
    dets = _read_json(path, "detection")
    if not isinstance(dets, list):
        raise ValueError(f"{path}: a detection file is a list of {{image_id, category_id, bbox, score}}")
    boxes, degenerate = [], 0
    for i, det in enumerate(dets):
        if not isinstance(det, dict) or not {"image_id", "bbox", "score"} <= det.keys():
            raise ValueError(f"{path}: detection {i} needs image_id, bbox and score")
        if not _number(det["score"]) or isinstance(det["image_id"], bool) or not isinstance(det["image_id"], int):
            raise ValueError(f"{path}: detection {i}: image_id must be an integer and score a number, got "
                             f"{det['image_id']!r} and {det['score']!r}")
        if det.get("category_id", 1) != 1 or det["score"] < image_thre:
            continue
        if known_images is not None and det["image_id"] not in known_images:
            raise ValueError(f"{path}: detection {i} is of image {det['image_id']}, which the annotations lack")
        box = det["bbox"]
        if not isinstance(box, list) or len(box) != 4 or not all(_number(v) or isinstance(v, float) for v in box):
            raise ValueError(f"{path}: detection {i} (image {det['image_id']}): bbox must be 4 numbers")
        if not (all(math.isfinite(v) for v in box) and box[2] > 0 and box[3] > 0):
            degenerate += 1  # an empty or overflowed detection: nothing to crop
            continue
        boxes.append((int(det["image_id"]), [float(v) for v in box], float(det["score"])))
    if degenerate:
        _say(f"{path}: dropped {degenerate:,} detector box(es) of non-positive or non-finite size")
    return boxes


def box_records(boxes: Sequence[tuple[int, Sequence[float], float]], aspect_ratio: float) -> Records:
    """Records of person boxes used as they are (detector boxes: no sanitising, no shrink), each
    (image_id, [x, y, w, h], score): centre and scale by ``geometry.box_to_center_scale`` (aspect
    fixed to ``aspect_ratio``, x ``BOX_PADDING``, in ``PIXEL_STD`` units), no ground-truth joints
    (zeros, all marked visible, as HRNet's detection records)."""
    rows = []
    for image_id, box, score in boxes:
        center, scale = geometry.box_to_center_scale(box, aspect_ratio, BOX_PADDING, PIXEL_STD)
        rows.append((int(image_id), np.zeros((NUM_JOINTS, 2)), np.ones(NUM_JOINTS), center, scale, float(score)))
    return Records.build(rows)


def det_records(det_file: str | Path, coco: Any, aspect_ratio: float, image_thre: float = 0.0) -> Records:
    """HRNet's detection records (``_load_coco_person_detection_results``): person boxes with
    score >= ``image_thre``, used as they are (``read_detections``, ``box_records``); a box of an
    image not in the annotations is refused."""
    return box_records(read_detections(det_file, image_thre, coco.imgs), aspect_ratio)


# ----------------------------------------------------------------------------------------------
# Config sections: every default of the COCO pipeline, declared once


@dataclass(frozen=True)
class CropConfig:
    """The crops, augmentation and targets of HRNet's COCO recipe (``w32_256x192_adam_lr1e-3.yaml``),
    and the input workers: the part of ``data`` that COCO and the generated figures share.

    Attributes:
      image_size: (height, width) of the crops. heatmap_size: () for a quarter of image_size.
      sigma: the Gaussian targets' sigma in heatmap pixels. unbiased_encoding: DARK's encoding.
      flip, scale_factor, rot_factor, rot_prob, half_body_prob, half_body_joints: HRNet's
        augmentation (scales 1 +- scale_factor, rotations within +-rot_factor with rot_prob).
      joint_weights: HRNet's per-joint loss weights (USE_DIFFERENT_JOINTS_WEIGHT).
      color_rgb: images as RGB (HRNet's COLOR_RGB) rather than BGR.
      workers: grain worker processes (-1: one per core, HRNet's loaders use several; 0: in this
        process). prefetch: batches ready per worker.
    """

    image_size: tuple[int, int] = (256, 192)
    heatmap_size: tuple[int, ...] = ()
    sigma: float = 2.0
    unbiased_encoding: bool = False
    flip: bool = True
    scale_factor: float = 0.35
    rot_factor: float = 45.0
    rot_prob: float = 0.6
    half_body_prob: float = 0.3
    half_body_joints: int = 8
    joint_weights: bool = False
    color_rgb: bool = True
    workers: int = -1
    prefetch: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, tuple | list) or len(self.image_size) != 2 or min(self.image_size) < 8:
            raise ValueError(f"image_size: must be (height, width) of at least 8, got {self.image_size}")
        hm = self.heatmap_size or (self.image_size[0] // 4, self.image_size[1] // 4)
        if len(hm) != 2 or self.image_size[0] * hm[1] != self.image_size[1] * hm[0]:
            raise ValueError(f"heatmap_size: {tuple(hm)} must keep the aspect of data.image_size {self.image_size}")
        for key in ("sigma", "scale_factor", "rot_factor", "rot_prob", "half_body_prob"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{key}: must be >= 0, got {getattr(self, key)}")
        if self.scale_factor >= 1:
            raise ValueError(f"scale_factor: must be < 1 (scales are 1 +- it), got {self.scale_factor}")
        if self.workers < -1:
            raise ValueError(f"workers: must be -1 (one per core), 0 (in this process) or a count, got {self.workers}")
        if self.prefetch < 1:
            raise ValueError(f"prefetch: must be >= 1, got {self.prefetch}")

    def crop(self, seed: int, skeleton: Skeleton = COCO) -> Crop:
        hm = self.heatmap_size or (self.image_size[0] // 4, self.image_size[1] // 4)
        return Crop(image_size=tuple(self.image_size), heatmap_size=tuple(hm), sigma=self.sigma, skeleton=skeleton,
                    unbiased=self.unbiased_encoding, seed=int(seed), flip=self.flip, scale_factor=self.scale_factor,
                    rot_factor=self.rot_factor, rot_prob=self.rot_prob, half_body_prob=self.half_body_prob,
                    half_body_joints=self.half_body_joints, joint_weights=self.joint_weights)


@dataclass(frozen=True)
class CocoConfig(verify.VerifyConfig, CropConfig):
    """``data`` for ``coco``: the standard layout under ``dir`` (``annotations/person_keypoints_
    {train,val}2017.json``, ``{train,val}2017/*.jpg``), each path overridable (``train_ann``,
    ``val_ann``, ``train_images``, ``val_images``); ``det_file``, a person detector's boxes in
    COCO's result format (HRNet's ``COCO_val2017_detections_AP_H_56_person.json``), kept where
    their score >= ``image_thre``; ``eval_boxes``, the boxes of the main evaluation (gt | det;
    ``config.evals`` adds evaluations on the other, ``Dataset.eval_set``); ``verify_images`` and
    ``bad_images``, the image check before the run (``mlpbnn.data.verify.VerifyConfig``)."""

    dir: str = ""
    train_ann: str = ""
    val_ann: str = ""
    train_images: str = ""
    val_images: str = ""
    det_file: str = ""
    image_thre: float = 0.0
    eval_boxes: str = "gt"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_boxes not in BOX_SOURCES:
            raise ValueError(f"eval_boxes: must be one of {', '.join(BOX_SOURCES)}, got {self.eval_boxes!r}")
        if self.eval_boxes == "det" and not self.det_file:
            raise ValueError("eval_boxes: 'det' needs data.det_file (a person detection file), which is not set")

    def paths(self) -> dict[str, str]:
        """The four annotation and image paths, each from its own field or the layout under ``dir``."""
        root = os.path.expanduser(self.dir)
        paths = {}
        for split, folder in SPLITS.items():
            ann, images = getattr(self, f"{split}_ann"), getattr(self, f"{split}_images")
            paths[f"{split}_ann"] = os.path.expanduser(
                ann or os.path.join(root, "annotations", f"person_keypoints_{folder}.json"))
            paths[f"{split}_images"] = os.path.expanduser(images or os.path.join(root, folder))
        return paths


@dataclass(frozen=True)
class SyntheticPoseConfig(CropConfig):
    """``data`` for ``pose_synthetic`` (``mlpbnn.data.synthetic_pose``): ``num_train`` and
    ``num_val`` generated images, the training ones from the run's seed, the evaluation ones from
    ``val_seed`` (fixed, so that every run is scored on the same images)."""

    num_train: int = 2000
    num_val: int = 100
    val_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_train < 1 or self.num_val < 1:
            raise ValueError(f"num_train: num_train and num_val must be >= 1, got {self.num_train} and {self.num_val}")


# ----------------------------------------------------------------------------------------------
# Crops and targets


@dataclass(frozen=True)
class Crop:
    """Cropping, augmentation and targets of one example: pure functions of the image, the record
    and (training) the global stream position. Picklable: grain's workers receive it.

    Sizes are (height, width): ``image_size`` the network input, ``heatmap_size`` its output;
    ``skeleton`` the dataset's joints (flip pairs, half-body split, joint weights: COCO's or MPII's)."""

    image_size: tuple[int, int] = CropConfig.image_size
    heatmap_size: tuple[int, int] = (CropConfig.image_size[0] // 4, CropConfig.image_size[1] // 4)
    sigma: float = CropConfig.sigma
    unbiased: bool = CropConfig.unbiased_encoding  # DARK's (full-map Gaussian at the real position)
    seed: int = 0
    flip: bool = CropConfig.flip
    scale_factor: float = CropConfig.scale_factor
    rot_factor: float = CropConfig.rot_factor
    rot_prob: float = CropConfig.rot_prob
    half_body_prob: float = CropConfig.half_body_prob
    half_body_joints: int = CropConfig.half_body_joints
    joint_weights: bool = CropConfig.joint_weights
    skeleton: Skeleton = COCO

    @property
    def aspect_ratio(self) -> float:
        return self.image_size[1] / self.image_size[0]

    @property
    def size_wh(self) -> tuple[int, int]:
        return self.image_size[1], self.image_size[0]

    def train_example(self, image: np.ndarray, joints: np.ndarray, visible: np.ndarray, center: np.ndarray,
                      scale: np.ndarray, position: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(uint8 crop, heatmaps (h, w, K), target weights (K,)) of one training example."""
        rng = np.random.default_rng([self.seed, _AUG_KEY, int(position)])
        joints, visible = joints.astype(np.float64), visible.astype(np.float64)
        center, scale = np.array(center, np.float64), np.array(scale, np.float64)
        if visible.sum() > self.half_body_joints and rng.random() < self.half_body_prob:
            half = geometry.half_body(joints, visible > 0, self.aspect_ratio, rng,
                                      upper_body_ids=self.skeleton.upper_body_ids)
            if half is not None:
                center, scale = half
        sf, rf = self.scale_factor, self.rot_factor
        scale = scale * np.clip(rng.standard_normal() * sf + 1, 1 - sf, 1 + sf)
        rotation = float(np.clip(rng.standard_normal() * rf, -2 * rf, 2 * rf)) if rng.random() <= self.rot_prob else 0.0
        if self.flip and rng.random() <= 0.5:
            width = image.shape[1]
            image = image[:, ::-1]
            joints = joints.copy()
            joints[:, 0] = width - joints[:, 0] - 1
            for a, b in self.skeleton.flip_pairs:
                joints[[a, b]] = joints[[b, a]]
                visible[[a, b]] = visible[[b, a]]
            center[0] = width - center[0] - 1
        matrix = geometry.affine_matrix(center, scale, rotation, self.size_wh)
        crop = geometry.warp(np.ascontiguousarray(image), matrix, self.size_wh)
        joints = geometry.apply_affine(joints, matrix)
        heatmaps, weights = codec.encode(joints, visible, self.image_size, self.heatmap_size, self.sigma,
                                         unbiased=self.unbiased)
        if self.joint_weights:
            weights = weights * np.asarray(self.skeleton.joint_weights, np.float32)
        return crop, heatmaps, weights

    def eval_example(self, image: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
        return geometry.warp(image, geometry.affine_matrix(center, scale, 0.0, self.size_wh), self.size_wh)


def eval_crops(records: Records, images: ImageSource, crop: Crop, indices: Sequence[int]) -> Batch:
    """The evaluation batch of ``records[indices]``, as evaluation feeds the network: each box's
    crop (``Crop.eval_example``: the affine crop, bilinear, zero border), normalised
    (``pipeline.normalise_into``), in ``images`` (B, H, W, 3) float32, and the host fields
    (``image_id``, ``center``, ``scale``, ``score``, ``area``) under ``batch['host']``."""
    return _Boxes(records, images, crop).eval_batch(np.asarray(indices, np.int64))


@dataclass(frozen=True)
class _Boxes:
    """Person boxes with their images and crop: ``pipeline.Examples`` for grain's workers."""

    records: Records
    images: ImageSource
    crop: Crop

    def __len__(self) -> int:
        return len(self.records)

    def train_batch(self, indices: np.ndarray, positions: np.ndarray) -> Batch:
        (h, w), (hh, hw) = self.crop.image_size, self.crop.heatmap_size
        k = self.crop.skeleton.num_joints
        images = np.empty((len(indices), h, w, 3), np.float32)
        heatmaps = np.empty((len(indices), hh, hw, k), np.float32)
        weights = np.empty((len(indices), k), np.float32)
        r = self.records
        for i, (j, p) in enumerate(zip(indices, positions, strict=True)):
            pixels, heatmaps[i], weights[i] = self.crop.train_example(
                self.images.load(int(r.image_id[j])), r.joints[j], r.visible[j], r.center[j], r.scale[j], int(p))
            normalise_into(images[i], pixels)
        return {"images": images, "heatmaps": heatmaps, "target_weight": weights}

    def eval_batch(self, indices: np.ndarray) -> Batch:
        h, w = self.crop.image_size
        images = np.empty((len(indices), h, w, 3), np.float32)
        r = self.records
        for i, j in enumerate(indices):
            normalise_into(images[i], self.crop.eval_example(self.images.load(int(r.image_id[j])), r.center[j],
                                                             r.scale[j]))
        host = {"image_id": r.image_id[indices], "center": r.center[indices], "scale": r.scale[indices],
                "score": r.score[indices], "area": r.area[indices]}
        return {"images": images, HOST: host}


# ----------------------------------------------------------------------------------------------
# The datasets


class TopDownKeypoints(KeypointsDataset):
    """What COCO and MPII (``mlpbnn.data.mpii``) share once their annotations are ``Records``:
    training batches from ``train_records`` on ``train_images``, evaluation batches of
    ``eval_records`` on ``val_images``, both through ``crop`` on grain (``pipeline``: addressed
    by position, the last evaluation batch padded and masked). A subclass sets those attributes
    and ``name``, ``workers``, ``prefetch``."""

    name: str
    crop: Crop
    train_records: Records
    eval_records: Records
    train_images: ImageSource
    val_images: ImageSource
    workers: int
    prefetch: int

    def load_image(self, image_id: int) -> np.ndarray:
        return self.val_images.load(image_id)

    def train_batches(self, position: int, global_batch: int, process_index: int = 0,
                      process_count: int = 1) -> Iterator[tuple[Batch, int]]:
        if not self.train_size:
            raise ValueError(f"{self.name}: the training annotations hold no person with a labelled keypoint")
        examples = _Boxes(self.train_records, self.train_images, self.crop)
        yield from pipeline.train_batches(examples, self.crop.seed, position, global_batch, process_index,
                                          process_count, self.workers, self.prefetch)

    def eval_batches(self, global_batch: int, process_index: int = 0,
                     process_count: int = 1) -> Iterator[Batch]:
        examples = _Boxes(self.eval_records, self.val_images, self.crop)
        yield from pipeline.eval_batches(examples, global_batch, process_index, process_count, self.workers,
                                         self.prefetch)


class CocoKeypoints(TopDownKeypoints):
    """Top-down person keypoints: training on ground-truth boxes of ``train``, evaluation on the
    ``eval_boxes`` ('gt' or 'det') of ``val``; ``eval_set`` gives the same data evaluated on the
    other box source (a named evaluation, ``config.evals``: metrics ``det/AP``, ...).

    ``val_coco`` is the evaluation ground truth (pycocotools ``COCO``) for COCOeval; ``load_image``
    reads an evaluation image (for pictures)."""

    num_joints = NUM_JOINTS
    skeleton = COCO

    def __init__(self, *, train_coco: Any, train_images: ImageSource, val_coco: Any, val_images: ImageSource,
                 crop: Crop, det_records: Records | None = None, eval_boxes: str = "gt", workers: int = 0,
                 prefetch: int = 1, name: str = "coco", check_files: bool = True, verify_images: bool = True,
                 bad_images: str = "refuse"):
        if eval_boxes == "det" and det_records is None:  # the values: CocoConfig's checks
            raise ValueError("detector boxes are evaluated but none were given (data.det_file)")
        self.name, self.crop = name, crop
        self.train_coco, self.val_coco = train_coco, val_coco
        self.train_images, self.val_images = train_images, val_images
        self.train_records = gt_records(train_coco, crop.aspect_ratio)
        self.box_records = {"gt": gt_records(val_coco, crop.aspect_ratio), "det": det_records}
        self.eval_boxes = eval_boxes
        self.eval_records = self.box_records[eval_boxes]
        self.workers, self.prefetch = worker_processes(workers), max(1, int(prefetch))
        self.image_shape = (*crop.image_size, 3)
        self.heatmap_shape = (*crop.heatmap_size, NUM_JOINTS)
        self.train_size, self.eval_size = len(self.train_records), len(self.eval_records)
        if check_files:
            self._check_files()
            if verify_images:  # every image a box reads decodes completely; 'skip' drops the boxes of bad ones
                verify.verify_top_down(self, bad_images, "COCO")

    def _check_files(self) -> None:
        evaluated = [r for r in self.box_records.values() if r is not None]  # GT and detector boxes
        for what, images, ids in (("train", self.train_images, self.train_records.image_id.tolist()),
                                  ("val", self.val_images, [i for r in evaluated for i in r.image_id.tolist()])):
            if isinstance(images, FileImages):
                missing = images.missing(sorted(set(ids)))
                if missing:
                    raise FileNotFoundError(f"{images.path(missing[0])}: image {missing[0]} of the {what} split is "
                                            f"missing ({len(missing)} missing in all)")

    @classmethod
    def from_config(cls, section: CocoConfig | Mapping[str, Any], seed: int) -> CocoKeypoints:
        """The dataset of the config section ``section`` (a ``CocoConfig`` or the ``data`` mapping)."""
        if not isinstance(section, CocoConfig):
            section = from_section(CocoConfig, section, "data", ignore=("name",))
        paths = section.paths()
        crop = section.crop(seed)
        cocos = {}
        for split in SPLITS:
            ann = paths[f"{split}_ann"]
            cocos[split] = cocos.get(ann) or load_annotations(ann)
            cocos[ann] = cocos[split]
        images = {s: FileImages(paths[f"{s}_images"], {i: im["file_name"] for i, im in cocos[s].imgs.items()},
                                section.color_rgb) for s in SPLITS}
        dets = det_records(os.path.expanduser(section.det_file), cocos["val"], crop.aspect_ratio,
                           section.image_thre) if section.det_file else None
        return cls(train_coco=cocos["train"], train_images=images["train"], val_coco=cocos["val"],
                   val_images=images["val"], crop=crop, det_records=dets, eval_boxes=section.eval_boxes,
                   workers=section.workers, prefetch=section.prefetch, verify_images=section.verify_images,
                   bad_images=section.bad_images)

    def describe(self) -> str:
        c = self.crop
        boxes = {"gt": "ground-truth", "det": "detector"}
        dets = self.box_records["det"]
        extra = f"; {len(dets):,} detector boxes" if dets is not None and self.eval_boxes != "det" else ""
        return (f"{type(self).__name__} ({self.name}): {self.train_size:,} train person boxes, "
                f"{self.eval_size:,} eval boxes ({boxes[self.eval_boxes]}){extra}; input "
                f"{c.image_size[0]}x{c.image_size[1]}, heatmaps {c.heatmap_size[0]}x{c.heatmap_size[1]}, "
                f"sigma {c.sigma}; {self.workers or 'no'} grain worker processes")

    def eval_set(self, source: str) -> CocoKeypoints:
        """This dataset evaluated on ``source`` boxes: 'gt' (ground truth), 'det' (the detector's,
        ``data.det_file``) or '' (``data.eval_boxes``)."""
        if not source or source == self.eval_boxes:
            return self
        if source not in BOX_SOURCES:
            raise ValueError(f"{self.name} evaluates on boxes from one of {', '.join(BOX_SOURCES)}, not {source!r}")
        if self.box_records[source] is None:
            raise ValueError(f"{self.name}: evaluating on {source!r} boxes needs data.det_file (a person detection "
                             "file), which is not set")
        other = copy.copy(self)
        other.eval_boxes, other.eval_records = source, self.box_records[source]
        other.eval_size = len(other.eval_records)
        return other


def input_spec(section: CropConfig, dataset: str = "coco") -> dict[str, Any]:
    """Evaluation's preprocessing of one person box, for export and ``python -m mlpbnn.infer``:
    the box [x, y, w, h] -> centre (x + w / 2, y + h / 2) and scale (its size with the shorter side
    grown to ``aspect_ratio`` = width / height, x ``box_padding``, / ``pixel_std``:
    ``geometry.box_to_center_scale``); the crop is the similarity mapping the centre to the
    middle of the ``width`` x ``height`` input and ``scale[0] * pixel_std`` image pixels onto its
    width (``geometry.affine_matrix``, rotation 0), sampled bilinearly with a constant 0 border
    (OpenCV ``warpAffine``); then ``(pixel / 255 - mean) / std`` per channel, in ``mode``'s order
    (RGB, or BGR where ``color_rgb`` is off). The network's heatmaps (``heatmap_height`` x
    ``heatmap_width`` x ``num_joints``) map back to the image through the same centre and scale;
    ``flip_index`` is the left/right channel permutation of the flip test. ``image_thre``: the
    detector score a person box needs (``data.image_thre``; ``read_detections``)."""
    h, w = (int(v) for v in section.image_size)
    hm = section.heatmap_size or (h // 4, w // 4)
    return {"dataset": dataset, "height": h, "width": w, "channels": 3, "mode": "RGB" if section.color_rgb else "BGR",
            "mean": [float(v) for v in MEAN], "std": [float(v) for v in STD], "resize": "affine_crop",
            "aspect_ratio": w / h, "box_padding": BOX_PADDING, "pixel_std": float(PIXEL_STD), "rotation": 0.0,
            "interpolation": "bilinear", "border_value": 0, "heatmap_height": int(hm[0]),
            "heatmap_width": int(hm[1]), "num_joints": NUM_JOINTS, "flip_index": [int(i) for i in FLIP_INDEX],
            "image_thre": float(getattr(section, "image_thre", 0.0))}


def synthetic(section: SyntheticPoseConfig | Mapping[str, Any], seed: int) -> CocoKeypoints:
    """The pose quick start's data (``mlpbnn.data.synthetic_pose``, ``SyntheticPoseConfig``)."""
    from mlpbnn.data import synthetic_pose

    if not isinstance(section, SyntheticPoseConfig):
        section = from_section(SyntheticPoseConfig, section, "data", ignore=("name",))
    return CocoKeypoints(train_coco=synthetic_pose.coco(seed, "train", section.num_train),
                         train_images=synthetic_pose.SyntheticImages(seed, "train"),
                         val_coco=synthetic_pose.coco(section.val_seed, "val", section.num_val),
                         val_images=synthetic_pose.SyntheticImages(section.val_seed, "val"),
                         crop=section.crop(seed), eval_boxes="gt", workers=section.workers,
                         prefetch=section.prefetch, name="pose_synthetic", check_files=False)


register_dataset("coco", CocoConfig, CocoKeypoints.from_config, input_spec=input_spec)
register_dataset("pose_synthetic", SyntheticPoseConfig, synthetic,
                 input_spec=lambda section: input_spec(section, "pose_synthetic"))
