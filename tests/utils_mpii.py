"""Generated MPII data in HRNet's exact layout (``annot/{train,valid}.json``, ``annot/gt_valid.mat``
written with scipy's ``savemat`` as MATLAB cells and arrays, ``images/*.jpg``), and an
independent implementation of HRNet's ``MPIIDataset.evaluate`` to check ``pose.pckh`` against."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from scipy.io import savemat

# MPII's joint abbreviations in gt_valid.mat's order.
MPII_JOINTS = ("rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor", "neck", "head", "rwri", "relb",
               "rsho", "lsho", "lelb", "lwri")
# A standing figure facing the camera (its right on the image's left), in units of its height,
# relative to the annotation centre.
TEMPLATE = np.array([
    (-0.10, 0.46), (-0.09, 0.24), (-0.08, 0.02), (0.08, 0.02), (0.09, 0.24), (0.10, 0.46), (0.0, 0.02),
    (0.0, -0.30), (0.0, -0.34), (0.0, -0.48), (-0.22, 0.02), (-0.20, -0.14), (-0.13, -0.30), (0.13, -0.30),
    (0.20, -0.14), (0.22, 0.02),
])
LIMBS = ((0, 1), (1, 2), (2, 6), (3, 6), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9), (10, 11), (11, 12), (12, 7),
         (13, 7), (13, 14), (14, 15))


def people(rng: np.random.Generator, count: int, image_hw: tuple[int, int]) -> list[dict]:
    """``count`` annotated persons (1-based pixels, as MPII's files): centre, scale (height / 200),
    16 joints, visibility (a few joints missing, written as -1 as HRNet's files do) and head box."""
    h, w = image_hw
    out = []
    for _ in range(count):
        scale = rng.uniform(0.3, 0.42)
        height = 200 * scale
        center = np.array([rng.uniform(0.35, 0.65) * w, rng.uniform(0.4, 0.5) * h]) + 1
        joints = center + TEMPLATE * height + rng.normal(0, 2.0, (16, 2))
        vis = (rng.random(16) > 0.15).astype(int)
        vis[9] = 1  # every person has a head (its head box is what PCKh is measured by)
        joints[vis == 0] = -1.0
        top, neck = joints[9], center + TEMPLATE[8] * height
        headbox = np.array([[top[0] - 0.09 * height, top[1] - 0.02 * height], [top[0] + 0.09 * height, neck[1]]])
        out.append({"center": center.round(2).tolist(), "scale": round(float(scale), 4),
                    "joints": joints.round(2).tolist(), "joints_vis": vis.tolist(), "headbox": headbox.round(2)})
    return out


def draw(rng: np.random.Generator, persons: list[dict], image_hw: tuple[int, int]) -> np.ndarray:
    h, w = image_hw
    base = rng.integers(40, 200, 3)
    image = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    for p in persons:
        joints, vis = np.asarray(p["joints"]) - 1, p["joints_vis"]
        for k, (a, b) in enumerate(LIMBS):
            if vis[a] and vis[b]:
                color = (60 + 12 * k, 255 - 12 * k, 120)
                cv2.line(image, tuple(int(v) for v in joints[a]), tuple(int(v) for v in joints[b]), color, 3)
    return image


def write_mpii(root: Path, num_train: int = 8, num_val: int = 6, seed: int = 0,
               image_hw: tuple[int, int] = (150, 180)) -> dict:
    """The MPII layout under ``root``: images with one or two persons each, ``train.json`` and
    ``valid.json`` (the persons in file order) and ``gt_valid.mat`` of the validation persons.
    Returns {'train': entries, 'valid': entries, 'headboxes': (N, 2, 2) 1-based} of what was written."""
    rng = np.random.default_rng(seed)
    (root / "annot").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    written = {}
    for split, total in (("train", num_train), ("valid", num_val)):
        entries, k = [], 0
        while len(entries) < total:
            persons = people(rng, min(1 + k % 2, total - len(entries)), image_hw)  # images of 1 and 2 persons
            name = f"{split[0]}{k:07d}.jpg"
            cv2.imwrite(str(root / "images" / name), cv2.cvtColor(draw(rng, persons, image_hw), cv2.COLOR_RGB2BGR))
            entries += [{"image": name, **p} for p in persons]
            k += 1
        (root / "annot" / f"{split}.json").write_text(json.dumps(
            [{k: v for k, v in e.items() if k != "headbox"} for e in entries]))
        written[split] = entries
    val = written["valid"]
    write_gt(root / "annot" / "gt_valid.mat", np.array([e["joints"] for e in val]),
             np.array([e["joints_vis"] for e in val]), np.stack([e["headbox"] for e in val]))
    written["headboxes"] = np.stack([e["headbox"] for e in val])
    return written


def write_gt(path: Path, joints: np.ndarray, visible: np.ndarray, headboxes: np.ndarray,
             names: tuple[str, ...] = MPII_JOINTS) -> None:
    """gt_valid.mat as MPII's: ``dataset_joints`` a 1x16 cell of names, ``jnt_missing`` (16, N),
    ``pos_gt_src`` (16, 2, N) and ``headboxes_src`` (2, 2, N), from person-major arrays (1-based)."""
    cell = np.empty((1, len(names)), dtype=object)
    for i, n in enumerate(names):
        cell[0, i] = np.array([n])
    savemat(str(path), {"dataset_joints": cell, "jnt_missing": (1 - np.asarray(visible)).T.astype(np.float64),
                        "pos_gt_src": np.transpose(np.asarray(joints, np.float64), (1, 2, 0)),
                        "headboxes_src": np.transpose(np.asarray(headboxes, np.float64), (1, 2, 0))})


def hrnet_pckh(preds: np.ndarray, joints: np.ndarray, visible: np.ndarray, headboxes: np.ndarray) -> dict:
    """HRNet's ``MPIIDataset.evaluate`` formula written out on person-major arrays: ``preds`` (N, 16, 2)
    0-based, ``joints`` (N, 16, 2) 1-based, ``visible`` (N, 16), ``headboxes`` (N, 2, 2) 1-based."""
    err = np.sqrt(((preds + 1.0 - joints) ** 2).sum(-1))  # (N, 16)
    diag = headboxes[:, 1] - headboxes[:, 0]
    size = np.sqrt((diag ** 2).sum(-1)) * 0.6  # (N,)
    count = visible.sum(0).astype(np.float64)

    def rate(t: float) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):  # a joint nobody shows: 0 / 0, as in HRNet
            return 100.0 * ((err / size[:, None] * visible <= t) * visible).sum(0) / count

    main, low = rate(0.5), rate(np.arange(0, 0.51, 0.01)[11])
    keep = np.ones(16, bool)
    keep[6:8] = False
    ratio = count[keep] / count[keep].sum()
    j = {n: i for i, n in enumerate(MPII_JOINTS)}
    pair = lambda a, b: 0.5 * (main[j[a]] + main[j[b]])  # noqa: E731
    return {"Head": main[j["head"]], "Shoulder": pair("lsho", "rsho"), "Elbow": pair("lelb", "relb"),
            "Wrist": pair("lwri", "rwri"), "Hip": pair("lhip", "rhip"), "Knee": pair("lkne", "rkne"),
            "Ankle": pair("lank", "rank"), "Mean": float((main[keep] * ratio).sum()),
            "Mean@0.1": float((low[keep] * ratio).sum())}
