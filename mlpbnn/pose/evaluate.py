"""COCO keypoint AP/AR with pycocotools' COCOeval, nothing re-implemented.

The call is HRNet's ``lib/dataset/coco.py:_do_python_keypoint_eval``: ``COCOeval(gt, gt.loadRes(results),
'keypoints')`` with ``params.useSegm = None``, then evaluate, accumulate, summarize (printing
silenced). The ten stats keep pycocotools' order and meaning (maxDets 20; no small-area bucket);
pycocotools reports -1 for a stat without ground truth (e.g. no medium-sized person).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def load_ground_truth(ann_file: str | Path | COCO) -> COCO:
    """A pycocotools COCO object from a path (its loading messages silenced), or the object itself."""
    if isinstance(ann_file, COCO):
        return ann_file
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann_file))


def evaluate(ann_file: str | Path | COCO, results: list[dict] | str | Path) -> dict[str, float]:
    """The ten COCO keypoint stats (AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl) of ``results``.

    ``results`` is a list of COCO keypoint result entries (``coco_results``) or a JSON file of one;
    it is not modified. An empty list gives zeros. A result whose ``image_id`` is not among the
    ground truth's images is a ValueError naming it (pycocotools would only fail an assert).
    """
    gt = load_ground_truth(ann_file)
    if isinstance(results, str | Path):
        results = json.loads(Path(results).read_text())
    if not results:
        return dict.fromkeys(STAT_NAMES, 0.0)
    known = set(gt.getImgIds())
    unknown = sorted({r["image_id"] for r in results} - known)
    if unknown:
        source = ann_file if isinstance(ann_file, str | Path) else "the ground truth"
        raise ValueError(
            f"result image_id {unknown[0]} is not in {source} ({len(unknown)} unknown image id(s): {unknown[:5]})"
        )
    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes writes area, bbox and id into the entries it is given: hand it copies.
        detections = gt.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(gt, detections, "keypoints")
        evaluator.params.useSegm = None
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats, strict=True)}
