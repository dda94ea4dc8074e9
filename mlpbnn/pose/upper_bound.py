"""The ceiling of the evaluation path: ground-truth heatmaps in place of the network's output.

    python -m mlpbnn.pose.upper_bound --config configs/sbpn_coco.py [--config.eval.decode=dark ...]

Every ground-truth evaluation box of the config's data goes through what the trained network's
output goes through: the crop's geometry, the Gaussian encoding of its joints (the training
targets, ``data.sigma``, ``data.unbiased_encoding``), with ``eval.flip_test`` also the encoding of
the mirrored crop flipped back (and shifted by one pixel with ``eval.shift_heatmap``), averaged,
decoded (``eval.decode``), mapped back to image pixels, rescored, OKS-NMS'd and scored by
pycocotools' COCOeval; on MPII (``data.name = 'mpii'``) put in ``valid.json``'s order and scored
by PCKh against ``gt_valid.mat`` (``mlpbnn.pose.pckh``), as the keypoints task's evaluator does.
Prints one JSON object: the ten stats (COCO) or ``PCKh`` and HRNet's nine numbers (MPII), the
mean joint error in image pixels over the labelled joints, and the settings. A network cannot
beat these numbers with this codec, and anything below 1.0 (100 for PCKh) without flip is the
codec's quantisation, nothing else.

Detector boxes have no ground-truth joints of their own, so the bound is of ground-truth boxes.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

from mlpbnn.pose import codec, geometry, postprocess
from mlpbnn.pose.evaluate import STAT_NAMES, evaluate
from mlpbnn.pose.pckh import PCKH_NAMES, pckh


def crop_targets(records: Any, crop: Any, flipped: bool = False) -> np.ndarray:
    """The encoded ground truth (N, h, w, K) of every record's evaluation crop (rotation 0), or of
    the mirrored crop (``flipped``: x -> W - 1 - x in the crop, left and right swapped by
    ``crop.skeleton``), as the network would see the mirrored pixels."""
    out = []
    width = crop.image_size[1]
    for i in range(len(records)):
        matrix = geometry.affine_matrix(records.center[i], records.scale[i], 0.0, crop.size_wh)
        joints = geometry.apply_affine(records.joints[i].astype(np.float64), matrix)
        visible = records.visible[i].astype(np.float64).copy()
        if flipped:
            joints[:, 0] = width - 1 - joints[:, 0]
            for a, b in crop.skeleton.flip_pairs:
                joints[[a, b]] = joints[[b, a]]
                visible[[a, b]] = visible[[b, a]]
        heatmaps, _ = codec.encode(joints, visible, crop.image_size, crop.heatmap_size, crop.sigma,
                                   unbiased=crop.unbiased)
        out.append(heatmaps)
    return np.stack(out) if out else np.zeros((0, *crop.heatmap_size, crop.skeleton.num_joints), np.float32)


def upper_bound(dataset: Any, decode: str = "quarter", flip_test: bool = False, shift_heatmap: bool = True,
                blur_kernel: int = 11, in_vis_thre: float = 0.2, oks_thre: float = 0.9) -> dict[str, Any]:
    """The ten stats (COCO) or ``PCKh`` and the nine PCKh numbers (MPII) and the mean joint error
    (image pixels) of ground-truth heatmaps on the ground-truth boxes of ``dataset`` (a
    ``mlpbnn.data.coco.CocoKeypoints`` or ``mlpbnn.data.mpii.MpiiKeypoints``)."""
    mpii = dataset.benchmark == "pckh"
    records, crop = (dataset.eval_records if mpii else dataset.box_records["gt"]), dataset.crop
    heatmaps = crop_targets(records, crop)
    if flip_test:
        mirrored = crop_targets(records, crop, flipped=True)
        heatmaps = np.asarray(codec.flip_average(heatmaps, mirrored, shift=shift_heatmap,
                                                 flip_index=crop.skeleton.flip_index))
    coords, maxvals = (np.asarray(a, np.float64) for a in codec.decode(heatmaps, decode, blur_kernel))
    xy = geometry.to_image_coords(coords, records.center, records.scale, (crop.heatmap_size[1], crop.heatmap_size[0]))
    labelled = records.visible > 0
    error = np.linalg.norm(xy - records.joints, axis=-1)[labelled]
    if mpii:  # the records are valid.json's persons in its order (image_id = the index)
        values = pckh(xy, dataset.pckh_gt)
        stats = {"PCKh": values["Mean"], **{k: values[k] for k in PCKH_NAMES}}
    else:
        keypoints = np.concatenate([xy, maxvals[..., None]], axis=-1)
        results = postprocess.coco_results(records.image_id, keypoints, records.score, records.area, in_vis_thre,
                                           oks_thre)
        values = evaluate(dataset.val_coco, results)
        stats = {k: values[k] for k in STAT_NAMES}
    return {**stats, "mean_joint_error_px": float(error.mean()) if error.size else 0.0,
            "boxes": len(records), "joints": int(labelled.sum()), "decode": decode, "flip_test": flip_test,
            "shift_heatmap": shift_heatmap, "image_size": list(crop.image_size),
            "heatmap_size": list(crop.heatmap_size), "sigma": crop.sigma, "unbiased_encoding": crop.unbiased}


def main(argv: list[str]) -> None:
    from absl import app, flags, logging
    from ml_collections import config_flags

    logging.set_verbosity(logging.WARNING)  # jax's backend probing at INFO would precede the JSON

    config_flags.DEFINE_config_file("config", None, "A pose config (configs/*_coco.py, configs/*_mpii.py, "
                                    "configs/pose_synthetic.py).",
                                    lock_config=True)
    flags.mark_flags_as_required(["config"])

    def run(args: list[str]) -> None:
        if len(args) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(args[1:])}")
        from mlpbnn import data
        from mlpbnn.data.coco import TopDownKeypoints
        from mlpbnn.pose.eval_config import PoseEvalConfig
        from mlpbnn.registry import from_section

        config = flags.FLAGS.config
        try:
            ev = from_section(PoseEvalConfig, config.get("eval"), "eval")
            dataset = data.create(config.data, config.seed)
            if not isinstance(dataset, TopDownKeypoints):
                raise ValueError(f"data.name {config.data.name!r} is not a keypoints dataset")
            result = upper_bound(dataset, ev.decode, ev.flip_test, ev.shift_heatmap, ev.blur_kernel, ev.in_vis_thre,
                                 ev.oks_thre)
        except (ValueError, OSError) as e:
            sys.exit(f"error: {e}")
        print(json.dumps(result, indent=2))

    app.run(run, argv)


if __name__ == "__main__":
    main(sys.argv)
