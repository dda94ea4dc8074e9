"""Pose skeleton constants and crop geometry: pose.md section 2's golden values, HRNet's rules."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from pycocotools.cocoeval import Params

from mlpbnn.pose import geometry, skeleton

SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/coco_sample"


def test_constants_match_pycocotools_and_mmpose():
    np.testing.assert_array_equal(skeleton.OKS_SIGMAS, Params(iouType="keypoints").kpt_oks_sigmas)
    np.testing.assert_array_equal(skeleton.FLIP_INDEX, [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15])
    np.testing.assert_array_equal(skeleton.FLIP_INDEX[skeleton.FLIP_INDEX], np.arange(17))
    assert tuple(range(11)) == skeleton.UPPER_BODY_IDS
    assert skeleton.JOINT_WEIGHTS.shape == (17,) and skeleton.JOINT_WEIGHTS[9] == 1.5
    for left, right in skeleton.FLIP_PAIRS:
        assert skeleton.KEYPOINT_NAMES[left].replace("left", "right") == skeleton.KEYPOINT_NAMES[right]


def test_names_and_skeleton_are_those_of_the_coco_annotation_file():
    if not SAMPLE.is_dir():
        pytest.skip(f"the COCO sample {SAMPLE} is absent (see ../shared/data/coco_sample/README.md)")
    category = json.loads((SAMPLE / "test_coco.json").read_text())["categories"][0]
    assert list(skeleton.KEYPOINT_NAMES) == category["keypoints"]
    assert [list(limb) for limb in skeleton.SKELETON] == [[a - 1, b - 1] for a, b in category["skeleton"]]


def test_clean_box_clips_and_shrinks_by_one_pixel():
    # x clipped to 0, x2 = min(W - 1, 0 + 49) = 39; y2 = 10 + 29.
    assert geometry.clean_box(-5, 10, 50, 30, image_w=40, image_h=100) == (0.0, 10.0, 39.0, 29.0)
    assert geometry.clean_box(10.5, 20.25, 30, 40, 640, 480) == (10.5, 20.25, 29.0, 39.0)
    assert geometry.clean_box(10, 10, 0.5, 0.5, 640, 480) == (10.0, 10.0, 0.0, 0.0)  # HRNet keeps it
    assert geometry.clean_box(10, 10, 5, 5, 640, 480, area=0.0) is None
    assert geometry.clean_box(700, 10, 5, 5, 640, 480) is None  # right of the image: x2 < x1


def test_box_to_center_scale_worked_example_and_wide_box():
    center, scale = geometry.box_to_center_scale((100, 50, 60, 200), 0.75)
    np.testing.assert_allclose(center, [130, 150])
    np.testing.assert_allclose(scale, [0.9375, 1.25])
    center, scale = geometry.box_to_center_scale((0, 0, 300, 100), 0.75)  # w > a h: h = w / a
    np.testing.assert_allclose(center, [150, 50])
    np.testing.assert_allclose(scale, [300 / 200 * 1.25, 400 / 200 * 1.25])


@pytest.mark.parametrize(
    ("rotation", "output_wh", "inverse", "golden"),
    [
        (0, (192, 256), False, [[1.024, 0, -37.12], [0, 1.024, -25.6]]),
        (30, (192, 256), False, [[0.88681, 0.512, -96.0853], [-0.512, 0.88681, 61.5385]]),
        (0, (48, 64), True, [[3.90625, 0, 36.25], [0, 3.90625, 25]]),
    ],
)
def test_affine_matrix_golden_values(rotation, output_wh, inverse, golden):
    center, scale = geometry.box_to_center_scale((100, 50, 60, 200), 0.75)
    matrix = geometry.affine_matrix(center, scale, rotation, output_wh, inverse=inverse)
    assert matrix.shape == (2, 3) and matrix.dtype == np.float64
    np.testing.assert_allclose(matrix, golden, atol=2e-4)


def test_affine_inverse_undoes_the_crop_and_sends_the_centre_to_the_middle():
    center, scale = np.array([321.5, 97.25]), np.array([1.3, 1.9])
    forward = geometry.affine_matrix(center, scale, -25, (192, 256))
    backward = geometry.affine_matrix(center, scale, -25, (192, 256), inverse=True)
    points = np.random.default_rng(0).uniform(0, 400, (10, 2))
    round_trip = geometry.apply_affine(geometry.apply_affine(points, forward), backward)
    np.testing.assert_allclose(round_trip, points, atol=1e-3)
    np.testing.assert_allclose(geometry.apply_affine(center[None], forward), [[96, 128]], atol=1e-4)
    # A similarity: only scale[0] sets the zoom, 192 / (1.3 * 200).
    np.testing.assert_allclose(np.linalg.det(forward[:, :2]), (192 / 260) ** 2, rtol=1e-5)


def test_warp_samples_the_image_through_the_inverse_map_with_a_zero_border():
    # A horizontal ramp (value = x) is linear, so bilinear sampling is exact inside the image.
    ramp = np.tile(np.arange(100, dtype=np.float32), (80, 1)) + 1.0
    matrix = geometry.affine_matrix((50.0, 40.0), (0.6, 0.8), 10, (48, 64))
    crop = geometry.warp(ramp, matrix, (48, 64))
    assert crop.shape == (64, 48)
    inverse = geometry.affine_matrix((50.0, 40.0), (0.6, 0.8), 10, (48, 64), inverse=True)
    grid = np.stack(np.meshgrid(np.arange(48), np.arange(64)), -1).reshape(-1, 2).astype(np.float64)
    source = geometry.apply_affine(grid, inverse)
    inside = (source[:, 0] > 1) & (source[:, 0] < 98) & (source[:, 1] > 1) & (source[:, 1] < 78)
    outside = (source[:, 0] < -1) | (source[:, 0] > 100) | (source[:, 1] < -1) | (source[:, 1] > 80)
    assert inside.sum() > 500 and outside.sum() > 100
    np.testing.assert_allclose(crop.reshape(-1)[inside], source[inside, 0] + 1.0, atol=2e-2)
    np.testing.assert_array_equal(crop.reshape(-1)[outside], 0.0)


def _seed_with_first_normal(below: bool) -> int:
    return next(s for s in range(100) if (np.random.default_rng(s).standard_normal() < 0.5) == below)


def test_half_body_picks_the_part_hrnet_picks():
    joints = np.zeros((17, 2))
    joints[:11] = np.stack([np.linspace(100, 140, 11), np.linspace(50, 110, 11)], -1)  # upper
    joints[11:] = np.stack([np.linspace(110, 130, 6), np.linspace(150, 250, 6)], -1)  # lower
    visible = np.ones(17, bool)
    visible[[0, 1, 2]] = False  # invisible joints are ignored

    rng = np.random.default_rng(_seed_with_first_normal(below=True))
    center, scale = geometry.half_body(joints, visible, 0.75, rng)
    upper = joints[3:11]
    np.testing.assert_allclose(center, upper.mean(0))
    w, h = upper.max(0) - upper.min(0)  # 28 x 42: w < 0.75 h, so w = 31.5
    np.testing.assert_allclose(scale, [0.75 * h / 200 * 1.5, h / 200 * 1.5])
    # One normal draw per call, as np.random.randn in HRNet.
    reference = np.random.default_rng(_seed_with_first_normal(below=True))
    reference.standard_normal()
    assert rng.standard_normal() == reference.standard_normal()

    center, _ = geometry.half_body(joints, visible, 0.75, np.random.default_rng(_seed_with_first_normal(below=False)))
    np.testing.assert_allclose(center, joints[11:].mean(0))

    only_two_lower = visible.copy()
    only_two_lower[13:] = False
    for below in (True, False):  # lower has 2 joints: the upper body whatever the draw
        rng = np.random.default_rng(_seed_with_first_normal(below))
        np.testing.assert_allclose(geometry.half_body(joints, only_two_lower, 0.75, rng)[0], upper.mean(0))

    few = np.zeros(17, bool)
    few[[4, 12]] = True  # one upper, one lower joint: the upper part is chosen, it has < 2
    assert geometry.half_body(joints, few, 0.75, np.random.default_rng(0)) is None


def test_to_image_coords_equals_the_inverse_affine_batched_and_in_jax():
    rng = np.random.default_rng(1)
    coords = rng.uniform(0, 48, (3, 5, 17, 2))
    centers = rng.uniform(50, 500, (3, 5, 2))
    scales = rng.uniform(0.3, 2.0, (3, 5, 2))  # not aspect-fixed: only scale[0] counts, as HRNet
    got = geometry.to_image_coords(coords, centers, scales, (48, 64))
    for i in range(3):
        for j in range(5):
            inverse = geometry.affine_matrix(centers[i, j], scales[i, j], 0, (48, 64), inverse=True)
            np.testing.assert_allclose(got[i, j], geometry.apply_affine(coords[i, j], inverse), rtol=1e-5, atol=1e-3)
    in_jax = geometry.to_image_coords(jnp.asarray(coords), jnp.asarray(centers), jnp.asarray(scales), (48, 64))
    np.testing.assert_allclose(np.asarray(in_jax), got, rtol=1e-5, atol=1e-3)
    # pose.md: x_img = c_x + (x_hm - 24) * (s_w * 200 / 48).
    one = geometry.to_image_coords([[30.0, 10.0]], [130.0, 150.0], [0.9375, 1.25], (48, 64))
    np.testing.assert_allclose(one, [[130 + 6 * 3.90625, 150 - 22 * 3.90625]])
