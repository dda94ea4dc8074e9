"""Top-down crop geometry in the HRNet/SimpleBaseline convention (numpy and OpenCV).

A person box becomes a (center, scale) pair: the box centre and its aspect-fixed, padded size in
units of ``pixel_std`` = 200 pixels. The crop is the similarity that maps the centre to the middle
of the output and ``scale[0] * 200`` source pixels onto the output width (only ``scale[0]`` is used,
as in HRNet). Sources: HRNet (leoxiaobin/deep-high-resolution-net.pytorch) ``lib/dataset/coco.py``
(``_load_coco_keypoint_annotation_kernal``, ``_xywh2cs``), ``lib/dataset/JointsDataset.py``
(``half_body_transform``) and ``lib/utils/transforms.py`` (``get_affine_transform``,
``transform_preds``). Sizes passed to OpenCV are (width, height); the names say which.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from mlpbnn.pose.skeleton import UPPER_BODY_IDS

PIXEL_STD = 200.0


def clean_box(
    x: float, y: float, w: float, h: float, image_w: int, image_h: int, area: float | None = None
) -> tuple[float, float, float, float] | None:
    """HRNet's ground-truth box sanitising: clip to the image and shrink by one pixel.

    x1 = max(0, x), x2 = min(W - 1, x1 + max(0, w - 1)) (likewise for y), kept when x2 >= x1 and
    y2 >= y1 (and the annotation ``area`` > 0 where given, as HRNet requires); returns
    (x1, y1, x2 - x1, y2 - y1) or None. Detector boxes are used as they are (no shrink).
    """
    x1 = max(0.0, float(x))
    y1 = max(0.0, float(y))
    x2 = min(image_w - 1.0, x1 + max(0.0, float(w) - 1.0))
    y2 = min(image_h - 1.0, y1 + max(0.0, float(h) - 1.0))
    if (area is not None and area <= 0) or x2 < x1 or y2 < y1:
        return None
    return (x1, y1, x2 - x1, y2 - y1)


def _fix_aspect(w: float, h: float, aspect_ratio: float) -> tuple[float, float]:
    # Grow the shorter side so that w / h == aspect_ratio (never shrink).
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return w, h


def box_to_center_scale(
    box_xywh: Sequence[float], aspect_ratio: float, padding: float = 1.25, pixel_std: float = PIXEL_STD
) -> tuple[np.ndarray, np.ndarray]:
    """HRNet ``_xywh2cs``: centre of the box, size fixed to ``aspect_ratio`` (input w / h, 0.75 for
    192x256) and padded, in units of ``pixel_std``. Box (100, 50, 60, 200) -> (130, 150), (0.9375, 1.25).
    """
    x, y, w, h = (float(v) for v in box_xywh)
    center = np.array([x + 0.5 * w, y + 0.5 * h])
    w, h = _fix_aspect(w, h, aspect_ratio)
    scale = np.array([w / pixel_std, h / pixel_std]) * padding
    return center, scale


def _rotate(point: np.ndarray, rotation_rad: float) -> np.ndarray:
    sn, cs = np.sin(rotation_rad), np.cos(rotation_rad)
    return np.array([point[0] * cs - point[1] * sn, point[0] * sn + point[1] * cs])


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # b plus (a - b) turned by 90 degrees: completes a right angle, fixing the similarity.
    d = a - b
    return b + np.array([-d[1], d[0]])


def affine_matrix(
    center: Sequence[float],
    scale: Sequence[float],
    rotation_deg: float,
    output_size_wh: Sequence[int],
    inverse: bool = False,
    pixel_std: float = PIXEL_STD,
) -> np.ndarray:
    """HRNet ``get_affine_transform``: the (2, 3) float64 map from image to crop (``inverse``: crop to image).

    Three point pairs solved by ``cv2.getAffineTransform``: the centre goes to the output middle;
    the point ``scale[0] * pixel_std / 2`` above it, turned by ``rotation_deg`` (counter-clockwise
    on screen for positive angles), goes to the point ``output_w / 2`` above the middle; the third
    pair completes a right angle. Only ``scale[0]`` matters.
    """
    center = np.asarray(center, dtype=np.float64)
    src_w = float(scale[0]) * pixel_std
    dst_w, dst_h = float(output_size_wh[0]), float(output_size_wh[1])
    src_dir = _rotate(np.array([0.0, -0.5 * src_w]), np.pi * rotation_deg / 180.0)
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0] = center
    src[1] = center + src_dir
    dst[0] = (0.5 * dst_w, 0.5 * dst_h)
    dst[1] = dst[0] + np.array([0.0, -0.5 * dst_w])
    src[2] = _third_point(src[0], src[1])
    dst[2] = _third_point(dst[0], dst[1])
    if inverse:
        return cv2.getAffineTransform(dst, src)
    return cv2.getAffineTransform(src, dst)


def warp(image: np.ndarray, matrix: np.ndarray, output_size_wh: Sequence[int]) -> np.ndarray:
    """The crop: ``cv2.warpAffine`` with bilinear interpolation and a constant 0 border (HRNet's call)."""
    return cv2.warpAffine(
        image,
        np.asarray(matrix, dtype=np.float64),
        (int(output_size_wh[0]), int(output_size_wh[1])),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Points (N, 2) through a (2, 3) affine matrix."""
    points = np.asarray(points, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def half_body(
    joints: np.ndarray,
    visible: np.ndarray,
    aspect_ratio: float,
    rng: np.random.Generator,
    padding: float = 1.5,
    upper_body_ids: Sequence[int] = UPPER_BODY_IDS,
    pixel_std: float = PIXEL_STD,
) -> tuple[np.ndarray, np.ndarray] | None:
    """HRNet ``half_body_transform``: a (center, scale) around the upper or the lower body's visible joints.

    The upper body is chosen when ``rng.standard_normal() < 0.5`` (a normal draw, as HRNet's
    ``np.random.randn``: P ~ 0.69) and it has more than 2 visible joints; otherwise the lower body
    if it has more than 2, else the upper. None when the chosen part has fewer than 2. The caller
    decides whether to try (HRNet: more than 8 visible joints and a uniform draw < 0.3). One normal
    draw is taken from ``rng`` on every call, as in HRNet.
    """
    joints = np.asarray(joints, dtype=np.float64)[:, :2]
    visible = np.asarray(visible).astype(bool)
    is_upper = np.zeros(len(joints), bool)
    is_upper[list(upper_body_ids)] = True
    upper = joints[visible & is_upper]
    lower = joints[visible & ~is_upper]
    upper_first = rng.standard_normal() < 0.5  # drawn on every call, as HRNet's np.random.randn()
    chosen = upper if upper_first and len(upper) > 2 else (lower if len(lower) > 2 else upper)
    if len(chosen) < 2:
        return None
    center = chosen.mean(axis=0)
    w, h = chosen.max(axis=0) - chosen.min(axis=0)
    w, h = _fix_aspect(float(w), float(h), aspect_ratio)
    scale = np.array([w / pixel_std, h / pixel_std]) * padding
    return center, scale


def to_image_coords(
    coords: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    heatmap_size_wh: Sequence[int],
    pixel_std: float = PIXEL_STD,
) -> np.ndarray:
    """HRNet ``transform_preds`` at rotation 0, vectorised: heatmap pixels (..., K, 2) to image pixels.

    x_img = c_x + (x_hm - W/2) * s, y_img = c_y + (y_hm - H/2) * s with s = scale[0] * pixel_std / W,
    i.e. ``apply_affine(coords, affine_matrix(center, scale, 0, heatmap_size_wh, inverse=True))``.
    Only ``scale[..., 0]`` is used, as in HRNet (mmpose uses both components; the same for
    aspect-fixed boxes). Works on numpy and jax arrays alike (arithmetic only).
    """
    coords, center, scale = (
        np.asarray(a, np.float64) if isinstance(a, list | tuple) else a for a in (coords, center, scale)
    )
    width, height = float(heatmap_size_wh[0]), float(heatmap_size_wh[1])
    step = scale[..., 0:1] * (pixel_std / width)  # (..., 1): image pixels per heatmap pixel
    half = np.array([0.5 * width, 0.5 * height])
    return center[..., None, :] + (coords - half) * step[..., None, :]
