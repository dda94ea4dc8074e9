"""Images checked before a run (``mlpbnn.data.verify``) on the real COCO sample's layout: a truncated
and a zero-byte JPEG refuse the run, each named on its own line, or (``data.bad_images=skip``) lose
their boxes with one summary line; an image whose size is not the annotations' is refused; the
cache makes a rerun decode nothing; detector boxes of non-positive or non-finite size are dropped
with their count."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from mlpbnn.data import coco, verify
from tests.test_data_coco import SAMPLE, needs_sample, sample_config

TRUNCATED, EMPTY = "000000040083.jpg", "000000196141.jpg"  # 2 and 4 training people (26 and 33 detector boxes)


def bad_sample(tmp_path: Path) -> Path:
    """The sample's images with one truncated to its first half and one emptied."""
    images = tmp_path / "images"
    shutil.copytree(SAMPLE, images, ignore=shutil.ignore_patterns("*.json", "*.md"))
    data = (images / TRUNCATED).read_bytes()
    (images / TRUNCATED).write_bytes(data[:len(data) // 2])
    (images / EMPTY).write_bytes(b"")
    return images


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@needs_sample
def test_a_truncated_jpeg_is_caught_though_opencv_decodes_it(tmp_path):
    images = bad_sample(tmp_path)
    # The pipeline's decoder returns the truncated image whole (the missing rows grey): no error to see.
    assert cv2.imread(str(images / TRUNCATED)).shape == (333, 500, 3)
    with pytest.raises(ValueError, match=r"does not decode completely \(image file is truncated"):
        verify.decode(images / TRUNCATED)
    with pytest.raises(ValueError, match=r"empty file \(0 bytes\)"):
        verify.decode(images / EMPTY)
    (images / "x.jpg").write_bytes(b"GIF89a not really")
    with pytest.raises(ValueError, match="not an image"):
        verify.decode(images / "x.jpg")
    assert verify.decode(images / "000000000785.jpg") == (640, 425)


@needs_sample
def test_bad_images_refuse_the_run_naming_each_file(tmp_path):
    images = bad_sample(tmp_path)
    with pytest.raises(verify.BadImagesError) as refused:
        coco.CocoKeypoints.from_config(sample_config(train_images=str(images), val_images=str(images)), 0)
    lines = str(refused.value).splitlines()
    assert lines[0].startswith("2 of 4 COCO image files do not decode completely; fix or remove them, set "
                               "data.bad_images=skip")
    assert lines[1] == f"  {images / TRUNCATED}: does not decode completely (image file is truncated " \
        f"({lines[1].split('(')[-1]}" and lines[1].endswith("bytes not processed))")
    assert lines[2] == f"  {images / EMPTY}: empty file (0 bytes)" and len(lines) == 3
    # A longer list is bounded: MAX_LISTED lines, then the count.
    files = {i: str(images / EMPTY) if i % 2 else str(images / TRUNCATED) for i in range(2)}
    files |= {i: str(tmp_path / f"gone{i}.jpg") for i in range(2, 30)}
    with pytest.raises(verify.BadImagesError) as refused:
        verify.check_images(files, "refuse")
    lines = str(refused.value).splitlines()
    assert len(lines) == 1 + verify.MAX_LISTED + 1 and lines[-1] == f"  ... and {30 - verify.MAX_LISTED} more"
    assert lines[0].startswith("30 of 30 image files") and "cannot be read (No such file or directory)" in lines[-2]


@needs_sample
def test_skip_drops_the_boxes_of_bad_images_with_a_summary(tmp_path, capsys):
    images = bad_sample(tmp_path)
    ds = coco.CocoKeypoints.from_config(sample_config(train_images=str(images), val_images=str(images),
                                                      bad_images="skip"), 0)
    bad_ids = {40083, 196141}
    assert ds.train_size == ds.eval_size == 12 - 2 - 4 and not bad_ids & set(ds.train_records.image_id.tolist())
    assert len(ds.box_records["det"]) == 118 - 26 - 33 and not bad_ids & set(ds.box_records["det"].image_id.tolist())
    assert not bad_ids & set(ds.val_coco.getImgIds()) and len(ds.val_coco.getImgIds()) == 2  # COCOeval's images
    err = capsys.readouterr().err
    summary = [line for line in err.splitlines() if "data.bad_images=skip" in line]
    # Each bad file's boxes are counted once per box set: train 2 + 4, val gt 2 + 4, val det 26 + 33.
    assert summary == [f"[verify] dropped the 71 boxes of 2 COCO image files that do not decode completely "
                       f"(data.bad_images=skip): {TRUNCATED} (does not decode completely (image file is truncated "
                       f"({summary[0].split('truncated (')[-1]}"], err
    assert f"{EMPTY} (empty file (0 bytes))" in summary[0]
    batch, _ = next(ds.train_batches(0, 4))  # the rest trains
    assert np.isfinite(batch["images"]).all()
    # verify_images=false trusts the data: the bad files are not looked at (the truncated one would train grey).
    trusted = coco.CocoKeypoints.from_config(sample_config(train_images=str(images), val_images=str(images),
                                                           verify_images=False), 0)
    assert trusted.train_size == 12
    with pytest.raises(ValueError, match=r"config.data.bad_images: must be one of refuse, skip, got 'drop'"):
        coco.CocoKeypoints.from_config(sample_config(bad_images="drop"), 0)


@needs_sample
def test_an_image_of_another_size_than_its_annotation_is_refused(tmp_path):
    raw = json.loads((SAMPLE / "test_coco.json").read_text())
    raw["images"][0]["width"] = 641
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(raw))
    name = raw["images"][0]["file_name"]
    with pytest.raises(verify.BadImagesError, match=f"{name}: is 640x425, the annotations say 641x425"):
        coco.CocoKeypoints.from_config(sample_config(train_ann=str(ann)), 0)


@needs_sample
def test_the_cache_makes_a_rerun_decode_nothing(tmp_path, monkeypatch, capsys):
    images = tmp_path / "images"
    shutil.copytree(SAMPLE, images, ignore=shutil.ignore_patterns("*.json", "*.md"))
    files = sorted(str(p) for p in images.iterdir())
    first = verify.verify_files(files, cache=tmp_path / "c")
    assert first.decoded == 4 and not first.bad and first.sizes[files[0]] == (640, 425)

    def no_decoding(path):
        raise AssertionError(f"{path} decoded again")

    with monkeypatch.context() as m:
        m.setattr(verify, "decode", no_decoding)
        again = verify.verify_files(files, cache=tmp_path / "c")
    assert again.decoded == 0 and again.sizes == first.sizes and not again.bad
    # A changed file (new modification time, same size) is decoded again; so is one that failed.
    os.utime(files[1], ns=(os.stat(files[1]).st_atime_ns, os.stat(files[1]).st_mtime_ns + 10**9))
    data = Path(files[2]).read_bytes()
    Path(files[2]).write_bytes(data[:len(data) // 2])
    changed = verify.verify_files(files, cache=tmp_path / "c")
    assert changed.decoded == 2 and list(changed.bad) == [files[2]]
    assert verify.verify_files(files, cache=tmp_path / "c").decoded == 1  # the bad file, never cached
    # The dataset's check uses the per-user cache ($XDG_CACHE_HOME): its second build decodes nothing.
    Path(files[2]).write_bytes(data)
    capsys.readouterr()
    for run in range(2):
        with monkeypatch.context() as m:
            if run:
                m.setattr(verify, "decode", no_decoding)
            coco.CocoKeypoints.from_config(sample_config(train_images=str(images), val_images=str(images)), 0)
        err = capsys.readouterr().err
        assert ("[verify] decoding 4 image files" in err) == (run == 0), err
    assert len(list((tmp_path / "cache" / "mlpbnn" / "verified_images").glob("images-*.json"))) == 1


@needs_sample
def test_detector_boxes_of_non_positive_or_non_finite_size_are_dropped(tmp_path, capsys):
    dets = json.loads((SAMPLE / "test_coco_det_AP_H_56.json").read_text())
    dets[0]["bbox"][2] = -5.0
    dets[1]["bbox"][3] = 0
    dets[2]["bbox"][2] = float("nan")
    dets[3]["bbox"][0] = float("inf")
    det_file = tmp_path / "det.json"
    det_file.write_text(json.dumps(dets))  # Python's json writes NaN and Infinity, as detectors' dumps do
    assert "NaN" in det_file.read_text()
    ds = coco.CocoKeypoints.from_config(sample_config(det_file=str(det_file)), 0)
    assert len(ds.box_records["det"]) == 118 - 4
    assert f"[coco] {det_file}: dropped 4 detector box(es) of non-positive or non-finite size" \
        in capsys.readouterr().err.splitlines()
    ds = coco.CocoKeypoints.from_config(sample_config(), 0)
    assert len(ds.box_records["det"]) == 118 and "dropped" not in capsys.readouterr().err


@needs_sample
def test_without_coco_ground_truth_evaluation_images_are_not_skipped(tmp_path):
    """A dataset scored over every evaluation person in order (MPII's PCKh: no ``val_coco`` to drop
    images from) skips bad training images only; a bad evaluation image refuses the run."""
    images = bad_sample(tmp_path)
    ds = coco.CocoKeypoints.from_config(sample_config(train_images=str(images), val_images=str(images),
                                                      verify_images=False), 0)
    pckh_like = SimpleNamespace(train_records=ds.train_records, eval_records=ds.eval_records,
                                train_images=ds.train_images, val_images=ds.val_images)
    with pytest.raises(verify.BadImagesError, match=r"2 of 4 MPII evaluation image files do not decode completely; "
                       r"MPII's benchmark scores every evaluation person"):
        verify.verify_top_down(pckh_like, "skip", "MPII")
    pckh_like.val_images = coco.FileImages(str(SAMPLE), ds.val_images.file_names)
    verify.verify_top_down(pckh_like, "skip", "MPII")
    assert (pckh_like.train_size, pckh_like.eval_size) == (12 - 2 - 4, 12)


def test_mpii_refuses_or_skips_bad_training_images_and_refuses_bad_evaluation_images(tmp_path):
    """MPII in HRNet's layout (generated, tests/utils_mpii.py): the same check through its pipeline."""
    from mlpbnn.data import mpii
    from tests.utils_mpii import write_mpii

    written = write_mpii(tmp_path / "mpii", num_train=7, num_val=6)  # 5 + 4 images of 1 or 2 persons
    images = tmp_path / "mpii" / "images"
    section = {"name": "mpii", "dir": str(tmp_path / "mpii"), "image_size": (64, 64), "workers": 0}
    name = written["train"][1]["image"]  # the second training image: persons 1 and 2
    data = (images / name).read_bytes()
    (images / name).write_bytes(data[:len(data) // 2])
    with pytest.raises(verify.BadImagesError, match=rf"1 of 9 MPII image files .*\n  {images / name}: does not decode"):
        mpii.MpiiKeypoints.from_config(section, 0)
    ds = mpii.MpiiKeypoints.from_config({**section, "bad_images": "skip"}, 0)
    assert (ds.train_size, ds.eval_size) == (7 - 2, 6) and not {1, 2} & set(ds.train_records.image_id.tolist())
    (images / written["valid"][0]["image"]).write_bytes(b"")
    with pytest.raises(verify.BadImagesError, match=r"1 of 4 MPII evaluation image files do not decode "
                       r"completely; MPII's benchmark scores every evaluation person"):
        mpii.MpiiKeypoints.from_config({**section, "bad_images": "skip"}, 0)
