"""MPII Human Pose (Andriluka et al., CVPR 2014) for top-down pose estimation, in the layout and
protocol of HRNet's PyTorch code (Sun et al., arXiv 1902.09212; leoxiaobin/deep-high-resolution-net.pytorch
``lib/dataset/mpii.py``), which SimpleBaseline (arXiv 1804.06208) shares: the benchmark on which
binary pose networks are compared (PCKh@0.5 on MPII val).

Layout under ``data.dir`` (HRNet's converted annotations beside the official images)::

    annot/train.json       [{"image": "015601864.jpg", "center": [x, y], "scale": s,
    annot/valid.json         "joints": 16 x [x, y], "joints_vis": 16 x 0|1}, ...]  1-based pixels
    annot/gt_valid.mat     dataset_joints, jnt_missing, pos_gt_src, headboxes_src (PCKh)
    images/*.jpg           mpii_human_pose_v1.tar.gz's images

One example is one annotated person (an image may hold several). As HRNet's ``_get_db``: 16
joints, the centre moved down by 15 x scale and the scale x 1.25 (where centre x is not -1), both
then shifted from MATLAB's 1-based to 0-based pixels, scale as ``[s, s]``. Crops, augmentation
(HRNet's order: half body, scale, rotation, flip with MPII's left/right pairs) and Gaussian
targets are COCO's (``mlpbnn.data.coco.Crop`` with ``skeleton.MPII``), read on grain by position
(``TopDownKeypoints``), the last evaluation batch padded and masked. Evaluation rows carry the
person's index in ``valid.json`` as ``image_id``, so that the keypoints task scores them by PCKh
(``mlpbnn.pose.pckh``) in that order.

Defaults are HRNet's MPII recipe (``experiments/mpii/hrnet/w32_256x256_adam_lr1e-3.yaml``): 256x256
input, 64x64 heatmaps, sigma 2, scale factor 0.25, rotation 30 (p 0.6), flip, no half body
(PROB_HALF_BODY -1), RGB. Malformed files are refused before training, naming the file and the entry.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlpbnn.data import verify
from mlpbnn.data.base import register_dataset
from mlpbnn.data.coco import Crop, CropConfig, FileImages, Records, TopDownKeypoints
from mlpbnn.data.pipeline import worker_processes
from mlpbnn.pose.pckh import PckhGroundTruth, load_ground_truth
from mlpbnn.pose.skeleton import MPII
from mlpbnn.registry import from_section

NUM_JOINTS = MPII.num_joints  # 16
CENTER_SHIFT = 15.0  # HRNet moves MPII's centre down by 15 x scale ("to avoid cropping limbs")
SCALE_PADDING = 1.25


@dataclass(frozen=True)
class MpiiConfig(verify.VerifyConfig, CropConfig):
    """``data`` for ``mpii``: HRNet's layout under ``dir`` (``annot/{train_set,val_set}.json``,
    ``annot/gt_{val_set}.mat``, ``images/``); ``train_set`` 'train' (or HRNet's 'trainval'),
    ``val_set`` 'valid'. The crop fields default to HRNet's MPII recipe (module docstring);
    ``verify_images``, ``bad_images``: the image check before the run (``mlpbnn.data.verify``; PCKh
    scores every evaluation person, so 'skip' drops bad training images only)."""

    image_size: tuple[int, int] = (256, 256)
    scale_factor: float = 0.25
    rot_factor: float = 30.0
    half_body_prob: float = 0.0  # HRNet's PROB_HALF_BODY: -1.0 (never)
    dir: str = ""
    train_set: str = "train"
    val_set: str = "valid"

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("train_set", "val_set"):
            value = getattr(self, key)
            if not value or os.sep in value:
                raise ValueError(f"{key}: must be an annotation name under annot/ (e.g. 'train'), got {value!r}")

    def paths(self) -> dict[str, str]:
        root = os.path.expanduser(self.dir)
        annot = os.path.join(root, "annot")
        return {"train_ann": os.path.join(annot, f"{self.train_set}.json"),
                "val_ann": os.path.join(annot, f"{self.val_set}.json"),
                "gt": os.path.join(annot, f"gt_{self.val_set}.mat"), "images": os.path.join(root, "images")}


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def read_annotations(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of an HRNet MPII annotation file, checked: unreadable JSON, an entry that is not
    ``{image, center [x, y], scale > 0, joints 16 x [x, y], joints_vis 16 numbers}`` is an error
    naming the file and the entry (its index and image)."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read the MPII annotation file ({e.strerror or e})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid MPII annotation file ({type(e).__name__}: {e})") from e
    if not isinstance(entries, list):
        raise ValueError(f"{path}: an MPII annotation file is a list of {{image, center, scale, joints, joints_vis}}")
    for i, a in enumerate(entries):
        if not isinstance(a, dict) or not {"image", "center", "scale", "joints", "joints_vis"} <= a.keys():
            raise ValueError(f"{path}: entry {i} needs image, center, scale, joints and joints_vis")
        where = f"{path}: entry {i} ({a['image']!r})"
        if not isinstance(a["image"], str) or not a["image"]:
            raise ValueError(f"{where}: image must be a file name under images/")
        c, s, j, v = a["center"], a["scale"], a["joints"], a["joints_vis"]
        if not isinstance(c, list) or len(c) != 2 or not all(_number(x) for x in c):
            raise ValueError(f"{where}: center must be 2 numbers [x, y], got {str(c)[:60]}")
        if not _number(s) or s <= 0:
            raise ValueError(f"{where}: scale must be a number > 0, got {s!r}")
        if not isinstance(j, list) or len(j) != NUM_JOINTS or not all(
                isinstance(p, list) and len(p) in (2, 3) and all(_number(x) for x in p) for p in j):
            raise ValueError(f"{where}: joints must be {NUM_JOINTS} [x, y] pairs, got {str(j)[:60]}")
        if not isinstance(v, list) or len(v) != NUM_JOINTS or not all(_number(x) for x in v):
            raise ValueError(f"{where}: joints_vis must be {NUM_JOINTS} numbers, got {str(v)[:60]}")
    return entries


def records(entries: list[dict[str, Any]]) -> Records:
    """HRNet's ``_get_db``: per entry, ``image_id`` its index, the centre moved down by 15 x scale
    and the scale ``[s, s]`` x 1.25 (where centre x != -1), then centre and joints - 1 (MATLAB's
    1-based pixels to 0-based), visibility ``joints_vis``, score 1."""
    rows = []
    for i, a in enumerate(entries):
        center = np.array(a["center"], np.float64)
        scale = np.array([a["scale"], a["scale"]], np.float64)
        if center[0] != -1:
            center[1] = center[1] + CENTER_SHIFT * scale[1]
            scale = scale * SCALE_PADDING
        joints = np.array([p[:2] for p in a["joints"]], np.float64) - 1
        rows.append((i, joints, np.asarray(a["joints_vis"], np.float64), center - 1, scale, 1.0))
    return Records.build(rows, NUM_JOINTS)


class MpiiKeypoints(TopDownKeypoints):
    """MPII persons: training on ``train_set``, evaluation on ``val_set`` by PCKh against its
    ``gt_{val_set}.mat`` (``pckh_gt``); ``val_entries`` are the evaluated annotations."""

    num_joints = NUM_JOINTS
    skeleton = MPII
    benchmark = "pckh"

    def __init__(self, *, train_entries: list[dict[str, Any]], val_entries: list[dict[str, Any]],
                 pckh_gt: PckhGroundTruth, images_dir: str, crop: Crop, color_rgb: bool = True, workers: int = 0,
                 prefetch: int = 1, name: str = "mpii", check_files: bool = True, verify_images: bool = True,
                 bad_images: str = "refuse"):
        if len(pckh_gt) != len(val_entries):
            raise ValueError(f"{pckh_gt.path}: {len(pckh_gt)} persons, but the evaluated annotations hold "
                             f"{len(val_entries)}: they must be the same persons in the same order")
        self.name, self.crop, self.pckh_gt, self.val_entries = name, crop, pckh_gt, val_entries
        self.train_records, self.eval_records = records(train_entries), records(val_entries)
        self.train_images = FileImages(images_dir, {i: a["image"] for i, a in enumerate(train_entries)}, color_rgb)
        self.val_images = FileImages(images_dir, {i: a["image"] for i, a in enumerate(val_entries)}, color_rgb)
        self.workers, self.prefetch = worker_processes(workers), max(1, int(prefetch))
        self.image_shape = (*crop.image_size, 3)
        self.heatmap_shape = (*crop.heatmap_size, NUM_JOINTS)
        self.train_size, self.eval_size = len(self.train_records), len(self.eval_records)
        if check_files:
            for what, images in (("train", self.train_images), ("val", self.val_images)):
                missing = images.missing(sorted(images.file_names))
                if missing:
                    raise FileNotFoundError(f"{images.path(missing[0])}: the image of {what} entry {missing[0]} is "
                                            f"missing ({len(missing)} entries without their image)")
            if verify_images:  # every image decodes completely; 'skip' drops the training persons of bad ones
                verify.verify_top_down(self, bad_images, "MPII")

    @classmethod
    def from_config(cls, section: MpiiConfig | Mapping[str, Any], seed: int) -> MpiiKeypoints:
        if not isinstance(section, MpiiConfig):
            section = from_section(MpiiConfig, section, "data", ignore=("name",))
        paths = section.paths()
        return cls(train_entries=read_annotations(paths["train_ann"]), val_entries=read_annotations(paths["val_ann"]),
                   pckh_gt=load_ground_truth(paths["gt"]), images_dir=paths["images"],
                   crop=section.crop(seed, MPII), color_rgb=section.color_rgb, workers=section.workers,
                   prefetch=section.prefetch, verify_images=section.verify_images, bad_images=section.bad_images)

    def describe(self) -> str:
        c = self.crop
        return (f"{type(self).__name__} ({self.name}): {self.train_size:,} train persons, {self.eval_size:,} eval "
                f"persons (PCKh against {Path(self.pckh_gt.path).name}); input {c.image_size[0]}x{c.image_size[1]}, "
                f"heatmaps {c.heatmap_size[0]}x{c.heatmap_size[1]}, sigma {c.sigma}; "
                f"{self.workers or 'no'} grain worker processes")


def check_files(section: MpiiConfig) -> None:
    """The MPII root must be set and hold the annotation files (before any work)."""
    if not section.dir:
        raise ValueError("dir: the MPII root (with annot/ and images/, HRNet's layout) is not set")
    for path in section.paths().values():
        if not os.path.exists(path):
            raise ValueError(f"dir: {path} does not exist (HRNet's MPII layout: annot/{section.train_set}.json, "
                             f"annot/{section.val_set}.json, annot/gt_{section.val_set}.mat, images/)")


register_dataset("mpii", MpiiConfig, MpiiKeypoints.from_config, check_files=check_files)
