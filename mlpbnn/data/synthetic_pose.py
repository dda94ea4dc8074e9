"""Generated pose data for the quick start and the tests: people-like stick figures with the 17
COCO joints, drawn on varied backgrounds, in COCO's annotation format, so that they run through
the very pipeline, codec and COCOeval path of real COCO (``mlpbnn.data.coco``).

Each figure faces the viewer and has a torso, a head with eyes, ears and nose, and eight limbs
with random angles, lengths, thickness, scale and position; left limbs are drawn in warm colours
and right limbs in cool ones (which the flip augmentation swaps against the labels, so that, as on
people, the body's geometry is what tells left from right). Backgrounds are
colour gradients with random rectangles and discs of clutter. Annotations are exact: the joint
coordinates the figure was drawn from, visibility 2 inside the image and 0 outside, the box the
joints' extent padded by the limb width, and an ``area`` of 0.6 of that box (COCO's ``area`` is the
person's segment, smaller than its box; OKS scales with it).

Everything is a pure function of ``(seed, split, image id)``: the annotations are made when the
dataset is built, the pixels when an image is read (in grain's workers), never stored.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlpbnn.pose.skeleton import KEYPOINT_NAMES, SKELETON

_SPLIT_KEY = {"train": 0x7A1, "val": 0x7A2}
_LEFT = [(235, 90, 40), (250, 170, 30), (220, 60, 120)]   # upper arm/thigh, forearm/shin, (spare)
_RIGHT = [(40, 120, 235), (40, 200, 190), (120, 80, 230)]
_AREA_FRACTION = 0.6


@dataclass(frozen=True)
class Figure:
    joints: np.ndarray  # (17, 2) x, y in image pixels
    thickness: int
    torso: np.ndarray  # (4, 2) polygon
    head: tuple[float, float, float]  # centre x, y and radius


def _rng(seed: int, split: str, image_id: int, part: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _SPLIT_KEY[split], int(image_id), part])


def _unit(angle: float) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])


def make_figure(rng: np.random.Generator, width: int, height: int) -> Figure:
    """One figure: body size 40-85% of the image height, upright within +-25 degrees."""
    size = rng.uniform(0.4, 0.85) * height
    tilt = rng.uniform(-25, 25) * np.pi / 180
    down = _unit(np.pi / 2 + tilt)  # along the torso, head to hips
    side = np.array([-down[1], down[0]])  # the figure's left as seen in the image (x grows right)
    centre = np.array([rng.uniform(0.25, 0.75) * width, rng.uniform(0.35, 0.65) * height])
    torso_len, shoulder, hip = size * 0.3, size * rng.uniform(0.09, 0.13), size * rng.uniform(0.06, 0.09)
    neck = centre - down * torso_len * 0.5
    pelvis = centre + down * torso_len * 0.5
    # Figures face the viewer, their left on the image's right, as most people in COCO: with the
    # flip augmentation (which swaps the labels), the body's geometry is what tells left from
    # right; the limb colours alone would not (flipping swaps them against the labels).
    facing = -1.0
    j = np.zeros((17, 2))
    head_r = size * 0.075
    head = neck - down * head_r * 1.4
    # face: nose towards the viewer, eyes above it, ears at the side of the head
    j[0] = head + down * head_r * 0.25
    j[1], j[2] = head + facing * side * head_r * 0.4, head - facing * side * head_r * 0.4
    j[1] -= down * head_r * 0.25
    j[2] -= down * head_r * 0.25
    j[3], j[4] = head + facing * side * head_r * 0.95, head - facing * side * head_r * 0.95
    j[5], j[6] = neck + facing * side * shoulder, neck - facing * side * shoulder
    j[11], j[12] = pelvis + facing * side * hip, pelvis - facing * side * hip
    upper, lower = size * rng.uniform(0.15, 0.19), size * rng.uniform(0.14, 0.18)
    thigh, shin = size * rng.uniform(0.19, 0.24), size * rng.uniform(0.18, 0.23)
    base = np.pi / 2 + tilt
    for s, (sh, el, wr) in ((1, (5, 7, 9)), (-1, (6, 8, 10))):
        a1 = base + facing * s * rng.uniform(-0.3, 2.2)  # hanging (0) to raised (2.2 rad), outwards
        a2 = a1 + rng.uniform(-1.6, 1.6)
        j[el] = j[sh] + upper * _unit(a1)
        j[wr] = j[el] + lower * _unit(a2)
    for s, (hp, kn, an) in ((1, (11, 13, 15)), (-1, (12, 14, 16))):
        a1 = base + facing * s * rng.uniform(-0.15, 0.6)
        a2 = a1 + rng.uniform(-0.9, 0.9)
        j[kn] = j[hp] + thigh * _unit(a1)
        j[an] = j[kn] + shin * _unit(a2)
    torso = np.stack([j[5], j[6], j[12], j[11]])
    return Figure(j, max(2, int(round(size * 0.045))), torso, (float(head[0]), float(head[1]), float(head_r)))


def _visible(joints: np.ndarray, width: int, height: int) -> np.ndarray:
    return (joints[:, 0] >= 0) & (joints[:, 0] <= width - 1) & (joints[:, 1] >= 0) & (joints[:, 1] <= height - 1)


def _layout(seed: int, split: str, image_id: int) -> tuple[int, int, list[Figure]]:
    rng = _rng(seed, split, image_id, 0)
    height = int(rng.integers(96, 161))
    width = int(rng.integers(96, 161))
    count = 1 if rng.random() < 0.8 else 2
    return width, height, [make_figure(rng, width, height) for _ in range(count)]


def annotations(seed: int, split: str, num_images: int) -> dict[str, Any]:
    """The COCO person-keypoints dict of ``num_images`` generated images (ids 1..num_images)."""
    images, anns = [], []
    for image_id in range(1, num_images + 1):
        width, height, figures = _layout(seed, split, image_id)
        images.append({"id": image_id, "file_name": f"synthetic_{split}_{image_id:06d}.png", "width": width,
                       "height": height})
        for fig in figures:
            vis = _visible(fig.joints, width, height)
            pts = fig.joints[vis]
            pad = fig.thickness
            x0, y0 = np.maximum(pts.min(0) - pad, 0)
            x1, y1 = np.minimum(pts.max(0) + pad, [width - 1, height - 1])
            kpts = np.zeros((17, 3))
            kpts[vis, :2] = np.round(fig.joints[vis], 2)
            kpts[vis, 2] = 2
            w, h = float(x1 - x0), float(y1 - y0)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                         "num_keypoints": int(vis.sum()), "keypoints": [float(v) for v in kpts.reshape(-1)],
                         "bbox": [float(x0), float(y0), w, h], "area": _AREA_FRACTION * w * h})
    category = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(KEYPOINT_NAMES),
                "skeleton": [[a + 1, b + 1] for a, b in SKELETON]}
    return {"info": {"description": f"mlpbnn synthetic pose, seed {seed}, split {split}"}, "licenses": [],
            "categories": [category], "images": images, "annotations": anns}


def coco(seed: int, split: str, num_images: int) -> Any:
    """pycocotools ``COCO`` of ``annotations(...)``."""
    from pycocotools.coco import COCO

    c = COCO()
    c.dataset = annotations(seed, split, num_images)
    with contextlib.redirect_stdout(io.StringIO()):
        c.createIndex()
    return c


@dataclass(frozen=True)
class SyntheticImages:
    """The images of ``annotations(seed, split, n)``, drawn when read. Picklable."""

    seed: int
    split: str

    def load(self, image_id: int) -> np.ndarray:
        import cv2

        width, height, figures = _layout(self.seed, self.split, image_id)
        rng = _rng(self.seed, self.split, image_id, 1)
        c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = np.linspace(0, 1, height)[:, None, None]
        image = np.ascontiguousarray(np.broadcast_to(c0 * (1 - t) + c1 * t, (height, width, 3)).astype(np.uint8))
        for _ in range(int(rng.integers(2, 7))):  # clutter
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            if rng.random() < 0.5:
                cv2.rectangle(image, (x, y), (x + int(rng.integers(5, 40)), y + int(rng.integers(5, 40))), colour, -1)
            else:
                cv2.circle(image, (x, y), int(rng.integers(3, 20)), colour, -1)
        for fig in figures:
            _draw(image, fig, rng)
        noise = rng.integers(-10, 11, image.shape, dtype=np.int16)  # sensor-like noise, cheaply
        return np.clip(image + noise, 0, 255).astype(np.uint8)


def _draw(image: np.ndarray, fig: Figure, rng: np.random.Generator) -> None:
    import cv2

    def pt(i: int) -> tuple[int, int]:
        return int(round(fig.joints[i, 0])), int(round(fig.joints[i, 1]))

    t = fig.thickness
    body = tuple(int(v) for v in rng.integers(60, 200, 3))
    cv2.fillConvexPoly(image, np.round(fig.torso).astype(np.int32), body, lineType=cv2.LINE_AA)
    for (a, b, c), colours in (((5, 7, 9), _LEFT), ((6, 8, 10), _RIGHT), ((11, 13, 15), _LEFT),
                               ((12, 14, 16), _RIGHT)):
        cv2.line(image, pt(a), pt(b), colours[0], t, cv2.LINE_AA)
        cv2.line(image, pt(b), pt(c), colours[1], t, cv2.LINE_AA)
        cv2.circle(image, pt(c), max(1, t // 2 + 1), colours[2], -1, cv2.LINE_AA)  # hand / foot
    hx, hy, hr = fig.head
    cv2.circle(image, (int(round(hx)), int(round(hy))), int(round(hr)), (230, 200, 170), -1, cv2.LINE_AA)
    for i, colour in ((1, _LEFT[0]), (2, _RIGHT[0]), (0, (20, 20, 20))):
        cv2.circle(image, pt(i), max(1, t // 3), colour, -1, cv2.LINE_AA)
    for i, colour in ((3, _LEFT[1]), (4, _RIGHT[1])):
        cv2.circle(image, pt(i), max(1, t // 3), colour, -1, cv2.LINE_AA)
