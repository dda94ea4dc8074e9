"""From per-crop keypoints to a COCO result list: rescoring, per-image OKS-NMS, result entries (numpy).

Sources: HRNet (leoxiaobin/deep-high-resolution-net.pytorch) ``lib/dataset/coco.py:evaluate`` and
``_coco_keypoint_results_one_category_kernel``, ``lib/nms/nms.py`` (``oks_iou``, ``oks_nms``);
mmpose ``CocoMetric(score_mode='bbox_keypoint', keypoint_score_thr=0.2, nms_mode='oks_nms',
nms_thr=0.9)`` does the same.
"""

from __future__ import annotations

import numpy as np

from mlpbnn.pose.skeleton import OKS_SIGMAS


def rescore(box_scores: np.ndarray, maxvals: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """Instance scores (N,): box score times the mean of the joint scores above ``threshold`` (0 if none)."""
    maxvals = np.asarray(maxvals, dtype=np.float64)
    above = maxvals > threshold
    count = above.sum(axis=-1)
    total = np.where(above, maxvals, 0.0).sum(axis=-1)
    mean = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    return np.asarray(box_scores, dtype=np.float64) * mean


def oks_iou(
    keypoints: np.ndarray,
    others: np.ndarray,
    area: float,
    other_areas: np.ndarray,
    sigmas: np.ndarray = OKS_SIGMAS,
) -> np.ndarray:
    """OKS (M,) of one instance (K, 2|3) against others (M, K, 2|3), over all K joints (HRNet
    ``oks_iou`` with ``in_vis_thre=None``): mean_j exp(-d_j^2 / (2 sigma_j)^2 / ((a + a_m) / 2 + eps) / 2)
    with eps = ``np.spacing(1)``. Scores and visibilities do not enter."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    others = np.asarray(others, dtype=np.float64)
    variances = (2 * np.asarray(sigmas, dtype=np.float64)) ** 2
    squared = ((others[..., :2] - keypoints[None, :, :2]) ** 2).sum(axis=-1)  # (M, K)
    mean_area = (area + np.asarray(other_areas, dtype=np.float64)) / 2 + np.spacing(1)
    e = squared / variances / mean_area[:, None] / 2
    return np.exp(-e).mean(axis=-1)


def score_order(scores: np.ndarray) -> np.ndarray:
    """Indices by decreasing score; equal scores put the later index first (a stable ascending
    sort reversed, which is what HRNet's ``argsort()[::-1]`` gives for small arrays), deterministic."""
    return np.argsort(np.asarray(scores), kind="stable")[::-1]


def oks_nms(
    keypoints: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    threshold: float = 0.9,
    sigmas: np.ndarray = OKS_SIGMAS,
) -> list[int]:
    """Greedy OKS non-maximum suppression (HRNet ``oks_nms``): take the best remaining instance,
    drop those with OKS > ``threshold`` to it, repeat. Returns the kept indices, best first."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    areas = np.asarray(areas, dtype=np.float64)
    order = score_order(scores)
    keep: list[int] = []
    while order.size > 0:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        overlap = oks_iou(keypoints[best], keypoints[rest], areas[best], areas[rest], sigmas)
        order = rest[overlap <= threshold]
    return keep


def coco_results(
    image_ids: np.ndarray,
    keypoints: np.ndarray,
    box_scores: np.ndarray,
    areas: np.ndarray,
    in_vis_thre: float = 0.2,
    oks_thre: float = 0.9,
) -> list[dict]:
    """HRNet's ``evaluate`` post-processing: COCO keypoint result entries from per-crop predictions.

    ``keypoints`` (N, K, 3) are (x, y) in image pixels and the joint score (heatmap maximum);
    ``areas`` (N,) the crop box area used by OKS-NMS (HRNet: (scale_w * 200) * (scale_h * 200));
    ``box_scores`` 1 for ground-truth boxes, the detector score otherwise. Each instance is
    rescored (``rescore`` at ``in_vis_thre``), then OKS-NMS at ``oks_thre`` runs per image.
    Entries are ``{"image_id", "category_id": 1, "keypoints": [x1, y1, s1, ...], "score"}`` (no
    ``bbox`` key, so pycocotools takes the keypoints branch), images by increasing id, within an
    image in NMS order (best first).
    """
    image_ids = np.asarray(image_ids).reshape(-1).astype(np.int64)
    keypoints = np.asarray(keypoints, dtype=np.float64)
    areas = np.asarray(areas, dtype=np.float64).reshape(-1)
    if not (len(image_ids) == len(keypoints) == len(areas) == len(np.asarray(box_scores).reshape(-1))):
        raise ValueError(
            f"coco_results: {len(image_ids)} image ids, {len(keypoints)} keypoint sets, "
            f"{np.asarray(box_scores).size} box scores and {len(areas)} areas; they must be equal"
        )
    scores = rescore(np.asarray(box_scores).reshape(-1), keypoints[..., 2], in_vis_thre)
    results: list[dict] = []
    for image_id in np.unique(image_ids):
        rows = np.flatnonzero(image_ids == image_id)
        kept = oks_nms(keypoints[rows], scores[rows], areas[rows], oks_thre)
        for i in rows[kept]:
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": 1,
                    "keypoints": [float(v) for v in keypoints[i].reshape(-1)],
                    "score": float(scores[i]),
                }
            )
    return results
