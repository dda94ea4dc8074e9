"""MPII in HRNet's layout on generated data (tests/utils_mpii.py): records as HRNet's ``_get_db``
builds them, position-addressed training batches with MPII's flip pairs, exact padded evaluation
in valid.json's order, the upper bound (ground-truth heatmaps through the whole evaluation path,
the keypoints task's evaluator included) and bad input refused naming the file and the entry."""

from __future__ import annotations

import json
from dataclasses import replace

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy.io import loadmat

from mlpbnn import data
from mlpbnn.data import mpii
from mlpbnn.pose import geometry
from mlpbnn.pose.skeleton import MPII
from mlpbnn.pose.upper_bound import crop_targets, upper_bound
from mlpbnn.registry import SectionError
from mlpbnn.tasks import keypoints as K
from tests.utils_mpii import write_mpii


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mpii")
    write_mpii(root, num_train=7, num_val=6)
    return root


def section(root, **overrides) -> ml_collections.ConfigDict:
    c = data.section("mpii", dir=str(root), image_size=(64, 64), workers=0)
    c.update(overrides)
    return c


def test_defaults_are_hrnets_mpii_recipe():
    c = mpii.MpiiConfig()
    assert (c.image_size, c.scale_factor, c.rot_factor, c.rot_prob, c.half_body_prob, c.sigma, c.flip,
            c.color_rgb) == ((256, 256), 0.25, 30.0, 0.6, 0.0, 2.0, True, True)
    assert c.crop(0, MPII).heatmap_size == (64, 64)
    assert MPII.flip_index.tolist() == [5, 4, 3, 2, 1, 0, 6, 7, 8, 9, 15, 14, 13, 12, 11, 10]


def test_records_follow_hrnets_get_db(root):
    ds = mpii.MpiiKeypoints.from_config(section(root), 0)
    entries = json.loads((root / "annot" / "valid.json").read_text())
    assert ds.train_size == 7 and ds.eval_size == len(entries) == 6 and ds.heatmap_shape == (16, 16, 16)
    r = ds.eval_records
    for i, a in enumerate(entries):
        s = a["scale"]
        np.testing.assert_allclose(r.center[i], [a["center"][0] - 1, a["center"][1] + 15 * s - 1])
        np.testing.assert_allclose(r.scale[i], [1.25 * s, 1.25 * s])
        np.testing.assert_allclose(r.joints[i], np.array(a["joints"]) - 1, atol=1e-4)  # float32
        np.testing.assert_array_equal(r.visible[i], a["joints_vis"])
        assert r.image_id[i] == i and ds.val_images.file_names[i] == a["image"]
    assert len(set(ds.val_images.file_names.values())) < 6  # images with two persons
    # HRNet leaves a centre with x = -1 where it is (no shift, no padding) before the 1-based shift.
    rec = mpii.records([{**entries[0], "center": [-1, 50.0]}])
    np.testing.assert_allclose(rec.center[0], [-2, 49.0])
    np.testing.assert_allclose(rec.scale[0], [entries[0]["scale"]] * 2)


def test_batches_by_position_with_mpii_flip_and_exact_evaluation(root):
    ds = mpii.MpiiKeypoints.from_config(section(root), 0)
    stream = ds.train_batches(0, 4)
    first, pos = next(stream)
    second, _ = next(stream)
    resumed, _ = next(ds.train_batches(4, 4))  # a resumed run starts on exactly the next batch
    for key in ("images", "heatmaps", "target_weight"):
        np.testing.assert_array_equal(second[key], resumed[key])
    halves = [next(ds.train_batches(0, 4, pi, 2))[0]["images"] for pi in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves), first["images"])
    assert pos == 4 and first["heatmaps"].shape == (4, 16, 16, 16) and first["target_weight"].shape == (4, 16)
    # A mirrored crop: MPII's pairs swap (right ankle <-> left ankle, ...), targets on the mirrored joints.
    r = ds.train_records
    image = ds.train_images.load(0)
    still = replace(ds.crop, scale_factor=0.0, rot_factor=0.0, rot_prob=0.0)
    flat = replace(still, flip=False)
    width = image.shape[1]
    for p in range(12):
        _, hm, w = still.train_example(image, r.joints[0], r.visible[0], r.center[0], r.scale[0], p)
        _, plain, _ = flat.train_example(image, r.joints[0], r.visible[0], r.center[0], r.scale[0], p)
        if np.array_equal(hm, plain):
            continue
        mirrored = r.joints[0].astype(np.float64).copy()
        mirrored[:, 0] = width - 1 - mirrored[:, 0]
        center = r.center[0].copy()
        center[0] = width - 1 - center[0]
        matrix = geometry.affine_matrix(center, r.scale[0], 0, (64, 64))
        joints = geometry.apply_affine(mirrored[MPII.flip_index], matrix)
        for k in np.flatnonzero(w > 0):
            y, x = np.unravel_index(np.argmax(hm[..., k]), (16, 16))
            assert (x, y) == (int(joints[k, 0] / 4 + 0.5), int(joints[k, 1] / 4 + 0.5)), k
        break
    else:
        raise AssertionError("no flipped example in 12 positions")
    ids = []
    for pi in range(2):  # two processes, global batches of 8: 6 persons, padded and masked
        for batch in ds.eval_batches(8, pi, 2):
            ids += batch["host"]["image_id"][batch["mask"] > 0].tolist()
    assert sorted(ids) == list(range(6))


def test_upper_bound_and_the_evaluator_on_ground_truth_heatmaps(root, tmp_path):
    """PCKh 100 with the quarter offset; the flip test with the shift moves the mean joint error
    (the note in README); the task's evaluator, fed the same heatmaps, gives the same numbers."""
    ds = mpii.MpiiKeypoints.from_config(section(root), 0)
    plain = upper_bound(ds, "quarter", flip_test=False)
    assert plain["PCKh"] == plain["Mean"] == 100.0 and all(plain[k] == 100.0 for k in K.PCKH_NAMES[:7])
    assert plain["boxes"] == 6 and plain["mean_joint_error_px"] < 3
    flip = upper_bound(ds, "quarter", flip_test=True, shift_heatmap=True)
    assert flip["PCKh"] == 100.0 and flip["mean_joint_error_px"] != plain["mean_joint_error_px"]
    task = K.from_config(ml_collections.ConfigDict({"eval": {"flip_test": False, "samples": 2}, "teacher": {
        "alpha": 0.5, "temperature": 1.0}}), ds)
    assert task.benchmark == "pckh" and task.best_metric == "PCKh" and task.eval_metrics[0] == "PCKh"
    targets = crop_targets(ds.eval_records, ds.crop)
    evaluator, start = task.evaluator(), 0
    for batch in ds.eval_batches(4):
        n = int(batch["mask"].sum())
        heatmaps = np.zeros((4, *ds.heatmap_shape), np.float32)
        heatmaps[:n] = targets[start:start + n]
        start += n
        evaluator.update({k: np.asarray(v) for k, v in task.eval_outputs(jnp.asarray(heatmaps), batch).items()}, batch)
    result = evaluator.result()
    assert result["count"] == 6 and all(result[k] == plain[k] for k in task.eval_metrics)
    assert "eval PCKh 100.00 (Head 100.00" in task.summary(result)
    evaluator.write(tmp_path)
    preds = loadmat(tmp_path / "pred.mat")["preds"]
    assert preds.shape == (6, 16, 2) and (tmp_path / "eval_samples.png").stat().st_size > 5_000
    np.testing.assert_allclose(preds - 1, evaluator.preds[..., :2])


def test_bad_input_is_refused_by_name(root, tmp_path):
    entries = json.loads((root / "annot" / "valid.json").read_text())
    bad = tmp_path / "bad.json"
    for entry, message in (
        ({**entries[1], "joints": entries[1]["joints"][:15]}, r"bad.json: entry 1 \('v\d+.jpg'\): joints must be 16"),
        ({**entries[1], "scale": 0}, r"entry 1 .*: scale must be a number > 0"),
        ({**entries[1], "center": [1]}, r"entry 1 .*: center must be 2 numbers"),
        ({**entries[1], "joints_vis": [1] * 17}, r"entry 1 .*: joints_vis must be 16 numbers"),
        ({k: v for k, v in entries[1].items() if k != "scale"}, r"bad.json: entry 1 needs image, center, scale"),
    ):
        bad.write_text(json.dumps([entries[0], entry]))
        with pytest.raises(ValueError, match=message):
            mpii.read_annotations(bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match=r"bad.json: not a valid MPII annotation file"):
        mpii.read_annotations(bad)
    with pytest.raises(SectionError, match=r"config.data.dir: the MPII root"):
        data.check(data.section("mpii"))
    with pytest.raises(SectionError, match=r"config.data.dir: .*annot/train.json does not exist"):
        data.check(data.section("mpii", dir=str(tmp_path)))
    copy = tmp_path / "copy"
    (copy / "annot").mkdir(parents=True)
    (copy / "images").symlink_to(root / "images")
    for name in ("train.json", "gt_valid.mat"):
        (copy / "annot" / name).write_bytes((root / "annot" / name).read_bytes())
    (copy / "annot" / "valid.json").write_text(json.dumps(entries[:5]))
    with pytest.raises(ValueError, match=r"gt_valid.mat: 6 persons, but the evaluated annotations hold 5"):
        mpii.MpiiKeypoints.from_config(section(copy), 0)
    (copy / "annot" / "valid.json").write_text(json.dumps([*entries[:5], {**entries[5], "image": "gone.jpg"}]))
    with pytest.raises(FileNotFoundError, match=r"images/gone.jpg: the image of val entry 5 is missing"):
        mpii.MpiiKeypoints.from_config(section(copy), 0)


def test_the_flip_test_swaps_mpiis_left_and_right(root):
    """Keypoints.predict on MPII: the mirrored crop's heatmaps come back with MPII's channel swap."""
    ds = mpii.MpiiKeypoints.from_config(section(root), 0)
    task = K.from_config(ml_collections.ConfigDict({"eval": {}, "teacher": {"alpha": 0.5, "temperature": 1.0}}), ds)
    images = np.random.default_rng(0).random((2, 64, 64, 3)).astype(np.float32)

    def apply(x):  # channel k: the first colour plane at heatmap resolution, times k + 1
        return x[:, ::4, ::4, :1] * jnp.arange(1.0, 17.0)

    out = np.asarray(task.predict(apply, jnp.asarray(images)))
    plane = images[:, ::4, ::4, 0]
    back = images[:, :, ::-1][:, ::4, ::4, 0][:, :, ::-1]  # the mirrored crop's plane, flipped back
    back = np.concatenate([back[:, :, :1], back[:, :, :-1]], axis=2)  # HRNet's one-pixel shift
    for k in range(16):
        np.testing.assert_allclose(out[..., k], (plane * (k + 1) + back * (MPII.flip_index[k] + 1)) / 2, rtol=1e-6)
