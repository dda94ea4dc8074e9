"""The COCOeval wrapper on the real COCO sample, against pycocotools called directly."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mlpbnn.pose import evaluate
from mlpbnn.pose.evaluate import STAT_NAMES

SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/coco_sample"
ANNOTATIONS = SAMPLE / "test_coco.json"

pytestmark = pytest.mark.skipif(
    not SAMPLE.is_dir(), reason=f"the COCO sample {SAMPLE} is absent (see ../shared/data/coco_sample/README.md)"
)


def _ground_truth_results() -> list[dict]:
    annotations = json.loads(ANNOTATIONS.read_text())["annotations"]
    return [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": list(a["keypoints"]), "score": 1.0}
        for a in annotations
        if a["num_keypoints"] > 0
    ]


def _perturbed_results() -> list[dict]:
    rng = np.random.default_rng(0)
    results = []
    for entry in _ground_truth_results():
        if rng.uniform() < 0.2:
            continue  # a missed person
        keypoints = np.array(entry["keypoints"], float).reshape(17, 3)
        keypoints[:, :2] += rng.normal(0, rng.choice([1.0, 4.0, 12.0]), (17, 2))
        keypoints[:, 2] = rng.uniform(0.1, 1.0, 17)
        results.append({**entry, "keypoints": keypoints.ravel().tolist(), "score": float(rng.uniform(0.3, 1))})
        if rng.uniform() < 0.3:  # a poor duplicate: a false positive
            keypoints[:, :2] += rng.normal(0, 30.0, (17, 2))
            results.append({**entry, "keypoints": keypoints.ravel().tolist(), "score": float(rng.uniform(0, 1))})
    return results


def _pycocotools_stats(results: list[dict]) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ANNOTATIONS))
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "keypoints")
        evaluator.params.useSegm = None
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def test_ground_truth_scores_one_everywhere_and_prints_nothing(capsys):
    stats = evaluate(ANNOTATIONS, _ground_truth_results())
    assert list(stats) == list(STAT_NAMES) == ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]
    assert stats == dict.fromkeys(STAT_NAMES, 1.0)
    assert capsys.readouterr().out == ""


def test_perturbed_predictions_give_exactly_what_pycocotools_gives(tmp_path):
    results = _perturbed_results()
    before = copy.deepcopy(results)
    expected = _pycocotools_stats(results)
    stats = evaluate(str(ANNOTATIONS), results)
    assert list(stats.values()) == expected
    assert 0.1 < stats["AP"] < 0.95  # a real test: neither perfect nor empty
    assert results == before  # loadRes's additions were made on a copy
    # A result file and a COCO object work the same.
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ANNOTATIONS))
    assert evaluate(gt, path) == stats


def test_empty_results_give_zeros_and_unknown_images_are_named():
    assert evaluate(ANNOTATIONS, []) == dict.fromkeys(STAT_NAMES, 0.0)
    results = _ground_truth_results()
    results[3] = {**results[3], "image_id": 123456}
    with pytest.raises(ValueError, match="image_id 123456 is not in") as error:
        evaluate(ANNOTATIONS, results)
    assert "\n" not in str(error.value)
