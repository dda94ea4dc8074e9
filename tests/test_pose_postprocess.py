"""Rescoring, OKS and OKS-NMS (against a brute-force reference written here), COCO result entries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlpbnn.pose import postprocess
from mlpbnn.pose.skeleton import OKS_SIGMAS

SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/coco_sample"


def _sample_instances() -> list[dict]:
    if not SAMPLE.is_dir():
        pytest.skip(f"the COCO sample {SAMPLE} is absent (see ../shared/data/coco_sample/README.md)")
    annotations = json.loads((SAMPLE / "test_coco.json").read_text())["annotations"]
    return [a for a in annotations if a["num_keypoints"] > 0]


def test_rescore_is_box_score_times_mean_confident_joint_score():
    maxvals = np.array([[0.9, 0.1, 0.5, 0.2], [0.1, 0.2, 0.0, 0.15], [0.3, 0.3, 0.3, 0.3]])
    scores = postprocess.rescore(np.array([0.5, 1.0, 2.0]), maxvals, threshold=0.2)
    np.testing.assert_allclose(scores, [0.5 * 0.7, 0.0, 2.0 * 0.3])  # 0.2 is not above 0.2


def test_oks_iou_formula_on_one_moved_joint():
    base = np.random.default_rng(0).uniform(0, 100, (17, 3))
    other = base.copy()
    other[5, :2] += (3.0, 4.0)  # distance 5 on the left shoulder
    area_a, area_b = 900.0, 1100.0
    e = 25.0 / (2 * OKS_SIGMAS[5]) ** 2 / ((area_a + area_b) / 2 + np.spacing(1)) / 2
    got = postprocess.oks_iou(base, other[None], area_a, np.array([area_b]))
    np.testing.assert_allclose(got, [(16 + np.exp(-e)) / 17])
    assert postprocess.oks_iou(base, base[None], area_a, np.array([area_a]))[0] == pytest.approx(1.0)


def _brute_force_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, threshold: float) -> list[int]:
    # Visit in decreasing score; a survivor is kept and suppresses every later one whose OKS to it
    # is above the threshold. OKS written out per pair, joint by joint.
    variances = (2 * OKS_SIGMAS) ** 2
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    suppressed, keep = set(), []
    for position, i in enumerate(order):
        if i in suppressed:
            continue
        keep.append(i)
        for j in order[position + 1 :]:
            total = 0.0
            for k in range(17):
                d2 = (keypoints[i, k, 0] - keypoints[j, k, 0]) ** 2 + (keypoints[i, k, 1] - keypoints[j, k, 1]) ** 2
                total += np.exp(-d2 / variances[k] / ((areas[i] + areas[j]) / 2 + np.spacing(1)) / 2)
            if total / 17 > threshold:
                suppressed.add(j)
    return keep


def test_oks_nms_equals_the_brute_force_reference():
    rng = np.random.default_rng(0)
    suppressed = kept = 0
    for trial in range(20):
        # A few people, each predicted several times with small jitter (the duplicates NMS removes).
        people = rng.uniform(0, 300, (rng.integers(1, 4), 17, 2))
        copies = rng.integers(0, len(people), rng.integers(2, 12))
        jitter = rng.normal(0, rng.choice([0.5, 2.0, 6.0]), (len(copies), 17, 2))
        keypoints = np.concatenate([people[copies] + jitter, rng.uniform(0, 1, (len(copies), 17, 1))], -1)
        scores = rng.permutation(len(copies)) + rng.uniform(0, 0.5, len(copies))  # distinct
        areas = rng.uniform(2000, 20000, len(copies))
        for threshold in (0.5, 0.9):
            got = postprocess.oks_nms(keypoints, scores, areas, threshold)
            assert got == _brute_force_nms(keypoints, scores, areas, threshold), (trial, threshold)
            kept += len(got)
            suppressed += len(copies) - len(got)
    assert suppressed > 20 and kept > 40  # the cases are not all-kept or all-suppressed
    assert postprocess.oks_nms(np.zeros((0, 17, 3)), np.zeros(0), np.zeros(0)) == []


def test_equal_scores_keep_the_later_instance_first():
    keypoints = np.zeros((3, 17, 3))
    keypoints[2, :, :2] = 500.0  # far from the other two, which coincide
    kept = postprocess.oks_nms(keypoints, np.array([1.0, 1.0, 1.0]), np.full(3, 1000.0))
    assert kept == [2, 1]


def test_coco_results_rescores_and_suppresses_per_image():
    rng = np.random.default_rng(1)
    person = rng.uniform(50, 250, (17, 2))
    keypoints = np.zeros((4, 17, 3))
    keypoints[:, :, :2] = person
    keypoints[1, :, :2] += 0.5  # a duplicate of instance 0 in image 7 (OKS ~ 1)
    keypoints[:, :, 2] = [[0.9] * 17, [0.8] * 17, [0.1] * 16 + [0.6], [0.5] * 17]
    image_ids = np.array([7, 7, 3, 7])
    keypoints[3, :, :2] += 200.0  # another person in image 7: kept
    results = postprocess.coco_results(image_ids, keypoints, np.array([1.0, 1.0, 0.5, 0.8]), np.full(4, 5e4))
    assert [r["image_id"] for r in results] == [3, 7, 7]  # images by id; duplicate 1 suppressed
    assert [r["score"] for r in results] == pytest.approx([0.5 * 0.6, 0.9, 0.8 * 0.5])
    assert set(results[0]) == {"image_id", "category_id", "keypoints", "score"}
    assert results[0]["category_id"] == 1 and len(results[0]["keypoints"]) == 51
    np.testing.assert_allclose(results[1]["keypoints"], keypoints[0].reshape(-1))
    json.dumps(results)  # plain Python numbers
    with pytest.raises(ValueError, match="must be equal"):
        postprocess.coco_results(image_ids[:3], keypoints, np.ones(4), np.ones(4))


def test_coco_results_on_the_real_sample_keep_every_person():
    instances = _sample_instances()
    keypoints = np.array([a["keypoints"] for a in instances], float).reshape(-1, 17, 3)
    keypoints[..., 2] = 1.0
    areas = np.array([a["bbox"][2] * a["bbox"][3] for a in instances])
    image_ids = np.array([a["image_id"] for a in instances])
    results = postprocess.coco_results(image_ids, keypoints, np.ones(len(instances)), areas)
    assert len(results) == len(instances) == 12
    assert [r["image_id"] for r in results] == sorted(image_ids.tolist())
