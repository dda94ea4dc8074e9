"""Heatmap codec: Gaussian targets (numpy), argmax decoding with HRNet's quarter offset or DARK,
and the flip test (JAX). Heatmaps are channels last, (..., H, W, K); coordinates are (x, y) pixels.

Sources: HRNet (leoxiaobin/deep-high-resolution-net.pytorch) ``lib/dataset/JointsDataset.py``
(``generate_target``), ``lib/core/inference.py`` (``get_max_preds``, ``get_final_preds``),
``lib/utils/transforms.py`` (``flip_back``) and ``lib/core/function.py`` (the shifted flip
average); DARK, Zhang et al. arXiv 1910.06278, as in mmpose ``mmpose/codecs/utils/refinement.py``
(``refine_keypoints_dark``), ``post_processing.py`` (``gaussian_blur``) and
``gaussian_heatmap.py`` (``generate_unbiased_gaussian_heatmaps``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from mlpbnn.pose.skeleton import FLIP_INDEX


def encode(
    joints: np.ndarray,
    visible: np.ndarray,
    image_size_hw: Sequence[int],
    heatmap_size_hw: Sequence[int],
    sigma: float = 2.0,
    unbiased: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian targets (H, W, K) float32 and per-joint weights (K,) float32 for joints in input pixels.

    Default (HRNet ``generate_target``): the peak sits on the integer ``mu = int(joint / stride + 0.5)``
    (Python ``int``, which truncates toward zero: a joint at x = -3 lands on column 0); a
    (6 sigma + 1)-wide window of exp(-d^2 / (2 sigma^2)) is pasted there, clipped to the map, only
    for joints whose weight is > 0.5. The weight is the visibility, set to 0 when the window lies
    outside the map (upper-left corner at or past the far edge, or lower-right exclusive corner
    < 0; a window whose exclusive corner is exactly 0 keeps weight 1 over an empty map, as in HRNet).

    ``unbiased`` (DARK, arXiv 1910.06278): the Gaussian is centred on the real-valued
    ``joint / stride`` and covers the whole map; same weight rule with the window around that centre.
    """
    joints = np.asarray(joints, dtype=np.float64)[:, :2]
    num = len(joints)
    height, width = int(heatmap_size_hw[0]), int(heatmap_size_hw[1])
    stride_x = image_size_hw[1] / width
    stride_y = image_size_hw[0] / height
    weights = (np.asarray(visible, dtype=np.float32).reshape(num) > 0).astype(np.float32)
    heatmaps = np.zeros((num, height, width), np.float32)
    radius = sigma * 3
    if unbiased:
        xs = np.arange(width, dtype=np.float32)
        ys = np.arange(height, dtype=np.float32)[:, None]
    else:
        size = int(2 * radius + 1)
        grid = np.arange(size, dtype=np.float32)
        peak = size // 2
        window = np.exp(-((grid - peak) ** 2 + (grid[:, None] - peak) ** 2) / (2 * sigma**2))
    for k in range(num):
        if unbiased:
            mu_x = joints[k, 0] / stride_x
            mu_y = joints[k, 1] / stride_y
        else:
            mu_x = int(joints[k, 0] / stride_x + 0.5)
            mu_y = int(joints[k, 1] / stride_y + 0.5)
        left, top = mu_x - radius, mu_y - radius
        right, bottom = mu_x + radius + 1, mu_y + radius + 1
        if not unbiased:
            left, top, right, bottom = int(left), int(top), int(right), int(bottom)
        if left >= width or top >= height or right < 0 or bottom < 0:
            weights[k] = 0.0
            continue
        if weights[k] <= 0.5:
            continue
        if unbiased:
            heatmaps[k] = np.exp(-((xs - mu_x) ** 2 + (ys - mu_y) ** 2) / (2 * sigma**2))
            continue
        x0, x1 = max(0, left), min(right, width)
        y0, y1 = max(0, top), min(bottom, height)
        heatmaps[k, y0:y1, x0:x1] = window[y0 - top : y1 - top, x0 - left : x1 - left]
    return np.ascontiguousarray(heatmaps.transpose(1, 2, 0)), weights


def opencv_gaussian_kernel(size: int) -> np.ndarray:
    """The 1-D kernel of ``cv2.GaussianBlur((size, size), 0)``, taken from OpenCV itself: a normalised
    Gaussian with sigma = 0.3 ((size - 1) / 2 - 1) + 0.8 (size 11 -> 2, 17 -> 2.9), except OpenCV's fixed
    tables for the small odd sizes (up to 9 in OpenCV 4.x)."""
    if size % 2 != 1:
        raise ValueError(f"blur kernel size must be odd, got {size}")
    return cv2.getGaussianKernel(size, 0, cv2.CV_64F).ravel()


def _blur(maps: jax.Array, size: int) -> jax.Array:
    """Separable Gaussian blur of (..., H, W) maps with zero padding (mmpose pads by (size - 1) / 2
    zeros before ``cv2.GaussianBlur``, so OpenCV's own border rule never reaches the kept pixels)."""
    kernel = opencv_gaussian_kernel(size)
    border = size // 2
    height, width = maps.shape[-2:]
    pad = [(0, 0)] * (maps.ndim - 2)
    padded = jnp.pad(maps, pad + [(0, 0), (border, border)])
    maps = sum(float(kernel[i]) * padded[..., :, i : i + width] for i in range(size))
    padded = jnp.pad(maps, pad + [(border, border), (0, 0)])
    return sum(float(kernel[i]) * padded[..., i : i + height, :] for i in range(size))


def _gather(maps: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
    """maps[..., y[..., p], x[..., p]] (..., P) for (..., H, W) maps and integer (..., P) positions,
    clipped into the map (the callers mask the positions where the clipping would matter)."""
    height, width = maps.shape[-2:]
    flat = jnp.clip(y, 0, height - 1) * width + jnp.clip(x, 0, width - 1)
    return jnp.take_along_axis(maps.reshape(*maps.shape[:-2], height * width), flat, axis=-1)


@functools.partial(jax.jit, static_argnames=("mode", "blur_kernel"))
def decode(heatmaps: jax.Array, mode: str = "quarter", blur_kernel: int | None = 11) -> tuple[jax.Array, jax.Array]:
    """Keypoints (..., K, 2) float32 in heatmap pixels (x, y) and their scores (..., K) from (..., H, W, K).

    HRNet ``get_max_preds``: the first argmax (x = index mod W, y = index div W), score = the
    maximum, coordinates 0 where the maximum is <= 0. Then per ``mode``:

    - ``"quarter"`` (HRNet ``get_final_preds``, POST_PROCESS): x += 0.25 sign(hm[y, x+1] - hm[y, x-1]),
      y += 0.25 sign(hm[y+1, x] - hm[y-1, x]), both only where 1 < x < W - 1 and 1 < y < H - 1.
    - ``"dark"`` (arXiv 1910.06278, mmpose ``refine_keypoints_dark``): each map blurred with
      OpenCV's ``blur_kernel`` Gaussian under zero padding and rescaled to its original maximum
      (``blur_kernel`` None or 1: no blur), clamped at 1e-10, log; then one Newton step
      ``-H^-1 g`` of the central-difference gradient and Hessian at the argmax, only where
      1 < x < W - 2 and 1 < y < H - 2 and det H != 0.
    - ``"argmax"``: the integer argmax alone.
    """
    if mode not in ("quarter", "dark", "argmax"):
        raise ValueError(f"unknown decode mode {mode!r}; choose 'quarter', 'dark' or 'argmax'")
    heatmaps = jnp.asarray(heatmaps)
    maps = jnp.moveaxis(heatmaps, -1, -3)  # (..., K, H, W)
    height, width = maps.shape[-2:]
    flat = maps.reshape(*maps.shape[:-2], height * width)
    index = jnp.argmax(flat, axis=-1)
    maxvals = jnp.max(flat, axis=-1)
    positive = maxvals > 0
    x = jnp.where(positive, index % width, 0)
    y = jnp.where(positive, index // width, 0)
    coords = jnp.stack([x, y], axis=-1).astype(jnp.float32)
    if mode == "quarter":
        inside = (x > 1) & (x < width - 1) & (y > 1) & (y < height - 1)
        # Right, left, below, above.
        near = _gather(maps, y[..., None] + np.array([0, 0, 1, -1]), x[..., None] + np.array([1, -1, 0, 0]))
        offset = jnp.sign(near[..., 0::2] - near[..., 1::2]).astype(jnp.float32) * 0.25
        coords = coords + jnp.where(inside[..., None], offset, 0.0)
    elif mode == "dark":
        logs = maps.astype(jnp.float32)
        if blur_kernel is not None and blur_kernel > 1:
            blurred = _blur(logs, blur_kernel)
            peak = jnp.max(blurred, axis=(-2, -1), keepdims=True)
            # Rescaled to the original maximum; an all-zero map (peak 0) is left as it is.
            ratio = jnp.where(peak != 0, maxvals[..., None, None] / jnp.where(peak != 0, peak, 1.0), 1.0)
            logs = blurred * ratio
        logs = jnp.log(jnp.maximum(logs, 1e-10))
        # The 5x5 neighbourhood of the argmax in one gather (clipped at the border, where the
        # condition below leaves the position unchanged anyway).
        dy, dx = np.mgrid[-2:3, -2:3]
        patch = _gather(logs, y[..., None] + dy.ravel(), x[..., None] + dx.ravel()).reshape(*x.shape, 5, 5)

        def at(dy: int, dx: int) -> jax.Array:
            return patch[..., 2 + dy, 2 + dx]

        centre = at(0, 0)
        gx = 0.5 * (at(0, 1) - at(0, -1))
        gy = 0.5 * (at(1, 0) - at(-1, 0))
        hxx = 0.25 * (at(0, 2) - 2 * centre + at(0, -2))
        hyy = 0.25 * (at(2, 0) - 2 * centre + at(-2, 0))
        hxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1))
        det = hxx * hyy - hxy**2
        inside = (x > 1) & (x < width - 2) & (y > 1) & (y < height - 2) & (det != 0)
        safe = jnp.where(det != 0, det, 1.0)
        # -H^-1 g with the 2x2 inverse [[hyy, -hxy], [-hxy, hxx]] / det.
        step_x = -(hyy * gx - hxy * gy) / safe
        step_y = -(hxx * gy - hxy * gx) / safe
        offset = jnp.stack([step_x, step_y], axis=-1)
        coords = coords + jnp.where(inside[..., None], offset, 0.0)
    return coords.astype(jnp.float32), maxvals


def flip_back(heatmaps: jax.Array, flip_index: np.ndarray = FLIP_INDEX) -> jax.Array:
    """Heatmaps of a mirrored input (..., H, W, K) back to the original frame: reverse W and swap
    the left/right channels (HRNet ``flip_back``)."""
    heatmaps = jnp.asarray(heatmaps)
    return heatmaps[..., ::-1, :][..., np.asarray(flip_index)]


def flip_average(heatmaps: jax.Array, flipped_output: jax.Array, shift: bool = True,
                 flip_index: np.ndarray = FLIP_INDEX) -> jax.Array:
    """HRNet's flip test: (heatmaps + flip_back(flipped_output)) / 2, the flipped maps first shifted
    one pixel right along W where ``shift`` (``outf[..., 1:] = outf[..., :-1]``; column 0 keeps its
    value), which undoes the half-pixel misalignment of the mirrored crop (TEST.SHIFT_HEATMAP).
    ``flip_index``: the dataset's left/right channel permutation (``Skeleton.flip_index``)."""
    flipped = flip_back(flipped_output, flip_index)
    if shift:
        flipped = jnp.concatenate([flipped[..., :1, :], flipped[..., :-1, :]], axis=-2)
    return (jnp.asarray(heatmaps) + flipped) / 2
