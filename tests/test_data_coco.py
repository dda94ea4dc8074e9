"""COCO keypoints pipeline on the real sample (../shared/data/coco_sample) and on generated data:
records as HRNet builds them, exact and position-addressed batches, crops whose targets sit on the
joints they name (flip included), and bad input refused by name before training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from mlpbnn.data import coco, synthetic_pose
from mlpbnn.pose import codec
from mlpbnn.pose.skeleton import FLIP_INDEX

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_sample"
needs_sample = pytest.mark.skipif(not (SAMPLE / "test_coco.json").is_file(),
                                  reason=f"the real COCO sample is not at {SAMPLE}")


def sample_config(**overrides) -> ml_collections.ConfigDict:
    ann = str(SAMPLE / "test_coco.json")
    c = ml_collections.ConfigDict({"name": "coco", "train_ann": ann, "val_ann": ann, "train_images": str(SAMPLE),
                                   "val_images": str(SAMPLE), "det_file": str(SAMPLE / "test_coco_det_AP_H_56.json"),
                                   "image_size": (64, 48), "workers": 0})
    c.update(overrides)
    return c


@needs_sample
def test_records_follow_hrnet_on_the_real_sample():
    ds = coco.CocoKeypoints.from_config(sample_config(), 0)
    raw = json.loads((SAMPLE / "test_coco.json").read_text())
    labelled = [a for a in raw["annotations"] if max(a["keypoints"]) > 0]
    assert ds.train_size == ds.eval_size == len(labelled) == 12
    assert len(ds.box_records["det"]) == 118 and ds.eval_set("det").eval_size == 118
    r = ds.train_records
    first = min(labelled, key=lambda a: (a["image_id"], a["id"]))
    k = np.asarray(first["keypoints"], np.float64).reshape(17, 3)
    np.testing.assert_array_equal(r.joints[0], k[:, :2])
    np.testing.assert_array_equal(r.visible[0], np.minimum(k[:, 2], 1))
    x, y, w, h = first["bbox"]  # sanitised (w - 1), aspect 0.75, x1.25, pixel_std 200
    w, h = max(0, w - 1), max(0, h - 1)
    np.testing.assert_allclose(r.center[0], [x + w / 2, y + h / 2])
    np.testing.assert_allclose(r.scale[0], np.array([max(w, h * 0.75), max(h, w / 0.75)]) / 200 * 1.25)
    assert np.all(r.score == 1) and np.all(ds.box_records["det"].score <= 1)


@needs_sample
def test_eval_batches_cover_every_box_once_padded_and_masked():
    ds = coco.CocoKeypoints.from_config(sample_config(), 0).eval_set("det")
    seen = []
    for pi in range(2):  # two processes' rows of every global batch of 32
        for batch in ds.eval_batches(32, pi, 2):
            assert batch["images"].shape == (16, 64, 48, 3)
            real = batch["mask"] > 0
            seen += [tuple(c) for c in batch["host"]["center"][real]]
            assert np.all(batch["images"][~real] == 0)
    assert len(seen) == 118 and sorted(seen) == sorted(tuple(c) for c in ds.eval_records.center)


@needs_sample
def test_train_batches_are_addressed_by_position_and_split_by_process():
    ds = coco.CocoKeypoints.from_config(sample_config(), 0)
    stream = ds.train_batches(0, 8)
    first, pos = next(stream)
    second, _ = next(stream)
    assert pos == 8
    resumed, _ = next(ds.train_batches(8, 8))  # a resumed run starts on exactly the next batch
    for key in ("images", "heatmaps", "target_weight"):
        np.testing.assert_array_equal(second[key], resumed[key])
        halves = [next(ds.train_batches(0, 8, pi, 2))[0][key] for pi in range(2)]
        np.testing.assert_array_equal(np.concatenate(halves), first[key])
    assert first["heatmaps"].shape == (8, 16, 12, 17) and first["target_weight"].shape == (8, 17)
    assert not np.array_equal(first["images"], second["images"])


@pytest.mark.slow
@needs_sample
def test_worker_processes_give_the_same_batches():
    a = coco.CocoKeypoints.from_config(sample_config(), 0)
    b = coco.CocoKeypoints.from_config(sample_config(workers=2), 0)
    for (x, _), (y, _), _ in zip(a.train_batches(4, 8), b.train_batches(4, 8), range(3), strict=False):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def _marked_image() -> tuple[np.ndarray, np.ndarray]:
    """An image with joint j marked by a 21 x 21 square of colour (10 j + 40, 255 - 10 j, 128), the
    joints on a shuffled 5 x 4 grid."""
    cells = np.random.default_rng(0).permutation(20)[:17]
    joints = np.stack([20 + (cells % 5) * 40, 30 + (cells // 5) * 55], axis=1).astype(np.float64)
    image = np.zeros((260, 200, 3), np.uint8)
    for j, (x, y) in enumerate(joints.astype(int)):
        image[y - 10:y + 11, x - 10:x + 11] = (10 * j + 40, 255 - 10 * j, 128)
    return image, joints


def test_targets_sit_on_the_joints_they_name_through_every_augmentation():
    """Half body, scale, rotation and flip: each joint's target peak lands on that joint's
    marker, or, in flipped examples, on its left/right twin's (HRNet swaps the labels)."""
    image, joints = _marked_image()
    crop = coco.Crop(image_size=(256, 192), heatmap_size=(64, 48), seed=3)
    center, scale = np.array([100.0, 130.0]), np.array([1.1, 1.1 / 0.75])
    flips = set()
    for position in range(24):
        pixels, heatmaps, weights = crop.train_example(image, joints, np.ones(17), center, scale, position)
        coords, maxvals = codec.decode(heatmaps, "quarter")
        colour = {}
        for j in np.flatnonzero((weights > 0) & (np.asarray(maxvals) == 1)):  # the peak itself inside the map
            x, y = np.clip(np.round(np.asarray(coords[j]) * 4).astype(int), 0, [191, 255])
            colour[j] = int(pixels[y, x, 0])
        identity = all(c == 10 * j + 40 for j, c in colour.items())
        swapped = all(c == 10 * FLIP_INDEX[j] + 40 for j, c in colour.items())
        assert identity or swapped, (position, colour)
        if len(colour) > 4:
            flips.add(swapped and not identity)
    assert flips == {True, False}  # both kinds of example were seen


def test_plain_crop_targets_decode_to_the_joints():
    image, joints = _marked_image()
    crop = coco.Crop(image_size=(256, 192), heatmap_size=(64, 48), flip=False, scale_factor=0.0, rot_factor=0.0,
                     half_body_prob=0.0)
    center, scale = np.array([100.0, 130.0]), np.array([192 / 200, 256 / 200])  # 1:1 pixels
    _, heatmaps, weights = crop.train_example(image, joints, np.ones(17), center, scale, 0)
    coords, _ = codec.decode(heatmaps, "quarter")
    inside = weights > 0
    expected = (joints - center + [96, 128]) / 4
    assert np.abs(np.asarray(coords)[inside] - expected[inside]).max() <= 0.5


def test_generated_pose_data_is_deterministic_and_in_coco_format():
    a, b = synthetic_pose.annotations(0, "train", 6), synthetic_pose.annotations(0, "train", 6)
    assert a == b and a != synthetic_pose.annotations(1, "train", 6)
    images = synthetic_pose.SyntheticImages(0, "train")
    np.testing.assert_array_equal(images.load(3), images.load(3))
    coco.check_annotations(a, "generated")
    for ann in a["annotations"]:
        im = a["images"][ann["image_id"] - 1]
        assert images.load(ann["image_id"]).shape == (im["height"], im["width"], 3)
        k = np.asarray(ann["keypoints"]).reshape(17, 3)
        assert ann["num_keypoints"] == int((k[:, 2] > 0).sum()) > 0


def _write_sample_copy(tmp_path: Path, mutate) -> Path:
    raw = json.loads((SAMPLE / "test_coco.json").read_text())
    mutate(raw)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(raw))
    return path


@needs_sample
@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["annotations"][3]["keypoints"].pop(), "annotation {aid}: keypoints must be 51 numbers"),
    (lambda d: d["annotations"][3].__setitem__("bbox", [1, 2, "x", 4]), "annotation {aid}: bbox must be 4 numbers"),
    (lambda d: d["annotations"][3].__setitem__("image_id", 12345), "annotation {aid}: image_id 12345 is not"),
])
def test_malformed_annotations_are_refused_naming_the_file_and_annotation(tmp_path, mutate, message):
    aid = json.loads((SAMPLE / "test_coco.json").read_text())["annotations"][3]["id"]
    path = _write_sample_copy(tmp_path, mutate)
    with pytest.raises(ValueError, match=f"{path}: " + message.format(aid=aid)):
        coco.CocoKeypoints.from_config(sample_config(train_ann=str(path)), 0)


@needs_sample
def test_bad_files_are_refused_before_training(tmp_path):
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(ValueError, match=f"{garbage}: not a valid annotation file"):
        coco.CocoKeypoints.from_config(sample_config(val_ann=str(garbage)), 0)
    images = tmp_path / "images"
    shutil.copytree(SAMPLE, images, ignore=shutil.ignore_patterns("000000040083.jpg"))
    with pytest.raises(FileNotFoundError, match=r"000000040083.jpg: image 40083 of the train split is missing"):
        coco.CocoKeypoints.from_config(sample_config(train_images=str(images)), 0)
    with pytest.raises(ValueError, match=r"config.data.eval_boxes: 'det' needs data.det_file"):
        coco.CocoKeypoints.from_config(sample_config(det_file="", eval_boxes="det"), 0)
    with pytest.raises(ValueError, match=r"evaluating on 'det' boxes needs data.det_file"):
        coco.CocoKeypoints.from_config(sample_config(det_file=""), 0).eval_set("det")
    with pytest.raises(ValueError, match=r"one of gt, det, not 'dt'"):
        coco.CocoKeypoints.from_config(sample_config(), 0).eval_set("dt")
    with pytest.raises(ValueError, match=r"config.data.heatmap_size: \(10, 10\) must keep the aspect"):
        coco.CocoKeypoints.from_config(sample_config(heatmap_size=(10, 10)), 0)
