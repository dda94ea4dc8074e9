"""Heatmap codec: HRNet's targets at the edges, pose.md section 3's golden decodes, decoding against
loop references written here (numpy, cv2.GaussianBlur for DARK), and the flip test."""

from __future__ import annotations

import cv2
import jax
import numpy as np
import pytest

from mlpbnn.pose import codec
from mlpbnn.pose.skeleton import FLIP_PAIRS

IMAGE_HW, HEATMAP_HW = (256, 192), (64, 48)


def _gaussian(width: int, height: int, cx: float, cy: float, sigma: float = 2.0) -> np.ndarray:
    x, y = np.arange(width), np.arange(height)[:, None]
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2)).astype(np.float32)


def _encode_one(x: float, y: float, visible: float = 1.0, **kwargs) -> tuple[np.ndarray, float]:
    heatmaps, weights = codec.encode(np.array([[x, y]]), np.array([visible]), IMAGE_HW, HEATMAP_HW, **kwargs)
    assert heatmaps.shape == (64, 48, 1) and heatmaps.dtype == np.float32 and weights.dtype == np.float32
    return heatmaps[..., 0], float(weights[0])


def test_encode_pastes_the_13x13_window_at_the_rounded_position():
    heatmap, weight = _encode_one(80.3, 121.9)  # /4 + 0.5 -> int(20.575) = 20, int(30.975) = 30
    assert weight == 1.0
    assert heatmap[30, 20] == 1.0 and np.unravel_index(heatmap.argmax(), heatmap.shape) == (30, 20)
    window = _gaussian(13, 13, 6, 6)
    np.testing.assert_allclose(heatmap[24:37, 14:27], window, rtol=1e-6)
    assert heatmap.sum() == pytest.approx(window.sum(), rel=1e-6)  # nothing outside the window
    # Two joints of one instance: separate channels, the second invisible -> weight 0, empty map.
    heatmaps, weights = codec.encode(np.array([[80.3, 121.9], [50, 50]]), np.array([2, 0]), IMAGE_HW, HEATMAP_HW)
    np.testing.assert_array_equal(weights, [1, 0])
    assert heatmaps[..., 1].max() == 0 and heatmaps[..., 0].max() == 1


def test_encode_edges_follow_hrnet():
    # Python int truncates toward zero: x / 4 + 0.5 = -0.25 gives column 0, not -1.
    heatmap, weight = _encode_one(-3.0, 100.0)
    assert weight == 1.0 and heatmap[25, 0] == 1.0
    # mu = -7: window [-13, 0) is outside, but br = 0 is not < 0, so HRNet keeps weight 1 (empty map).
    heatmap, weight = _encode_one(-30.0, 100.0)
    assert weight == 1.0 and heatmap.max() == 0
    heatmap, weight = _encode_one(-34.1, 100.0)  # int(-8.025) = -8: br = -1 < 0 -> weight 0
    assert weight == 0.0 and heatmap.max() == 0
    # Far edge: mu = 53 -> ul 47 (last column), part of the window shows; mu = 54 -> ul 48 -> weight 0.
    heatmap, weight = _encode_one(53 * 4.0, 100.0)
    assert weight == 1.0 and heatmap[25, 47] == pytest.approx(np.exp(-36 / 8))
    heatmap, weight = _encode_one(54 * 4.0, 100.0)
    assert weight == 0.0 and heatmap.max() == 0
    heatmap, weight = _encode_one(100.0, 64 * 4 + 30.0)  # below the map (mu_y = 72 > 63 + 6)
    assert weight == 0.0 and heatmap.max() == 0


def test_unbiased_encode_is_a_full_map_gaussian_that_dark_recovers_exactly():
    heatmap, weight = _encode_one(81.2, 122.8, unbiased=True)  # heatmap position (20.3, 30.7)
    assert weight == 1.0
    np.testing.assert_allclose(heatmap, _gaussian(48, 64, 20.3, 30.7), rtol=1e-5, atol=1e-7)
    coords, _ = codec.decode(heatmap[..., None], mode="dark", blur_kernel=None)
    np.testing.assert_allclose(np.asarray(coords)[0], [20.3, 30.7], atol=2e-4)
    _, weight = _encode_one(-30.0, 100.0, unbiased=True)  # -7.5 + 7 < 0: outside
    assert weight == 0.0


def test_golden_decodes():
    heatmap = _gaussian(48, 64, 20.3, 30.7)[..., None]
    expected = {
        ("argmax", 11): (20, 31),
        ("quarter", 11): (20.25, 30.75),
        ("dark", 11): (20.2998, 30.7002),
        ("dark", None): (20.3000, 30.7000),
    }
    for (mode, kernel), golden in expected.items():
        coords, maxvals = codec.decode(heatmap, mode=mode, blur_kernel=kernel)
        assert coords.shape == (1, 2) and coords.dtype == np.float32
        np.testing.assert_allclose(np.asarray(coords)[0], golden, atol=1e-4, err_msg=f"{mode} {kernel}")
        np.testing.assert_allclose(np.asarray(maxvals), [heatmap.max()])


def _reference_max_preds(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # HRNet get_max_preds on (K, H, W) maps.
    flat = maps.reshape(len(maps), -1)
    index, maxvals = flat.argmax(1), flat.max(1)
    coords = np.stack([index % maps.shape[2], index // maps.shape[2]], 1).astype(np.float64)
    return coords * (maxvals > 0)[:, None], maxvals


def _reference_quarter(maps: np.ndarray) -> np.ndarray:
    coords, _ = _reference_max_preds(maps)
    height, width = maps.shape[1:]
    for k, hm in enumerate(maps):
        px, py = int(np.floor(coords[k, 0] + 0.5)), int(np.floor(coords[k, 1] + 0.5))
        if 1 < px < width - 1 and 1 < py < height - 1:
            diff = np.array([hm[py][px + 1] - hm[py][px - 1], hm[py + 1][px] - hm[py - 1][px]])
            coords[k] += np.sign(diff) * 0.25
    return coords


def _reference_dark(maps: np.ndarray, kernel: int) -> np.ndarray:
    coords, _ = _reference_max_preds(maps)
    border = (kernel - 1) // 2
    height, width = maps.shape[1:]
    logs = np.empty_like(maps)
    for k, hm in enumerate(maps):
        padded = np.zeros((height + 2 * border, width + 2 * border), np.float32)
        padded[border:-border, border:-border] = hm
        blurred = cv2.GaussianBlur(padded, (kernel, kernel), 0)[border:-border, border:-border]
        logs[k] = np.log(np.maximum(blurred * (hm.max() / blurred.max()), 1e-10))
    for k, hm in enumerate(logs):
        x, y = int(coords[k, 0]), int(coords[k, 1])
        if 1 < x < width - 2 and 1 < y < height - 2:
            gradient = np.array([0.5 * (hm[y, x + 1] - hm[y, x - 1]), 0.5 * (hm[y + 1, x] - hm[y - 1, x])])
            dxx = 0.25 * (hm[y, x + 2] - 2 * hm[y, x] + hm[y, x - 2])
            dyy = 0.25 * (hm[y + 2, x] - 2 * hm[y, x] + hm[y - 2, x])
            dxy = 0.25 * (hm[y + 1, x + 1] - hm[y - 1, x + 1] - hm[y + 1, x - 1] + hm[y - 1, x - 1])
            hessian = np.array([[dxx, dxy], [dxy, dyy]], np.float64)
            if dxx * dyy - dxy**2 != 0:
                coords[k] -= np.linalg.inv(hessian) @ gradient
    return coords


def _random_heatmaps(rng: np.random.Generator, batch: int, height: int, width: int, joints: int) -> np.ndarray:
    # Blobs anywhere (border cases included) on noise; a few all-negative maps (coords zeroed).
    maps = rng.normal(0, 0.02, (batch, joints, height, width)).astype(np.float32)
    for b in range(batch):
        for k in range(joints):
            cx, cy = rng.uniform(-1, width), rng.uniform(-1, height)
            maps[b, k] += rng.uniform(0.3, 1.0) * _gaussian(width, height, cx, cy, rng.uniform(1.0, 3.0))
    maps[0, :3] = -np.abs(maps[0, :3]) - 0.01
    return maps


def test_quarter_and_dark_decode_equal_the_loop_references():
    rng = np.random.default_rng(0)
    maps = _random_heatmaps(rng, 3, 16, 12, 17)  # (B, K, H, W)
    heatmaps = maps.transpose(0, 2, 3, 1)  # channels last, as mlpbnn keeps them
    coords, maxvals = codec.decode(heatmaps, mode="quarter")
    assert coords.shape == (3, 17, 2) and maxvals.shape == (3, 17)
    for b in range(3):
        np.testing.assert_allclose(np.asarray(coords[b]), _reference_quarter(maps[b]), atol=1e-6)
        np.testing.assert_allclose(np.asarray(maxvals[b]), maps[b].reshape(17, -1).max(1))
    positive = np.abs(maps)  # DARK takes the log: non-negative maps (negative ones clamp to 1e-10 alike)
    for kernel in (11, 5):  # 5: OpenCV's fixed table
        coords, _ = codec.decode(positive.transpose(0, 2, 3, 1), mode="dark", blur_kernel=kernel)
        coords = np.asarray(coords)
        reference = np.stack([_reference_dark(positive[b], kernel) for b in range(3)])
        np.testing.assert_allclose(coords, reference, atol=1e-4, err_msg=f"kernel {kernel}")
        stepped = (np.abs(coords - np.round(coords)) > 1e-3).any(-1)
        assert 10 < stepped.sum() < stepped.size  # both the Taylor step and the border rule happen


def test_decode_is_jittable_and_keeps_leading_axes():
    heatmaps = np.abs(_random_heatmaps(np.random.default_rng(1), 4, 16, 12, 17)).transpose(0, 2, 3, 1)
    stacked = heatmaps.reshape(2, 2, 16, 12, 17)
    inside = jax.jit(lambda h: codec.decode(h, mode="dark"))(stacked)
    outside = codec.decode(heatmaps, mode="dark")
    assert inside[0].shape == (2, 2, 17, 2)
    np.testing.assert_allclose(np.asarray(inside[0]).reshape(4, 17, 2), np.asarray(outside[0]), atol=1e-5)
    with pytest.raises(ValueError, match="unknown decode mode"):
        codec.decode(heatmaps, mode="udp")


def test_blur_kernel_is_opencvs_gaussian():
    # sigma = 0.3 ((K - 1) / 2 - 1) + 0.8: 2 for K = 11 (pose.md section 3), 2.9 for K = 17.
    for size, sigma in ((11, 2.0), (17, 2.9)):
        x = np.arange(size) - size // 2
        expected = np.exp(-(x**2) / (2 * sigma**2))
        np.testing.assert_allclose(codec.opencv_gaussian_kernel(size), expected / expected.sum(), rtol=1e-12)
    np.testing.assert_allclose(codec.opencv_gaussian_kernel(5), np.array([1, 4, 6, 4, 1]) / 16)  # OpenCV's table
    with pytest.raises(ValueError, match="odd"):
        codec.opencv_gaussian_kernel(4)


def test_flip_back_brings_the_heatmaps_of_the_mirrored_crop_home():
    rng = np.random.default_rng(2)
    hm_x = rng.integers(0, 48, 17)
    hm_y = rng.integers(0, 64, 17)
    original, _ = codec.encode(np.stack([hm_x * 4.0, hm_y * 4.0], 1), np.ones(17), IMAGE_HW, HEATMAP_HW)
    # The mirrored crop: heatmap column x -> W - 1 - x, left and right joints trade places.
    mirrored_x = 47 - hm_x
    mirrored_y = hm_y.copy()
    for a, b in FLIP_PAIRS:
        mirrored_x[[a, b]] = mirrored_x[[b, a]]
        mirrored_y[[a, b]] = mirrored_y[[b, a]]
    mirrored, _ = codec.encode(np.stack([mirrored_x * 4.0, mirrored_y * 4.0], 1), np.ones(17), IMAGE_HW, HEATMAP_HW)
    np.testing.assert_array_equal(np.asarray(codec.flip_back(mirrored)), original)
    np.testing.assert_array_equal(np.asarray(codec.flip_back(codec.flip_back(original))), original)


def test_flip_average_with_hrnets_one_pixel_shift():
    rng = np.random.default_rng(3)
    heatmaps = rng.normal(size=(2, 8, 6, 17)).astype(np.float32)
    flipped = rng.normal(size=(2, 8, 6, 17)).astype(np.float32)
    # HRNet's NCHW code: flip_back, then outf[:, :, :, 1:] = outf[:, :, :, 0:-1].
    outf = flipped.transpose(0, 3, 1, 2)[..., ::-1].copy()
    for a, b in FLIP_PAIRS:
        outf[:, [a, b]] = outf[:, [b, a]]
    plain = (heatmaps + outf.transpose(0, 2, 3, 1)) / 2
    outf[:, :, :, 1:] = outf.copy()[:, :, :, 0:-1]
    shifted = (heatmaps + outf.transpose(0, 2, 3, 1)) / 2
    np.testing.assert_allclose(np.asarray(codec.flip_average(heatmaps, flipped)), shifted, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(codec.flip_average(heatmaps, flipped, shift=False)), plain, rtol=1e-6)
