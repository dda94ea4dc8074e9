"""Sample drawings: each image with its predicted skeletons beside the same image with the ground truth
(``draw_samples``), or one image with its skeletons and person boxes (``draw_keypoints``).

matplotlib's Agg canvas on a ``Figure`` of its own (no pyplot state, safe in a training process);
the PNG is written to ``PATH.partial`` and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mlpbnn.pose.skeleton import COCO, Skeleton

SCORE_THRESHOLD = 0.2  # predicted joints drawn above this score (HRNet's in_vis_thre)
TITLE_PX = 28
DPI = 100


def layout(image_shapes: Sequence[tuple[int, ...]], panel_px: int = 320, title: str | None = None) -> list[int]:
    """Pixel heights of the title band (0 without a title) and of each row: a row is two
    ``panel_px``-wide copies of its image, its height ``round(panel_px * H / W)``."""
    rows = [round(panel_px * shape[0] / shape[1]) for shape in image_shapes]
    return [TITLE_PX if title else 0, *rows]


def _limb_color(a: int, b: int, skeleton: Skeleton = COCO) -> str:
    sides = {skeleton.names[k].split("_")[0] for k in (a, b)}  # "left", "right" or another part
    return {"left": "tab:blue", "right": "tab:red"}.get(sides.pop(), "tab:green") if len(sides) == 1 else "tab:green"


def _skeletons(ax, keypoints: np.ndarray, shown: np.ndarray, colors: list[str], skeleton: Skeleton) -> None:
    for n in range(len(keypoints)):
        points, mask = keypoints[n], shown[n]
        for (a, b), color in zip(skeleton.limbs, colors, strict=True):
            if mask[a] and mask[b]:
                ax.plot(points[[a, b], 0], points[[a, b], 1], color=color, linewidth=1.5)
        ax.scatter(points[mask, 0], points[mask, 1], s=9, c="white", edgecolors="black", linewidths=0.5, zorder=3)


def draw_samples(
    path: str | Path,
    panels: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    title: str | None = None,
    panel_px: int = 320,
    skeleton: Skeleton = COCO,
) -> Path:
    """Writes a PNG: per panel ``(image HxWx3 uint8 RGB, predicted (N, K, 3) with scores,
    ground truth (M, K, 3) with visibility)`` one row, predictions left, ground truth right.

    Predicted joints with score > 0.2 and limbs (``skeleton.limbs``, COCO's by default) between two
    such joints are drawn;
    ground-truth joints with visibility > 0 likewise. The PNG is ``2 * panel_px`` wide and
    ``sum(layout(...))`` high. Returns the path.
    """
    path = Path(path)
    heights = layout([image.shape for image, _, _ in panels], panel_px, title)
    width_px, height_px = 2 * panel_px, sum(heights)
    # Agg truncates width * dpi to whole pixels: half a pixel more keeps float error from losing one.
    fig = Figure(figsize=((width_px + 0.5) / DPI, (height_px + 0.5) / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    if title:
        fig.text(0.5, 1 - 0.5 * TITLE_PX / height_px, title, ha="center", va="center", fontsize=11)
    colors = [_limb_color(a, b, skeleton) for a, b in skeleton.limbs]
    k = skeleton.num_joints
    top = heights[0]
    for (image, predicted, truth), row_px in zip(panels, heights[1:], strict=True):
        predicted = np.asarray(predicted, dtype=np.float64).reshape(-1, k, 3)
        truth = np.asarray(truth, dtype=np.float64).reshape(-1, k, 3)
        for column, (keypoints, shown, label) in enumerate(
            (
                (predicted, predicted[..., 2] > SCORE_THRESHOLD, "prediction"),
                (truth, truth[..., 2] > 0, "ground truth"),
            )
        ):
            bottom = 1 - (top + row_px) / height_px
            ax = fig.add_axes((column * 0.5, bottom, 0.5, row_px / height_px))
            ax.imshow(image, aspect="auto", interpolation="bilinear")
            _skeletons(ax, keypoints, shown, colors, skeleton)
            ax.set_xlim(-0.5, image.shape[1] - 0.5)
            ax.set_ylim(image.shape[0] - 0.5, -0.5)  # keep the image frame whatever the joints
            ax.text(4, 4, label, color="white", fontsize=8, va="top", bbox={"facecolor": "black", "alpha": 0.5})
            ax.set_axis_off()
        top += row_px
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fig.savefig(partial, format="png", dpi=DPI)
    os.replace(partial, path)
    return path


def draw_keypoints(
    path: str | Path,
    image: np.ndarray,
    keypoints: np.ndarray,
    boxes: np.ndarray | None = None,
    title: str | None = None,
    width_px: int | None = None,
    threshold: float = SCORE_THRESHOLD,
) -> Path:
    """Writes a PNG of one image (H x W x 3 uint8 RGB) with the skeletons of ``keypoints`` (N, K, 3)
    (joints with score > ``threshold`` and the limbs between two such joints) and, where given,
    the person ``boxes`` (M, 4) [x, y, w, h] as thin yellow outlines. The PNG is ``width_px``
    wide (default the image's width) and keeps the image's aspect, plus the title band. Returns
    the path (written as ``PATH.partial``, then renamed)."""
    path = Path(path)
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, COCO.num_joints, 3)
    width_px = int(width_px or image.shape[1])
    title_px, row_px = layout([image.shape], width_px, title)
    height_px = title_px + row_px
    fig = Figure(figsize=((width_px + 0.5) / DPI, (height_px + 0.5) / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    if title:
        fig.text(0.5, 1 - 0.5 * TITLE_PX / height_px, title, ha="center", va="center", fontsize=11)
    ax = fig.add_axes((0, 0, 1, row_px / height_px))
    ax.imshow(image, aspect="auto", interpolation="bilinear")
    for x, y, w, h in np.asarray(boxes if boxes is not None else np.zeros((0, 4)), np.float64).reshape(-1, 4):
        ax.plot([x, x + w, x + w, x, x], [y, y, y + h, y + h, y], color="yellow", linewidth=0.6, alpha=0.8)
    _skeletons(ax, keypoints, keypoints[..., 2] > threshold, [_limb_color(a, b) for a, b in COCO.limbs], COCO)
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim(image.shape[0] - 0.5, -0.5)
    ax.set_axis_off()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fig.savefig(partial, format="png", dpi=DPI)
    os.replace(partial, path)
    return path
