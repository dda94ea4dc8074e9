"""``python -m mlpbnn.infer`` on heatmap (pose) exports: the COCO input spec, boxes matched and
filtered as evaluation filters detector boxes, the crops evaluation feeds the network, keypoints
mapped back through each box, the result file, the pictures and the one-line errors (with a
stand-in network: no training); and end to end, SBPN trained a few steps by train.py on the real
COCO sample, exported and run through the command line, scored by COCOeval as train.py's
detector-box evaluation scored the same variables."""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mlpbnn import export, infer
from mlpbnn.data import coco
from mlpbnn.pose import postprocess
from mlpbnn.pose.evaluate import STAT_NAMES, evaluate

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "coco_sample"
needs_sample = pytest.mark.skipif(not (SAMPLE / "test_coco.json").is_file(),
                                  reason=f"the real COCO sample is not at {SAMPLE}")
DET = SAMPLE / "test_coco_det_AP_H_56.json"
SIZE, HEATMAP = (64, 48), (16, 12)  # crops and heatmaps of the stand-in network


class PeakNet:
    """A stand-in heatmap network: every joint's map is a Gaussian (sigma 1.5) centred on the middle
    pixel (x 6, y 8 of 12 x 16), whatever the crop; keeps the crops it was given. The flip test's
    mirrored maps, flipped back and shifted one pixel, peak there too, so each joint decodes to the
    middle, which maps back to its box's centre; every joint's score is 1."""

    def __init__(self, heatmap=HEATMAP):
        h, w = heatmap
        y, x = np.mgrid[0:h, 0:w]
        peak = np.exp(-((x - w // 2) ** 2 + (y - h // 2) ** 2) / (2 * 1.5**2)).astype(np.float32)
        self.maps = np.repeat(peak[..., None], 17, axis=-1)
        self.inputs: list[np.ndarray] = []

    def __call__(self, x):
        self.inputs.append(np.asarray(x))
        return np.broadcast_to(self.maps, (len(x), *self.maps.shape)).copy()


def pose_doc(flip_test: bool = True, image_thre: float = 0.0) -> dict:
    spec = coco.input_spec(coco.CocoConfig(image_size=SIZE, image_thre=image_thre))
    return {"input_spec": spec, "output_shape": [*HEATMAP, 17],
            "config": {"eval": {"flip_test": flip_test}, "data": {"name": "coco"}}}


def jpeg(path: Path, size=(80, 60), seed=0) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=95)
    return str(path)


def write_json(path: Path, value) -> str:
    path.write_text(json.dumps(value))
    return str(path)


def hrnet_center_scale(box, aspect=SIZE[1] / SIZE[0]):
    """HRNet's _xywh2cs, written out: centre, aspect-fixed size x 1.25 in units of 200 px."""
    x, y, w, h = box
    center = np.array([x + w / 2, y + h / 2])
    if w > aspect * h:
        h = w / aspect
    elif w < aspect * h:
        w = h * aspect
    return center, np.array([w, h]) / 200 * 1.25


def run_main(monkeypatch, capsys, net, doc, *args):
    monkeypatch.setattr(infer, "load_network", lambda out_dir, layout="direct": (net, doc))
    code = infer.main(["EXPORT", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------------------- unit tests


def test_input_spec_of_the_pose_datasets_states_the_evaluation_crop():
    for name in ("coco", "pose_synthetic"):
        assert name in export.input_datasets()
        spec = export.input_spec(name)
        assert json.loads(json.dumps(spec)) == spec
        assert {k: spec[k] for k in ("dataset", "height", "width", "channels", "mode", "resize")} == {
            "dataset": name, "height": 256, "width": 192, "channels": 3, "mode": "RGB", "resize": "affine_crop"}
        assert (spec["aspect_ratio"], spec["box_padding"], spec["pixel_std"], spec["rotation"]) == (0.75, 1.25, 200, 0)
        assert (spec["heatmap_height"], spec["heatmap_width"], spec["num_joints"]) == (64, 48, 17)
        np.testing.assert_allclose(spec["mean"], [0.485, 0.456, 0.406], rtol=1e-7)
        np.testing.assert_allclose(spec["std"], [0.229, 0.224, 0.225], rtol=1e-7)
    section = coco.CocoConfig(image_size=(128, 96), heatmap_size=(64, 48), color_rgb=False, image_thre=0.3)
    spec = coco.input_spec(section)
    assert (spec["height"], spec["width"], spec["heatmap_height"], spec["mode"], spec["image_thre"]) == (
        128, 96, 64, "BGR", 0.3)
    # The spec's numbers give evaluation's centre and scale: HRNet's worked example.
    center, scale = hrnet_center_scale((100, 50, 60, 200), spec["aspect_ratio"])
    np.testing.assert_allclose([*center, *scale], [130, 150, 0.9375, 1.25])
    records = coco.box_records([(1, [100.0, 50.0, 60.0, 200.0], 0.5)], spec["aspect_ratio"])
    np.testing.assert_allclose([*records.center[0], *records.scale[0], records.area[0]],
                               [130, 150, 0.9375, 1.25, 187.5 * 250])


def test_image_ids_from_file_names():
    assert infer.image_id_of("/data/val2017/000000000785.jpg") == 785
    assert infer.image_id_of("COCO_val2014_000000040083.jpg") == 40083
    assert infer.image_id_of("frame7.png") == 7
    assert infer.image_id_of("dir2017/person.jpg") is None


def test_person_boxes_are_the_detections_evaluation_keeps(tmp_path):
    """Category 1 (or none given) with score >= image_thre, matched by the id in the file name,
    in file order; boxes of images not given are ignored; without a boxes file, whole images."""
    dets = [{"image_id": 7, "bbox": [1, 2, 30, 40], "score": 0.9, "category_id": 1},
            {"image_id": 8, "bbox": [0, 0, 10, 10], "score": 0.8},
            {"image_id": 7, "bbox": [5, 5, 10, 20], "score": 0.1, "category_id": 1},
            {"image_id": 7, "bbox": [5, 5, 10, 20], "score": 0.95, "category_id": 2},
            {"image_id": 9, "bbox": [0, 0, 10, 10], "score": 1.0},
            {"image_id": 7, "bbox": [3, 4, 5, 6], "score": 0.5}]
    det = write_json(tmp_path / "det.json", dets)
    paths = ["a/000000000008.jpg", "b/000000000007.jpg"]
    sizes = [(80, 60), (100, 50)]
    assert infer.person_boxes(paths, sizes, det, 0.2) == [
        (0, [0.0, 0.0, 10.0, 10.0], 0.8), (1, [1.0, 2.0, 30.0, 40.0], 0.9), (1, [3.0, 4.0, 5.0, 6.0], 0.5)]
    assert len(infer.person_boxes(paths, sizes, det, 0.0)) == 4
    assert infer.person_boxes(paths, sizes, None) == [(0, [0.0, 0.0, 80.0, 60.0], 1.0),
                                                      (1, [0.0, 0.0, 100.0, 50.0], 1.0)]


@needs_sample
def test_the_samples_boxes_and_crops_are_evaluations(tmp_path):
    """On the real sample: the detector boxes kept at image_thre 0.5 become the records evaluation
    builds from data.det_file (centres, scales, scores, areas), and the crops the network gets
    are the evaluation batches' pixels, bit for bit (the flip test's mirrored crops too)."""
    ann = str(SAMPLE / "test_coco.json")
    ds = coco.CocoKeypoints.from_config(ml_collections.ConfigDict(
        {"name": "coco", "train_ann": ann, "val_ann": ann, "train_images": str(SAMPLE), "val_images": str(SAMPLE),
         "workers": 0, "det_file": str(DET), "image_thre": 0.5, "image_size": SIZE}), 0).eval_set("det")
    by_id = {infer.image_id_of(p): str(p) for p in SAMPLE.glob("*.jpg")}
    order = list(dict.fromkeys(int(i) for i in ds.eval_records.image_id))  # images as the file first names them
    paths = [by_id[i] for i in order]
    net = PeakNet()
    results, run = infer.pose_results(net, pose_doc(image_thre=0.5), paths, str(DET), batch_size=8)
    # infer takes the boxes image by image (in file order within an image), evaluation in file order.
    rank = np.argsort([order.index(int(i)) for i in ds.eval_records.image_id], kind="stable")
    records = ds.eval_records
    assert sum(len(b) for b in run["boxes"].values()) == len(records) == 18
    mine = coco.box_records([(order[k], b[:4], b[4]) for k, bs in sorted(run["boxes"].items()) for b in bs], 0.75)
    for field in ("image_id", "center", "scale", "score", "area"):
        np.testing.assert_array_equal(getattr(mine, field), getattr(records, field)[rank], err_msg=field)
    crops = np.concatenate(net.inputs[0::2])[:len(records)]
    mirrored = np.concatenate(net.inputs[1::2])[:len(records)]
    expected = np.concatenate([b["images"][b["mask"] > 0] for b in ds.eval_batches(8)])[rank]
    np.testing.assert_array_equal(crops, expected)
    np.testing.assert_array_equal(mirrored, expected[:, :, ::-1])
    assert {r["image_id"] for r in results} == set(order)


def test_keypoints_map_back_to_the_boxes_and_results_are_written(tmp_path, monkeypatch, capsys):
    """The stand-in's joints decode to the crop's middle: each result's 17 joints sit on its box's
    centre with score 1, the instance score is the box score, and OKS-NMS keeps what
    postprocess.coco_results keeps for those centres (an independent centre/area computation).
    JSON lines on stdout, the same list in --out, one picture per image with --draw."""
    paths = [jpeg(tmp_path / "000000000007.jpg", (80, 60), 0), jpeg(tmp_path / "000000000003.jpg", (64, 64), 1)]
    boxes = [[10, 10, 30, 40], [11, 10, 30, 40], [40, 5, 20, 30]]
    dets = [{"image_id": 7, "bbox": b, "score": s} for b, s in zip(boxes, (0.9, 0.8, 0.7), strict=True)]
    dets += [{"image_id": 3, "bbox": [0, 0, 64, 64], "score": 0.6}]
    det = write_json(tmp_path / "det.json", dets)
    net = PeakNet()
    code, out, err = run_main(monkeypatch, capsys, net, pose_doc(), *paths, "--boxes", det, "--batch-size", "3")
    assert code == 0, err
    assert "2 image(s), 4 person box(es)" in err and "flip test on" in err
    rows = [json.loads(line) for line in out.splitlines()]
    centers, areas = zip(*((c, s[0] * s[1] * 200**2) for c, s in (hrnet_center_scale(b) for b in boxes)),
                         strict=True)
    kpts = np.stack([np.concatenate([np.tile(c, (17, 1)), np.ones((17, 1))], 1) for c in centers])
    kept = postprocess.coco_results(np.zeros(3), kpts, np.array([0.9, 0.8, 0.7]), np.array(areas))
    assert len(kept) == 2  # the second box's centre is 0.5 px from the first's: suppressed
    assert [r["image_id"] for r in rows] == [7, 7, 3] and [r["file"] for r in rows] == [paths[0]] * 2 + [paths[1]]
    for r, k in zip(rows[:2], kept, strict=True):
        np.testing.assert_allclose(r["keypoints"], k["keypoints"], rtol=0, atol=1e-9)
        assert r["score"] == k["score"] and r["category_id"] == 1 and set(r) == {
            "image_id", "category_id", "keypoints", "score", "file"}
    np.testing.assert_allclose(np.reshape(rows[2]["keypoints"], (17, 3)), [[32, 32, 1]] * 17, atol=1e-9)
    assert len(net.inputs) == 4 and net.inputs[0].shape == (3, *SIZE, 3)  # 2 batches of 3, each with its mirror

    code, out, err = run_main(monkeypatch, capsys, PeakNet(), pose_doc(), *paths, "--boxes", det, "--out",
                              tmp_path / "r" / "results.json", "--draw", tmp_path / "pictures", "--no-flip-test")
    assert code == 0 and out == "" and "flip test off" in err
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert [r["keypoints"] for r in saved] == [r["keypoints"] for r in rows]
    assert sorted(p.name for p in (tmp_path / "pictures").iterdir()) == ["000000000003.png", "000000000007.png"]
    with Image.open(tmp_path / "pictures" / "000000000007.png") as png:
        assert png.size[0] == 80 and png.size[1] > 60

    # Without boxes: the whole image, score 1; an image without a number in its name has image_id null.
    plain = jpeg(tmp_path / "person.jpg", (50, 100), 2)
    code, out, err = run_main(monkeypatch, capsys, PeakNet(), pose_doc(), plain, paths[0])
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["image_id"], r["score"]) for r in rows] == [(None, 1.0), (7, 1.0)]
    np.testing.assert_allclose(np.reshape(rows[0]["keypoints"], (17, 3))[:, :2], [[25, 50]] * 17, atol=1e-9)


def test_bad_input_is_one_line_and_exit_status_2(tmp_path, monkeypatch, capsys):
    good = jpeg(tmp_path / "000000000007.jpg")
    nameless = jpeg(tmp_path / "person.jpg")
    (tmp_path / "000000000009.jpg").write_bytes(b"not a jpeg")
    det = write_json(tmp_path / "det.json", [{"image_id": 7, "bbox": [0, 0, 5, 5], "score": 1.0}])
    (tmp_path / "bad.json").write_text("[{")
    cases = {
        "no such image file": [str(tmp_path / "000000000001.jpg")],
        "not an image": [str(tmp_path / "000000000009.jpg")],
        "no image id in the file name": [nameless, "--boxes", det],
        "cannot read the detection file": [good, "--boxes", str(tmp_path / "none.json")],
        "not a valid detection file": [good, "--boxes", str(tmp_path / "bad.json")],
        "a detection file is a list": [good, "--boxes", write_json(tmp_path / "dict.json", {"a": 1})],
        "detection 0 needs image_id, bbox and score": [good, "--boxes", write_json(tmp_path / "k.json", [{}])],
        "bbox must be 4 numbers": [good, "--boxes", write_json(tmp_path / "b.json", [
            {"image_id": 7, "bbox": [0, 0, 5], "score": 1.0}])],
        "image_id must be an integer": [good, "--boxes", write_json(tmp_path / "i.json", [
            {"image_id": "7", "bbox": [0, 0, 5, 5], "score": 1.0}])],
        "--batch-size must be >= 1": [good, "--batch-size", "0"],
    }
    for message, args in cases.items():
        code, out, err = run_main(monkeypatch, capsys, PeakNet(), pose_doc(), *args)
        assert code == 2 and out == "", message
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (message, err)
    doc = pose_doc()
    doc["input_spec"]["pixel_std"] = 100.0
    code, _, err = run_main(monkeypatch, capsys, PeakNet(), doc, good)
    assert code == 2 and "pixel_std 100.0" in err
    doc = pose_doc()
    doc["config"]["eval"]["decode"] = "median"
    code, _, err = run_main(monkeypatch, capsys, PeakNet(), doc, good)
    assert code == 2 and "config.eval.decode" in err
    classifier = {"input_spec": export.input_spec("digits"), "output_shape": [10], "num_outputs": 10}
    code, _, err = run_main(monkeypatch, capsys, PeakNet(), classifier, good, "--boxes", det)
    assert code == 2 and err == "error: --boxes is for heatmap (pose) models; EXPORT is a classifier\n"


# ------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
@needs_sample
def test_sbpn_trained_exported_and_run_gives_the_evaluations_ap(tmp_path, capsys):
    """SBPN (configs/sbpn_coco.py, tiny) trained 2 steps on the real sample by train.py, which
    evaluates the final variables on the 118 detector boxes (evals.det); exported with
    ``python -m mlpbnn.export``; run by ``python -m mlpbnn.infer`` on the 4 images with the same
    detector file: COCOeval of its results gives train.py's ten det/ stats to 1e-6, and the
    results are train.py's: the same instances in the same order, the same joints, joint and
    instance scores to float32 rounding (measured: all 117 instances, joint scores within 1e-8).

    The packed network is not bit-identical to the float model: its folded BatchNorms round
    differently (~1e-6 relative), so an activation within ~1e-7 of 0 can take the other sign in a
    binary layer, and that crop's heatmaps then differ by up to ~2% (measured on an 800-step
    model: 1 of 236 crops, one sign at the input of layer2_0, its 12 joint scores up to 0.7% off,
    the joints and all ten stats unchanged). A few such instances are allowed below; nothing else."""
    from tests.test_train_pose import flags
    from tests.utils_train import train

    workdir, out = tmp_path / "run", tmp_path / "packed"
    train("configs/sbpn_coco.py", workdir, *flags(2), "--config.checkpoint_every_steps=2",
          "--config.eval_every_steps=-1", "--config.eval.samples=0", processes=1)
    det_stats = json.loads((workdir / "final_metrics.json").read_text())["eval"]
    # The two command lines' main()s, in this process (python -m runs exactly these).
    assert export.main([str(workdir / "variables"), str(out)]) == 0
    images = sorted(str(p) for p in SAMPLE.glob("*.jpg"))
    results, pictures = tmp_path / "results.json", tmp_path / "pictures"
    capsys.readouterr()
    assert infer.main([str(out), *images, "--boxes", str(DET), "--out", str(results), "--draw", str(pictures)]) == 0
    done = capsys.readouterr()
    assert done.out == ""
    assert "4 image(s), 118 person box(es)" in done.err
    stats = evaluate(SAMPLE / "test_coco.json", results)
    for key in STAT_NAMES:
        assert stats[key] == pytest.approx(det_stats[f"det/{key}"], abs=1e-6), key
    mine = json.loads(results.read_text())
    theirs = json.loads((workdir / "det_eval_results.json").read_text())
    assert [r["image_id"] for r in mine] == [r["image_id"] for r in theirs]
    a, b = (np.array([r["keypoints"] for r in rs]).reshape(len(rs), 17, 3) for rs in (mine, theirs))
    scores = np.array([[r["score"] for r in rs] for rs in (mine, theirs)])
    same = (np.all(a[..., :2] == b[..., :2], axis=(1, 2)) & np.all(np.isclose(a[..., 2], b[..., 2], rtol=1e-5,
                                                                                 atol=1e-7), axis=1)
            & np.isclose(scores[0], scores[1], rtol=1e-5, atol=1e-7))
    assert len(mine) > 100 and same.sum() >= len(mine) - 2, np.nonzero(~same)[0]
    np.testing.assert_allclose(a[..., 2], b[..., 2], rtol=0.05)  # a flipped sign moves a score by ~1%, not more
    assert sorted(p.name for p in pictures.iterdir()) == [Path(p).stem + ".png" for p in images]
