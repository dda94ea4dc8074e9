"""mlpbnn.data.imagenet on tiny ILSVRC2012-layout tars prepared with TFDS's real imagenet2012 builder."""

from __future__ import annotations

import gc
import io
import math
import multiprocessing
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mlpbnn.data import create, imagenet
from mlpbnn.data.base import stream_indices
from mlpbnn.data.imagenet import MEAN, STD, ImageNet

S = 16  # crop size: tiny, so that every test stays fast
GRAY_SYNSET = "n01484850"  # its images are gray; one of them is a grayscale JPEG
CMYK_LISTED = "n01739381_1309.JPEG"  # in TFDS's CMYK list: converted to RGB by the builder
SYNSETS = ["n01440764", "n01443537", GRAY_SYNSET, "n01739381"]
SIZES = [(37, 53), (53, 37), (29, 41), (11, 90), (64, 48)]  # (h, w); 11x90 forces the fallback crop
N_VAL = 7


def _labels_txt() -> list[str]:
    import tensorflow_datasets as tfds
    return tfds.core.tfds_path("datasets/imagenet2012/labels.txt").read_text().split()


def _validation_labels_txt() -> list[str]:
    import tensorflow_datasets as tfds
    return tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt").read_text().split()


def colour(label: int, gray_label: int) -> tuple[int, int, int]:
    if label == gray_label:
        return (128, 128, 128)
    return ((label * 97) % 160 + 48, (label * 57) % 160 + 64, (label * 31) % 160 + 32)


def jpeg(rgb: tuple[int, int, int], size: tuple[int, int], mode: str = "RGB") -> bytes:
    return imagenet.encode_jpeg(np.full((*size, 3), rgb, np.uint8), mode)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Train tar (4 synsets, 19 images of odd sizes, one grayscale and two CMYK JPEGs) and a
    validation tar of 7 images (written in reverse order); prepared on first use through
    ``mlpbnn.data.create`` into the default data dir (``$TFDS_DATA_DIR``)."""
    labels = _labels_txt()
    gray = labels.index(GRAY_SYNSET)
    manual = tmp_path_factory.mktemp("manual")
    train: dict[str, list[tuple[str, bytes]]] = {}
    for k, synset in enumerate(SYNSETS):
        c = colour(labels.index(synset), gray)
        train[synset] = [(f"{synset}_{i}.JPEG", jpeg(c, SIZES[(i + k) % len(SIZES)])) for i in range(4)]
    train[GRAY_SYNSET].append((f"{GRAY_SYNSET}_77.JPEG", jpeg((128, 128, 128), (41, 29), "L")))
    c = colour(labels.index("n01739381"), gray)
    train["n01739381"] += [(CMYK_LISTED, jpeg(c, (30, 20), "CMYK")), ("n01739381_88.JPEG", jpeg(c, (20, 30), "CMYK"))]
    val_synsets = _validation_labels_txt()[:N_VAL]
    val = [(f"ILSVRC2012_val_{i + 1:08d}.JPEG", jpeg(colour(labels.index(s), gray), SIZES[i % len(SIZES)]))
           for i, s in enumerate(val_synsets)]
    imagenet.write_tars(manual, train, val[::-1])  # labels follow sorted names, not the tar's order
    data_dir = tmp_path_factory.mktemp("tfds")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TFDS_DATA_DIR", str(data_dir))
        cfg = ml_collections.ConfigDict({"name": "imagenet", "manual_dir": str(manual), "data_dir": "",
                                         "image_size": S, "workers": 0})
        ds = create(cfg, seed=0)
    return {"ds": ds, "data_dir": str(data_dir), "gray": gray, "labels": labels, "val_synsets": val_synsets,
            "train_count": sum(len(v) for v in train.values())}


def make(world, seed=0, **kw) -> ImageNet:
    """In this process by default: a grain worker is a fresh interpreter (seconds to start here)."""
    kw.setdefault("image_size", S)
    kw.setdefault("workers", 0)
    return ImageNet(world["data_dir"], seed, **kw)


def take(it, n):
    return [next(it) for _ in range(n)]


def expected_pixels(label: int, gray: int) -> np.ndarray:
    return (np.array(colour(label, gray), np.float32) / 255.0 - MEAN) / STD


def test_prepared_sizes_and_describe(world):
    ds = world["ds"]
    assert isinstance(ds, ImageNet)
    assert (ds.train_size, ds.eval_size) == (world["train_count"], N_VAL)
    assert ds.num_classes == 1000 and ds.image_shape == (S, S, 3)
    assert ds.eval_resize == round(S * 256 / 224)
    assert "imagenet2012" in ds.describe() and f"{world['train_count']} train" in ds.describe()
    assert ds.workers == 0 and "in-process" in ds.describe() and "1000 classes" in ds.describe()
    default = ImageNet(world["data_dir"], 0)
    assert default.image_shape == (224, 224, 3)
    assert default.workers == min(os.cpu_count(), imagenet.AUTO_WORKERS)  # one worker process per core
    assert "grain worker processes" in default.describe()
    with pytest.raises(ValueError, match="data.workers"):
        make(world, workers=-2)


def test_train_batches_shapes_normalisation_labels(world):
    ds, gray, labels = world["ds"], world["gray"], world["labels"]
    it = ds.train_batches(0, 6)
    synset_labels = {labels.index(s) for s in SYNSETS}
    for (batch, pos), want_pos in zip(take(it, 4), (6, 12, 18, 24), strict=True):
        assert pos == want_pos
        assert batch["images"].shape == (6, S, S, 3) and batch["images"].dtype == np.float32
        assert batch["labels"].shape == (6,) and batch["labels"].dtype == np.int32
        assert set(batch["labels"].tolist()) <= synset_labels
        for img, label in zip(batch["images"], batch["labels"], strict=True):
            # Solid-colour images: every crop, flip and resize keeps the colour of the synset.
            np.testing.assert_allclose(img.mean((0, 1)), expected_pixels(int(label), gray), atol=0.06)
            assert img.std((0, 1)).max() < 0.06


def test_eval_batches_normalisation_and_labels(world):
    ds, gray, labels = world["ds"], world["gray"], world["labels"]
    (batch,) = list(ds.eval_batches(N_VAL))
    assert batch["images"].shape == (N_VAL, S, S, 3) and batch["images"].dtype == np.float32
    assert batch["labels"].dtype == np.int32 and batch["mask"].dtype == np.float32
    assert batch["mask"].tolist() == [1.0] * N_VAL
    # Labels come from TFDS's validation list in sorted file-name order.
    assert sorted(batch["labels"].tolist()) == sorted(labels.index(s) for s in world["val_synsets"])
    for img, label in zip(batch["images"], batch["labels"], strict=True):
        np.testing.assert_allclose(img.mean((0, 1)), expected_pixels(int(label), gray), atol=0.06)


def test_grayscale_and_cmyk_decode_to_rgb(world):
    ds, gray, labels = world["ds"], world["gray"], world["labels"]
    src = ds.source("train")
    by_name = {src[i]["file_name"].decode(): src[i] for i in range(len(src))}
    raw_modes = {name: Image.open(io.BytesIO(rec["image"])).mode for name, rec in by_name.items()}
    assert raw_modes[f"{GRAY_SYNSET}_77.JPEG"] == "L"
    assert raw_modes["n01739381_88.JPEG"] == "CMYK"  # not in TFDS's list: stored as is
    assert raw_modes[CMYK_LISTED] == "RGB"  # in TFDS's list: converted while preparing
    for name in (f"{GRAY_SYNSET}_77.JPEG", CMYK_LISTED, "n01739381_88.JPEG"):
        rec = by_name[name]
        arr = imagenet.decode_rgb(rec["image"])
        assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8, name
        assert labels[int(rec["label"])] == name.split("_")[0]
        np.testing.assert_allclose(arr.mean((0, 1)), colour(int(rec["label"]), gray), atol=4, err_msg=name)


def test_determinism_from_seed(world):
    a = take(make(world, seed=3).train_batches(0, 5), 3)
    b = take(make(world, seed=3).train_batches(0, 5), 3)
    c = take(make(world, seed=4).train_batches(0, 5), 3)
    for (x, px), (y, py) in zip(a, b, strict=True):
        assert px == py
        np.testing.assert_array_equal(x["images"], y["images"])
        np.testing.assert_array_equal(x["labels"], y["labels"])
    assert any(not np.array_equal(x["images"], z["images"]) for (x, _), (z, _) in zip(a, c, strict=True))


@pytest.mark.slow
def test_worker_count_does_not_change_batches(world):
    """In this process, one grain worker process and two: the same training batches (from a position
    that is no multiple of the batch, on the second of two processes' rows) and evaluation batches."""
    def run(ds):
        train = take(ds.train_batches(7, 6, process_index=1, process_count=2), 5)
        return train, list(ds.eval_batches(4, 1, 2))

    (ref_train, ref_eval) = run(make(world, workers=0))
    for workers, prefetch in ((1, 1), (2, 2)):
        train, evals = run(make(world, workers=workers, prefetch=prefetch))
        for (x, px), (y, py) in zip(ref_train, train, strict=True):
            assert px == py
            for key in ("images", "labels"):
                np.testing.assert_array_equal(x[key], y[key])
                assert type(y[key]) is np.ndarray  # plain arrays, not grain's shared-memory subclass
        assert len(evals) == len(ref_eval) == 2
        for x, y in zip(ref_eval, evals, strict=True):
            for key in ("images", "labels", "mask"):
                np.testing.assert_array_equal(x[key], y[key])


def test_resume_continues_on_the_next_batch(world):
    gb = 6  # 19 training images: batches cross epoch boundaries
    full = take(world["ds"].train_batches(0, gb), 6)
    resumed = take(make(world).train_batches(full[2][1], gb), 3)
    assert full[2][1] == 3 * gb
    for (x, px), (y, py) in zip(full[3:], resumed, strict=True):
        assert px == py
        np.testing.assert_array_equal(x["images"], y["images"])
        np.testing.assert_array_equal(x["labels"], y["labels"])


def test_two_processes_give_the_rows_of_one(world):
    ds = world["ds"]
    one = take(ds.train_batches(4, 8), 3)
    p0 = take(ds.train_batches(4, 8, process_index=0, process_count=2), 3)
    p1 = take(ds.train_batches(4, 8, process_index=1, process_count=2), 3)
    for (b, pos), (b0, pos0), (b1, pos1) in zip(one, p0, p1, strict=True):
        assert pos == pos0 == pos1
        assert b0["images"].shape == (4, S, S, 3)
        for key in ("images", "labels"):
            np.testing.assert_array_equal(np.concatenate([b0[key], b1[key]]), b[key])
    with pytest.raises(ValueError, match="divisible"):
        next(ds.train_batches(0, 5, process_index=0, process_count=2))


@pytest.mark.parametrize("global_batch,processes", [(1, 1), (3, 1), (4, 2), (5, 1), (6, 3), (16, 2)])
def test_eval_covers_every_image_once(world, global_batch, processes):
    ds = world["ds"]
    (reference,) = list(ds.eval_batches(N_VAL))
    per_process = [list(ds.eval_batches(global_batch, p, processes)) for p in range(processes)]
    n_batches = math.ceil(N_VAL / global_batch)
    assert all(len(b) == n_batches for b in per_process)
    rows, labels, padding = [], [], 0
    for step in range(n_batches):
        for p in range(processes):
            b = per_process[p][step]
            assert b["images"].shape[0] == global_batch // processes
            real = b["mask"] == 1
            assert np.all(np.diff(b["mask"]) <= 0)  # real rows first, then padding
            rows += [r.tobytes() for r in b["images"][real]]
            labels += b["labels"][real].tolist()
            padding += int((~real).sum())
            assert not b["images"][~real].any() and not b["labels"][~real].any()
    assert len(rows) == N_VAL and padding == n_batches * global_batch - N_VAL
    assert sorted(rows) == sorted(r.tobytes() for r in reference["images"])
    assert sorted(labels) == sorted(reference["labels"].tolist())


def test_random_resized_crop_box():
    for seed in range(200):
        rng = np.random.default_rng(seed)
        for h, w in SIZES:
            top, left, ch, cw = imagenet.random_resized_crop(rng, h, w, 0.08)
            assert top >= 0 and left >= 0 and ch > 0 and cw > 0 and top + ch <= h and left + cw <= w
    # Whole-image area with a 3/4..4/3 aspect does not fit: the fallback is the centred box of aspect 4/3 or 1.
    assert imagenet.random_resized_crop(np.random.default_rng(0), 11, 90, 1.0) == (0, 37, 11, 15)
    assert imagenet.random_resized_crop(np.random.default_rng(0), 40, 30, 1.0) == (0, 0, 40, 30)


def test_eval_geometry_matches_resize_then_centre_crop():
    # 500x375 -> shorter side 256: 341x256; centre 224 crop at left round(58.5), top 16.
    left, upper, right, lower = imagenet.eval_geometry(375, 500, 256, 224)
    sx, sy = 341 / 500, 256 / 375
    assert (left * sx, upper * sy, right * sx, lower * sy) == pytest.approx((58, 16, 282, 240))


def test_missing_tar_is_named(tmp_path, capsys):
    manual = tmp_path / "manual"
    imagenet.write_tars(manual, validation=[("ILSVRC2012_val_00000001.JPEG", jpeg((1, 2, 3), (8, 8)))])
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_train.tar"):
        imagenet.prepare(str(manual), str(tmp_path / "d"))
    assert imagenet.main(["prepare", "--manual_dir", str(tmp_path / "empty"), "--data_dir",
                          str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "ILSVRC2012_img_train.tar" in err and "ILSVRC2012_img_val.tar" in err
    with pytest.raises(FileNotFoundError, match="manual_dir"):
        ImageNet.from_config(ml_collections.ConfigDict({"data_dir": str(tmp_path / "d"), "manual_dir": ""}), 0)


def test_corrupt_jpegs_are_reported_by_name(tmp_path, capsys):
    good = jpeg((200, 100, 50), (24, 32))
    truncated = good[: len(good) // 2]
    train = {"n01440764": [("n01440764_1.JPEG", good), ("n01440764_2.JPEG", truncated),
                           ("n01440764_3.JPEG", b"this is not a jpeg" * 10)]}
    val = [("ILSVRC2012_val_00000001.JPEG", good), ("ILSVRC2012_val_00000002.JPEG", truncated)]
    imagenet.write_tars(tmp_path / "manual", train, val)
    report = imagenet.prepare(str(tmp_path / "manual"), str(tmp_path / "d"), workers=2)
    assert report.splits == {"train": 3, "validation": 2}  # nothing skipped, nothing fatal
    assert sorted(name for _, name, _ in report.corrupt) == [
        "ILSVRC2012_val_00000002.JPEG", "n01440764_2.JPEG", "n01440764_3.JPEG"]
    assert ("ILSVRC2012_img_train.tar", "n01440764_2.JPEG") in {(a, n) for a, n, _ in report.corrupt}
    err = capsys.readouterr().err
    for name in ("n01440764_2.JPEG", "n01440764_3.JPEG", "ILSVRC2012_val_00000002.JPEG"):
        assert name in err
    assert "truncated" in err.lower()
    # Reading them later gives the mean image (zeros) with a warning, not an exception.
    ds = ImageNet(str(tmp_path / "d"), 0, image_size=S, workers=0)
    assert len(ds.corrupt) == 3
    (batch,) = list(ds.eval_batches(2))
    names = [imagenet.parse_record(ds.source("validation", raw=True)[i])[2] for i in range(2)]
    bad = names.index("ILSVRC2012_val_00000002.JPEG")
    assert not batch["images"][bad].any() and batch["images"][1 - bad].any()
    assert batch["mask"].tolist() == [1.0, 1.0]
    assert "ILSVRC2012_val_00000002.JPEG" in capsys.readouterr().err
    again = imagenet.prepare(str(tmp_path / "manual"), str(tmp_path / "d"))
    assert again.already_prepared and len(again.corrupt) == 3


def _gradient_jpeg(h: int, w: int) -> bytes:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    arr = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                          np.full((h, w, 1), 90, np.float32)], axis=2).astype(np.uint8)
    return imagenet.encode_jpeg(arr)


def test_train_augmentation_crops_and_flips(world):
    ds = make(world, image_size=24)
    data = _gradient_jpeg(60, 80)
    crops = [ds.augment.train_pixels(data, p) for p in range(60)]
    flipped = [c[:, 0, 0].mean() > c[:, -1, 0].mean() for c in crops]  # red grows left to right unflipped
    assert 15 < sum(flipped) < 45
    widths = [abs(float(c[:, -1, 0].mean()) - float(c[:, 0, 0].mean())) for c in crops]  # red span ~ crop width
    assert max(widths) > 2 * min(widths)
    assert all(c.shape == (24, 24, 3) and c.dtype == np.uint8 for c in crops)
    np.testing.assert_array_equal(ds.augment.train_pixels(data, 5), crops[5])  # a function of (seed, position)


@pytest.mark.parametrize("draft,mean_tol,max_tol", [(False, 0, 0), (True, 1.0, 4)])
def test_eval_pixels_match_full_resize_then_crop(world, draft, mean_tol, max_tol):
    """Resizing only the crop's box equals torchvision's Resize + CenterCrop exactly; the reduced-scale
    JPEG decode (``draft``, used when the image has >= 2x the pixels needed) stays close."""
    ds = make(world, image_size=24, draft=draft)  # resize round(24 * 256 / 224) = 27
    data = _gradient_jpeg(75, 100)
    im = Image.open(io.BytesIO(data)).convert("RGB")
    full = np.asarray(im.resize((36, 27), Image.Resampling.BILINEAR), np.float32)
    left, top = round((36 - 24) / 2), round((27 - 24) / 2)
    want = full[top:top + 24, left:left + 24]
    got = ds.augment.eval_pixels(data).astype(np.float32)
    assert np.abs(got - want).mean() <= mean_tol and np.abs(got - want).max() <= max_tol


def test_raw_records_parse_like_tfds(world):
    ds = world["ds"]
    raw, decoded = ds.source("train", raw=True), ds.source("train")
    for i in range(len(decoded)):
        image, label, name = imagenet.parse_record(raw[i])
        assert (image, label, name) == (decoded[i]["image"], decoded[i]["label"], decoded[i]["file_name"].decode())


def test_grain_records_are_tfds_records(world):
    ds = world["ds"]
    for split in ("train", "validation"):
        raw = ds.source(split, raw=True)
        assert list(ds.records(split).__getitems__(range(len(raw)))) == [raw[i] for i in range(len(raw))]


def test_train_stream_follows_stream_indices(world):
    """Batch k holds the examples stream_indices gives for positions start + k * batch (the index stream
    of every dataset here), across epochs and whatever the batch's offset."""
    ds = world["ds"]
    labels = [imagenet.parse_record(r)[1] for r in ds.records("train").__getitems__(range(ds.train_size))]
    for start, gb in ((0, 6), (5, 4)):
        for k, (batch, pos) in enumerate(take(ds.train_batches(start, gb), 7)):
            idx = stream_indices(start + k * gb, gb, ds.train_size, seed=0)
            assert batch["labels"].tolist() == [labels[i] for i in idx] and pos == start + (k + 1) * gb


def _grain_workers() -> set:
    return {p for p in multiprocessing.active_children() if p.name.startswith("grain-process-prefetch")}


@pytest.mark.parametrize("how", ["close", "drop"])
def test_closing_or_dropping_a_stream_stops_its_workers(world, how):
    before = _grain_workers()
    it = make(world, workers=2).train_batches(0, 4)
    next(it)
    ours = _grain_workers() - before
    assert len(ours) == 2 and all(p.is_alive() for p in ours)
    if how == "close":
        it.close()
    else:
        del it
        gc.collect()
    for p in ours:
        p.join(timeout=30)
    assert not any(p.is_alive() for p in ours)
    assert not _grain_workers() - before


def test_lighting_noise_is_alexnet_pca_noise():
    """fb.resnet.torch's formula written out element by element: rgb_i = sum_j V_ij alpha_j lambda_j with
    alpha ~ N(0, alphastd); its covariance over many draws is alphastd^2 V diag(lambda^2) V^T."""
    eigval = np.array([0.2175, 0.0188, 0.0045])
    eigvec = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
    np.testing.assert_allclose(eigvec.T @ eigvec, np.eye(3), atol=2e-4)  # unit, orthogonal eigenvectors
    for seed in range(5):
        alpha = np.random.default_rng(seed).normal(0.0, 0.1, 3)
        want = [sum(eigvec[i, j] * alpha[j] * eigval[j] for j in range(3)) for i in range(3)]
        got = imagenet.lighting_noise(np.random.default_rng(seed), 0.1)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
    rng = np.random.default_rng(0)
    draws = np.stack([imagenet.lighting_noise(rng, 0.1) for _ in range(40_000)]).astype(np.float64)
    cov = 0.1**2 * eigvec @ np.diag(eigval**2) @ eigvec.T
    np.testing.assert_allclose(np.cov(draws.T), cov, atol=0.03 * cov.max())
    np.testing.assert_allclose(draws.mean(0), 0, atol=0.03 * np.sqrt(cov.max()))


def test_lighting_shifts_the_image_on_the_0_1_scale(world):
    """With lighting, every pixel of a training image moves by the position's shift on the 0-1 scale,
    i.e. by shift / std after normalisation; crops and flips stay as they were; evaluation is untouched."""
    plain, lit = make(world), make(world, lighting=0.1)
    shifts = []
    for (a, pa), (b, pb) in zip(take(plain.train_batches(3, 6), 3), take(lit.train_batches(3, 6), 3), strict=True):
        assert pa == pb
        np.testing.assert_array_equal(a["labels"], b["labels"])
        for r in range(6):
            shift = lit.augment.lighting_shift(pa - 6 + r)
            np.testing.assert_allclose(b["images"][r] * STD + MEAN, a["images"][r] * STD + MEAN + shift, atol=2e-6)
            shifts.append(shift)
    assert len({s.tobytes() for s in shifts}) == len(shifts) and np.abs(shifts).max() > 1 / 255
    assert np.abs(shifts).max() < 0.2
    for a, b in zip(plain.eval_batches(4), lit.eval_batches(4), strict=True):
        np.testing.assert_array_equal(a["images"], b["images"])
    assert "lighting 0.1" in lit.describe()
    with pytest.raises(ValueError, match="data.lighting"):
        make(world, lighting=-0.1)
