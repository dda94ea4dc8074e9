"""Input-pipeline throughput: training images/s of a dataset's grain pipeline against the number of
grain worker processes, beside the images/s that one training step of the matching network consumes
on the same machine, on generated data in the real on-disk formats.

    python -m bench.input_pipeline [--dataset imagenet|coco] [--workers 1,2] [--images 256] [--batch 64]
                                   [--batches 16] [--rounds 3] [--size 224] [--step_batch 16]

``--dataset imagenet`` (default): ``mlpbnn.data.imagenet`` (array_record read, decode, Inception crop,
flip, resize, normalise) on generated 500x375 JPEGs in the ILSVRC2012 layout, prepared by TFDS's real
imagenet2012 builder; the step is ``bireal_resnet18`` (BBC MLP on weights, ApproxSign activations,
Adam; ``--size`` square, default 224, ``--step_batch`` default 16).

``--dataset coco``: ``mlpbnn.data.coco`` (JPEG read with OpenCV, HRNet's half body / scale / rotation /
flip, affine crop, normalise, Gaussian heatmap targets) built by ``CocoKeypoints.from_config`` on
generated photo-like JPEGs of COCO's usual sizes (640x427 and 427x640) in a ``val2017/`` folder with a
``person_keypoints_val2017.json`` in COCO's format (1-3 persons per image, 17 joints inside each box),
used for both splits; ``--images`` counts images, each yields 1-3 training examples (person boxes). The
step is the project's own train step (``mlpbnn.train.step.make_train_step`` with the keypoints task
and ``mlpbnn.train.optim``'s partitioned Adam) of ``sbpn_resnet18`` (binary head, MLP estimator,
ApproxSign) at ``--size`` x 3/4 ``--size`` (default 256x192, HRNet's crop), ``--step_batch`` default 8.

``--workers``: comma-separated worker counts, each 0..16 (0: decode in the main process with grain's
read threads); default 1, 2, 4, ... up to the core count (at most 16). Worker counts are measured in
interleaved rounds (medians), so that noise on a shared machine hits all alike; ``--step_batch 0``
skips the step. A GIL-free reference workload (zlib in as many threads as workers) says how many cores
the shared machine gives at the moment.

Prints a table and writes bench/results/input_pipeline.json (imagenet) or input_pipeline_coco.json.
``input_rate(dataset, ...)`` is the measurement, reusable beside a training step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.common import heatmap_step, write_json
from mlpbnn.data import imagenet
from mlpbnn.data.base import Dataset

MAX_WORKERS = 16
COCO_SIZES = ((427, 640), (640, 427))  # (height, width): COCO's most common landscape and portrait sizes
NUM_JOINTS = 17
# A standing person facing the camera, joints in COCO's order as fractions (x, y) of the person box;
# the person's left is on the image's right.
_POSE = np.array([
    (0.50, 0.08), (0.55, 0.06), (0.45, 0.06), (0.60, 0.08), (0.40, 0.08),  # nose, eyes, ears
    (0.70, 0.22), (0.30, 0.22), (0.78, 0.38), (0.22, 0.38), (0.80, 0.52), (0.20, 0.52),  # arms
    (0.62, 0.55), (0.38, 0.55), (0.62, 0.75), (0.38, 0.75), (0.62, 0.95), (0.38, 0.95),  # legs
])


def photo_like_jpeg(rng: np.random.Generator, height: int = 375, width: int = 500, quality: int = 90) -> bytes:
    """Random content with a photo's spectrum, roughly: a smooth random field (a 12x16 grid of
    random colours, bicubically enlarged) plus pixel noise; about 40-90 KB at quality 90 for 500x375,
    like ILSVRC's ~110 KB average image (pure noise would give ~170 KB and decode slower)."""
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8)).resize((width, height),
                                                                                 Image.Resampling.BICUBIC)
    arr = np.asarray(coarse, np.int16) + rng.integers(-24, 25, (height, width, 3), np.int16)
    return imagenet.encode_jpeg(np.clip(arr, 0, 255).astype(np.uint8), quality=quality)


def make_prepared(root: Path, n_images: int, n_val: int = 32, synsets: int = 8, seed: int = 0) -> tuple[str, float]:
    """Writes ``n_images`` training and ``n_val`` validation JPEGs as ILSVRC2012 tars under
    ``root/manual`` and prepares them in ``root/tfds``; returns (data dir, mean JPEG size in bytes)."""
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(seed)
    names = tfds.core.tfds_path("datasets/imagenet2012/labels.txt").read_text().split()[:synsets]
    train: dict[str, list[tuple[str, bytes]]] = {s: [] for s in names}
    for i in range(n_images):
        s = names[i % synsets]
        train[s].append((f"{s}_{i}.JPEG", photo_like_jpeg(rng)))
    val = [(f"ILSVRC2012_val_{i + 1:08d}.JPEG", photo_like_jpeg(rng)) for i in range(n_val)]
    imagenet.write_tars(root / "manual", train, val)
    imagenet.prepare(str(root / "manual"), str(root / "tfds"), log=lambda _: None)
    sizes = [len(d) for images in train.values() for _, d in images]
    return str(root / "tfds"), float(np.mean(sizes))


def coco_person(rng: np.random.Generator, image_h: int, image_w: int) -> tuple[list[float], list[float]]:
    """(bbox [x, y, w, h], keypoints [x, y, v] * 17) of one generated person: a box of 30-90 % of the
    image height and 35-60 % of that as width, inside the image; the joints of ``_POSE`` jittered
    inside it, each labelled visible (v 2, p 0.75), occluded (v 1, p 0.15) or not at all (v 0 with
    x = y = 0, as COCO writes it; p 0.1); at least one joint labelled."""
    box_h = rng.uniform(0.3, 0.9) * image_h
    box_w = min(box_h * rng.uniform(0.35, 0.6), image_w - 1.0)
    x, y = rng.uniform(0, image_w - box_w), rng.uniform(0, image_h - box_h)
    frac = np.clip(_POSE + rng.normal(0, 0.04, _POSE.shape), 0, 1)
    xy = np.stack([x + frac[:, 0] * box_w, y + frac[:, 1] * box_h], axis=1)
    v = rng.choice([2, 1, 0], size=NUM_JOINTS, p=[0.75, 0.15, 0.1])
    if not v.any():
        v[0] = 2
    keypoints = []
    for (jx, jy), jv in zip(xy, v, strict=True):
        keypoints += [round(float(jx), 2), round(float(jy), 2), int(jv)] if jv else [0, 0, 0]
    return [round(float(x), 2), round(float(y), 2), round(float(box_w), 2), round(float(box_h), 2)], keypoints


def make_coco(root: Path, n_images: int, seed: int = 0) -> tuple[str, str, float, int]:
    """Writes ``n_images`` photo-like JPEGs of COCO's sizes under ``root/val2017`` and their person
    keypoints as ``root/annotations/person_keypoints_val2017.json`` (COCO's format); returns (annotation
    file, image folder, mean JPEG size in bytes, person boxes)."""
    from mlpbnn.pose.skeleton import KEYPOINT_NAMES, SKELETON

    rng = np.random.default_rng(seed)
    folder, ann_dir = root / "val2017", root / "annotations"
    folder.mkdir(parents=True)
    ann_dir.mkdir()
    images, annotations, sizes = [], [], []
    for i in range(n_images):
        image_id = 100000 + i
        height, width = COCO_SIZES[int(rng.random() < 0.3)]  # mostly landscape, as in COCO
        data = photo_like_jpeg(rng, height, width)
        name = f"{image_id:012d}.jpg"
        (folder / name).write_bytes(data)
        sizes.append(len(data))
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for _ in range(int(rng.integers(1, 4))):
            bbox, keypoints = coco_person(rng, height, width)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": bbox,
                "area": round(bbox[2] * bbox[3] * 0.55, 2),  # a segment covers about half its box
                "num_keypoints": sum(1 for v in keypoints[2::3] if v > 0), "keypoints": keypoints})
    categories = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(KEYPOINT_NAMES),
                   "skeleton": [[a + 1, b + 1] for a, b in SKELETON]}]
    ann_file = ann_dir / "person_keypoints_val2017.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(ann_file), str(folder), float(np.mean(sizes)), len(annotations)


def input_rate(dataset: Dataset, global_batch: int, batches: int, warmup: int = 1, position: int = 0,
               process_index: int = 0, process_count: int = 1) -> tuple[float, float]:
    """(host images/s of ``dataset.train_batches``, seconds to the first batch): a fresh stream from
    ``position``; ``warmup`` batches untimed (worker start; with several workers, at least one batch per
    worker, so that the timed part does not start on a full set of prefetched batches), then ``batches``
    timed. The stream is closed at the end (its workers stop)."""
    t0 = time.perf_counter()
    it = dataset.train_batches(position, global_batch, process_index, process_count)
    next(it)
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        next(it)
    t0 = time.perf_counter()
    rows = 0
    for _ in range(batches):
        batch, _ = next(it)
        rows += len(batch["images"])  # every task's batches carry images (labels or heatmaps vary)
    seconds = time.perf_counter() - t0
    it.close()
    return rows / seconds, first


def reference_rate(threads: int, tasks: int = 24) -> float:
    """zlib compressions/s of 1 MB of random bytes with ``threads`` threads: a GIL-free workload whose
    scaling says how many cores the (shared) machine actually gives us at the moment."""
    data = os.urandom(1 << 20)
    with ThreadPoolExecutor(threads) as pool:
        t0 = time.perf_counter()
        list(pool.map(lambda _: zlib.compress(data, 6), range(tasks)))
        return tasks / (time.perf_counter() - t0)


def eval_rate(dataset: Dataset, global_batch: int, warmup: int = 1) -> float:
    """Evaluation images/s after ``warmup`` batches (which pay for the workers' start), up to the
    arrival of the last batch (the workers' shutdown after it is not counted); NaN when the
    evaluation set has no batch beyond the warm-up ones."""
    batches = dataset.eval_batches(global_batch)
    for _ in range(warmup):
        next(batches, None)
    t0 = last = time.perf_counter()
    rows = 0
    for b in batches:
        rows += int(b["mask"].sum())
        last = time.perf_counter()
    return rows / (last - t0) if rows else float("nan")


def worker_counts(text: str) -> list[int]:
    counts = [int(w) for w in text.split(",") if w.strip()]
    if not counts or any(not 0 <= w <= MAX_WORKERS for w in counts):
        raise argparse.ArgumentTypeError(f"worker counts must be 0..{MAX_WORKERS}, got {text!r}")
    return counts


def sbpn_step(height: int, width: int, batch: int, total_steps: int = 1000) -> Callable[[], Any]:
    """One step of ``sbpn_resnet18``'s keypoints training (binary head, MLP estimator, ApproxSign) on a
    fixed batch: ``bench.common.heatmap_step``'s function."""
    return heatmap_step("sbpn_resnet18", height, width, batch, total_steps, head="binary")[0]


def measure(datasets: dict[int, Dataset], args: argparse.Namespace, cores: int) -> dict[str, Any]:
    """Interleaved rounds over the worker counts: training images/s, seconds to the first batch and
    the zlib reference; then evaluation images/s with the most workers; load averages around it."""
    rates: dict[int, list[float]] = {w: [] for w in datasets}
    starts: dict[int, list[float]] = {w: [] for w in datasets}
    refs: dict[int, list[float]] = {w: [] for w in datasets}
    load_before = os.getloadavg()
    position = 0
    for _ in range(args.rounds):  # interleaved, so that noise on the shared machine hits all alike
        for w, ds in datasets.items():
            refs[w].append(reference_rate(w or cores))  # 0: grain's read threads, one per core
            warmup = max(w, 1) + 1
            rate, first = input_rate(ds, args.batch, args.batches, warmup=warmup, position=position)
            rates[w].append(rate)
            starts[w].append(first)
            position += (args.batches + warmup) * args.batch
    top = max(datasets)
    evals = eval_rate(datasets[top], args.batch, warmup=max(top, 1))
    return {"rates": rates, "med": {w: statistics.median(v) for w, v in rates.items()},
            "ref": {w: statistics.median(v) for w, v in refs.items()},
            "start": {w: statistics.median(v) for w, v in starts.items()},
            "evals": evals, "top": top, "load": (load_before, os.getloadavg())}


def print_table(m: dict[str, Any], workers: list[int], eval_note: str) -> int:
    """Prints the worker table and the eval row; returns the base worker count of the scaling column."""
    med, ref, start = m["med"], m["ref"], m["start"]
    base = min(workers, key=lambda w: (w == 0, w))  # scaling relative to the fewest worker processes
    print(f"{'workers':<10} {'images/s':>9} {'per worker':>11} {'first batch':>12} {'scaling':>8} {'zlib scaling':>13}")
    for w in workers:
        per = med[w] / w if w else float("nan")
        print(f"{w if w else '0 (main)':<10} {med[w]:9.1f} {per:11.1f} {start[w]:11.2f}s "
              f"{med[w] / med[base]:7.2f}x {ref[w] / ref[max(base, 1)]:12.2f}x")
    print(f"{'eval':<10} {m['evals']:9.1f}   ({eval_note}, {m['top']} workers)")
    return base


def common_payload(m: dict[str, Any], args: argparse.Namespace, workers: list[int], cores: int,
                   step_rate: float | None) -> dict[str, Any]:
    return {
        "command": "python -m bench.input_pipeline " + " ".join(
            f"--{k} {','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()),
        "global_batch": args.batch, "timed_batches": args.batches, "rounds": args.rounds,
        "train_images_per_s": {str(w): round(m["med"][w], 1) for w in workers},
        "train_rounds": {str(w): [round(r, 1) for r in v] for w, v in m["rates"].items()},
        "seconds_to_first_batch": {str(w): round(m["start"][w], 2) for w in workers},
        "reference_zlib_per_s": {str(w): round(m["ref"][w], 2) for w in workers},
        "eval_images_per_s": round(m["evals"], 1), "eval_workers": m["top"],
        "cores": cores,
        "load_average_1min": [round(m["load"][0][0], 2), round(m["load"][1][0], 2)],
        "train_step_images_per_s": None if step_rate is None else float(f"{step_rate:.4g}"),
        "train_step_batch": args.step_batch,
        "note": "the machine may be shared: the zlib reference (threads = workers) shows how many cores were "
                "actually available",
    }


def run_imagenet(args: argparse.Namespace, cores: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_imagenet_") as tmp:
        t0 = time.perf_counter()
        data_dir, mean_bytes = make_prepared(Path(tmp), args.images, n_val=(max(args.workers) + 5) * args.batch)
        prep_s = time.perf_counter() - t0
        datasets = {w: imagenet.ImageNet(data_dir, 0, image_size=args.size, workers=w) for w in args.workers}
        m = measure(datasets, args, cores)

    load_before, load_after = m["load"]
    print(f"{args.images} generated 500x375 JPEGs (mean {mean_bytes / 1024:.0f} KB), crop {args.size}, "
          f"batch {args.batch}, {cores} cores; prepared in {prep_s:.1f} s; load average {load_before[0]:.1f} "
          f"before, {load_after[0]:.1f} after")
    base = print_table(m, args.workers, f"resize {round(args.size * 256 / 224)} + centre crop")

    step_rate = None  # after the input table, which stands on its own
    if args.step_batch:
        from bench.common import interleaved_medians
        from bench.train_step import mlpbnn_step

        step = mlpbnn_step("bireal_resnet18", "mlp", args.size, args.step_batch, "auto", small_inputs=False)
        step_rate = args.step_batch / interleaved_medians({"step": step}, args.rounds)["step"]

    if step_rate is not None:
        print(f"{'consumed':<10} {step_rate:9.1f}   by a bireal_resnet18 training step at {args.size}x{args.size}, "
              f"batch {args.step_batch}, on the same {cores} cores: the input of "
              f"{step_rate / (m['med'][base] / max(base, 1)):.2f} worker processes at the measured rate")
    path = write_json("input_pipeline", {
        "what": "training-input images/s of mlpbnn.data.imagenet (grain: array_record read, decode + Inception "
                "crop + flip + resize + normalise, float32 NHWC) against grain worker processes (0: in the main "
                "process), on generated 500x375 JPEGs prepared by TFDS imagenet2012 (array_record)",
        "images": args.images, "mean_jpeg_bytes": round(mean_bytes), "image_size": args.size,
        "prepare_seconds": round(prep_s, 2), **common_payload(m, args, args.workers, cores, step_rate),
    })
    print(f"wrote {path}")


def run_coco(args: argparse.Namespace, cores: int) -> None:
    import ml_collections

    from mlpbnn.data.coco import CocoKeypoints

    height, width = args.size, args.size * 3 // 4  # HRNet's 256x192 aspect
    with tempfile.TemporaryDirectory(prefix="bench_coco_") as tmp:
        t0 = time.perf_counter()
        ann, folder, mean_bytes, persons = make_coco(Path(tmp), args.images)
        prep_s = time.perf_counter() - t0
        datasets = {w: CocoKeypoints.from_config(ml_collections.ConfigDict({
            "train_ann": ann, "val_ann": ann, "train_images": folder, "val_images": folder,
            "image_size": (height, width), "workers": w}), 0) for w in args.workers}
        m = measure(datasets, args, cores)

    load_before, load_after = m["load"]
    print(f"{args.images} generated COCO-sized JPEGs (640x427 / 427x640, mean {mean_bytes / 1024:.0f} KB) with "
          f"{persons} person boxes, crop {height}x{width}, batch {args.batch}, {cores} cores; prepared in "
          f"{prep_s:.1f} s; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    base = print_table(m, args.workers, "affine crop of each ground-truth box")

    step_rate = step_s = compile_s = None
    if args.step_batch:
        from bench.common import interleaved_medians

        t0 = time.perf_counter()
        step = sbpn_step(height, width, args.step_batch)
        compile_s = time.perf_counter() - t0
        step_s = interleaved_medians({"step": step}, args.rounds)["step"]
        step_rate = args.step_batch / step_s
        print(f"{'consumed':<10} {step_rate:9.3g}   by an sbpn_resnet18 training step (binary head, MLP estimator, "
              f"partitioned Adam; {step_s:.1f} s a step, compiled in {compile_s:.0f} s) at {height}x{width}, batch "
              f"{args.step_batch}, on the same {cores} cores: the input of "
              f"{step_rate / (m['med'][base] / max(base, 1)):.2g} worker processes at the measured rate")
    load_end = os.getloadavg()
    print(f"load average at the end {load_end[0]:.1f}")
    path = write_json("input_pipeline_coco", {
        "what": "training-input images/s (person crops) of mlpbnn.data.coco (grain: OpenCV JPEG read, HRNet's half "
                "body / scale / rotation / flip, affine crop, normalise, Gaussian heatmaps + target weights, "
                "float32 NHWC) against grain worker processes (0: in the main process), on generated "
                "640x427/427x640 JPEGs with a COCO person_keypoints JSON; beside it, the images/s of "
                "sbpn_resnet18's training step (mlpbnn.train.step.make_train_step, keypoints task, "
                "mlpbnn.train.optim Adam)",
        "dataset": "coco", "images": args.images, "person_boxes": persons, "mean_jpeg_bytes": round(mean_bytes),
        "image_size": [height, width], "heatmap_size": [height // 4, width // 4],
        "prepare_seconds": round(prep_s, 2), **common_payload(m, args, args.workers, cores, step_rate),
        "train_step_model": "sbpn_resnet18 (head binary, weight_estimator mlp, activation_estimator approx_sign)",
        "train_step_seconds": None if step_s is None else round(step_s, 2),
        "train_step_compile_seconds": None if compile_s is None else round(compile_s, 1),
        "load_average_1min_end": round(load_end[0], 2),
    })
    print(f"wrote {path}")


def main() -> None:
    cores = os.cpu_count() or 1
    default = ",".join(str(2**i) for i in range(5) if 2**i <= min(cores, MAX_WORKERS))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("imagenet", "coco"), default="imagenet")
    parser.add_argument("--workers", type=worker_counts, default=worker_counts(default),
                        help=f"grain worker processes, comma-separated, 0..{MAX_WORKERS} (default {default})")
    parser.add_argument("--images", type=int, default=256, help="generated training JPEGs")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=16, help="timed batches per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per setting (median; interleaved)")
    parser.add_argument("--size", type=int, default=None,
                        help="crop size: imagenet the side (default 224), coco the height (default 256; width 3/4)")
    parser.add_argument("--step_batch", type=int, default=None,
                        help="batch of the training step timed (0: skip; default 16 imagenet, 8 coco)")
    args = parser.parse_args()
    coco = args.dataset == "coco"
    if args.size is None:
        args.size = 256 if coco else 224
    if args.step_batch is None:
        args.step_batch = 8 if coco else 16
    if coco and (args.size % 16 or args.size < 32):
        parser.error(f"--size for coco must be a multiple of 16 and >= 32 (width 3/4 of it), got {args.size}")
    (run_coco if coco else run_imagenet)(args, cores)


if __name__ == "__main__":
    main()
