"""MPII's PCKh (``pose.pckh``) on generated data in MPII's exact layout (valid.json, gt_valid.mat
written by scipy's savemat as MATLAB cells and arrays, JPEGs): ground truth scores 100, perturbed
predictions score what an independent implementation of HRNet's ``MPIIDataset.evaluate`` gives,
and the edge cases (invisible joints, a person without a joint of a kind, a joint nobody shows,
ties at the threshold, HRNet's 0.11 behind 'Mean@0.1'); bad files refused naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from mlpbnn import pose
from mlpbnn.pose.pckh import LOW_THRESHOLD, PCKH_NAMES, load_ground_truth, write_predictions
from tests.utils_mpii import hrnet_pckh, write_gt, write_mpii


@pytest.fixture(scope="module")
def mpii(tmp_path_factory):
    root = tmp_path_factory.mktemp("mpii")
    return root, write_mpii(root, num_train=2, num_val=9)


def _arrays(written: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    val = written["valid"]
    return (np.array([e["joints"] for e in val], np.float64), np.array([e["joints_vis"] for e in val]),
            written["headboxes"])


def test_ground_truth_scores_100_and_perturbed_predictions_hrnets_formula(mpii):
    root, written = mpii
    joints, visible, headboxes = _arrays(written)
    gt_file = root / "annot" / "gt_valid.mat"
    assert visible.min(axis=0).min() == 0 and visible.sum(axis=0).min() > 0  # some missing, every kind seen
    perfect = pose.pckh(joints - 1, gt_file)  # valid.json's joints made 0-based
    assert list(perfect) == list(PCKH_NAMES) and all(v == 100.0 for v in perfect.values())
    rng = np.random.default_rng(0)
    for sigma in (2.0, 5.0, 9.0):
        preds = joints - 1 + rng.normal(0, sigma, joints.shape)
        preds[visible == 0] = rng.uniform(-500, 500, (int((visible == 0).sum()), 2))  # not counted anywhere
        mine, ref = pose.pckh(preds, gt_file), hrnet_pckh(preds, joints, visible, headboxes)
        for name in PCKH_NAMES:
            assert mine[name] == pytest.approx(ref[name], abs=1e-9), (sigma, name)
        assert 0 < mine["Mean"] < 100
    # A score column is ignored; the loaded ground truth gives the same numbers as the file.
    with_score = np.concatenate([preds, np.ones((*preds.shape[:2], 1))], axis=-1)
    assert pose.pckh(with_score, load_ground_truth(gt_file)) == mine


def test_edge_cases(tmp_path):
    """Person 0: its knees missing; person 1: errors exactly at the threshold (ties count) and
    just above; nobody has a visible pelvis; wrists at 0.105 head sizes count for 'Mean@0.1'."""
    n = 3
    joints = np.tile(np.arange(16, dtype=np.float64)[None, :, None] * 10 + 50, (n, 1, 2))
    visible = np.ones((n, 16), int)
    visible[0, [1, 4]] = 0      # person 0 has no knee
    visible[:, 6] = 0           # no pelvis anywhere (left out of the means as HRNet does anyway)
    headboxes = np.array([[[0.0, 0.0], [30.0, 40.0]]] * n)  # diagonal 50, head size 0.6 x 50
    head = np.linalg.norm([30.0, 40.0]) * 0.6
    write_gt(tmp_path / "gt.mat", joints, visible, headboxes)
    preds = joints - 1  # exact, then:
    preds[1, 12, 0] += 0.5 * head                               # right shoulder: exactly at 0.5 -> correct
    preds[1, 13, 0] += 0.5 * head + 1e-9                        # left shoulder: just above -> wrong
    preds[0, 1] += 1000.0                                       # an invisible knee: ignored
    preds[:, 10, 1] += 0.105 * head                              # right wrists: within 0.11, not 0.1
    got = pose.pckh(preds, tmp_path / "gt.mat")
    assert (preds[1, 12, 0] + 1 - joints[1, 12, 0]) / head == 0.5  # the tie is exact in floating point
    assert (preds[1, 13, 0] + 1 - joints[1, 13, 0]) / head > 0.5
    assert got["Shoulder"] == pytest.approx(0.5 * (100 + 200 / 3))
    assert got["Knee"] == 100.0 and got["Wrist"] == 100.0 and got["Head"] == 100.0
    assert abs(LOW_THRESHOLD - 0.11) < 1e-12  # HRNet's row 11 of np.arange(0, 0.51, 0.01)
    # Mean weights joints by visible counts without pelvis and thorax: 14 joints, knees 2 + 2 persons.
    counts = visible.sum(0).astype(float)
    keep = np.ones(16, bool)
    keep[6:8] = False
    rates = np.full(16, 100.0)
    rates[13] = 200 / 3
    assert got["Mean"] == pytest.approx(np.sum(rates[keep] * counts[keep]) / counts[keep].sum(), abs=1e-9)
    low = np.full(16, 100.0)
    low[[12, 13]] = 200 / 3  # person 1's shoulders are beyond 0.11; the wrists at 0.105 are within
    assert got["Mean@0.1"] == pytest.approx(np.sum(low[keep] * counts[keep]) / counts[keep].sum(), abs=1e-9)
    assert got == pytest.approx(hrnet_pckh(preds, joints, visible, headboxes), abs=1e-9)
    # A reported joint nobody shows: HRNet divides 0 by 0; here that part is NaN and the means skip it.
    visible[:, 9] = 0
    write_gt(tmp_path / "gt2.mat", joints, visible, headboxes)
    got = pose.pckh(preds, tmp_path / "gt2.mat")
    assert np.isnan(got["Head"]) and np.isfinite(got["Mean"])
    counts = visible.sum(0).astype(float)
    keep[9] = False
    assert got["Mean"] == pytest.approx(np.sum(rates[keep] * counts[keep]) / counts[keep].sum(), abs=1e-9)


def test_pred_mat_is_hrnets(tmp_path):
    preds = np.random.default_rng(0).uniform(0, 100, (4, 16, 3))
    write_predictions(tmp_path / "pred.mat", preds)
    np.testing.assert_array_equal(loadmat(tmp_path / "pred.mat")["preds"], preds[..., :2] + 1)


def test_bad_ground_truth_and_predictions_are_refused_by_name(tmp_path, mpii):
    root, written = mpii
    joints, visible, headboxes = _arrays(written)
    path = tmp_path / "gt.mat"
    savemat(path, {"jnt_missing": 1 - visible.T})
    with pytest.raises(ValueError, match=r"gt.mat: no dataset_joints, pos_gt_src, headboxes_src"):
        load_ground_truth(path)
    write_gt(path, joints, visible, headboxes[:5])
    with pytest.raises(ValueError, match=r"gt.mat: headboxes_src has shape 2x2x5, expected 2x2xN"):
        load_ground_truth(path)
    write_gt(path, joints, visible, headboxes, names=("a",) * 16)
    with pytest.raises(ValueError, match=r"gt.mat: dataset_joints must be MPII's 16 joint names"):
        load_ground_truth(path)
    path.write_text("not a mat file")
    with pytest.raises(ValueError, match=r"gt.mat: not a MATLAB file"):
        load_ground_truth(path)
    with pytest.raises(FileNotFoundError, match=r"absent.mat: cannot read"):
        load_ground_truth(tmp_path / "absent.mat")
    gt_file = root / "annot" / "gt_valid.mat"
    with pytest.raises(ValueError, match=r"8 predicted persons, but .*gt_valid.mat holds 9"):
        pose.pckh(joints[:8], gt_file)
    with pytest.raises(ValueError, match=r"predictions must be \(N, 16, 2\)"):
        pose.pckh(joints[:, :15], gt_file)
