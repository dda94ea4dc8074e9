"""ImageNet input-pipeline throughput: training images/s of ``mlpbnn.data.imagenet`` (grain pipeline:
array_record read, decode, Inception crop, flip, resize, normalise) against the number of grain worker
processes, on generated 500x375 JPEGs in the ILSVRC2012 layout prepared by TFDS's real imagenet2012
builder.

    python -m bench.input_pipeline [--workers 1,2] [--images 256] [--batch 64] [--batches 16] [--rounds 3]
                                   [--size 224] [--step_batch 16]

``--workers``: comma-separated worker counts, each 0..16 (0: decode in the main process with grain's
read threads); default 1, 2, 4, ... up to the core count (at most 16). Beside them, the images/s that a
``bireal_resnet18`` training step (BBC MLP on weights, ApproxSign activations, Adam; at ``--size``)
consumes on the same machine (``--step_batch 0`` skips it), and a GIL-free reference workload (zlib
in as many threads as workers) that says how many cores the shared machine gives at the moment.

Prints a table and writes bench/results/input_pipeline.json. ``input_rate(dataset, ...)`` is the
measurement, reusable for other datasets or beside a training step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import write_json
from mlpbnn.data import imagenet
from mlpbnn.data.base import Dataset

MAX_WORKERS = 16


def photo_like_jpeg(rng: np.random.Generator, height: int = 375, width: int = 500, quality: int = 90) -> bytes:
    """Random content with a photo's spectrum, roughly: a smooth random field (a 12x16 grid of
    random colours, bicubically enlarged) plus pixel noise; about 40-90 KB at quality 90, like
    ILSVRC's ~110 KB average image (pure noise would give ~170 KB and decode slower)."""
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
        rows += len(batch["labels"])
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
    """Evaluation images/s after ``warmup`` batches (which pay for the workers' start)."""
    batches = dataset.eval_batches(global_batch)
    for _ in range(warmup):
        next(batches)
    t0 = time.perf_counter()
    rows = sum(int(b["mask"].sum()) for b in batches)
    return rows / (time.perf_counter() - t0)


def worker_counts(text: str) -> list[int]:
    counts = [int(w) for w in text.split(",") if w.strip()]
    if not counts or any(not 0 <= w <= MAX_WORKERS for w in counts):
        raise argparse.ArgumentTypeError(f"worker counts must be 0..{MAX_WORKERS}, got {text!r}")
    return counts


def main() -> None:
    cores = os.cpu_count() or 1
    default = ",".join(str(2**i) for i in range(5) if 2**i <= min(cores, MAX_WORKERS))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=worker_counts, default=worker_counts(default),
                        help=f"grain worker processes, comma-separated, 0..{MAX_WORKERS} (default {default})")
    parser.add_argument("--images", type=int, default=256, help="generated training JPEGs")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=16, help="timed batches per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per setting (median; interleaved)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--step_batch", type=int, default=16, help="batch of the training step timed (0: skip)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_imagenet_") as tmp:
        t0 = time.perf_counter()
        data_dir, mean_bytes = make_prepared(Path(tmp), args.images, n_val=(max(args.workers) + 5) * args.batch)
        prep_s = time.perf_counter() - t0
        datasets = {w: imagenet.ImageNet(data_dir, 0, image_size=args.size, workers=w) for w in args.workers}
        rates: dict[int, list[float]] = {w: [] for w in args.workers}
        starts: dict[int, list[float]] = {w: [] for w in args.workers}
        refs: dict[int, list[float]] = {w: [] for w in args.workers}
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
        top = max(args.workers)
        evals = eval_rate(datasets[top], args.batch, warmup=max(top, 1))
        load_after = os.getloadavg()

    med = {w: statistics.median(v) for w, v in rates.items()}
    ref = {w: statistics.median(v) for w, v in refs.items()}
    start = {w: statistics.median(v) for w, v in starts.items()}
    base = min(args.workers, key=lambda w: (w == 0, w))  # scaling relative to the fewest worker processes
    print(f"{args.images} generated 500x375 JPEGs (mean {mean_bytes / 1024:.0f} KB), crop {args.size}, "
          f"batch {args.batch}, {cores} cores; prepared in {prep_s:.1f} s; load average {load_before[0]:.1f} "
          f"before, {load_after[0]:.1f} after")
    print(f"{'workers':<10} {'images/s':>9} {'per worker':>11} {'first batch':>12} {'scaling':>8} {'zlib scaling':>13}")
    for w in args.workers:
        per = med[w] / w if w else float("nan")
        print(f"{w if w else '0 (main)':<10} {med[w]:9.1f} {per:11.1f} {start[w]:11.2f}s "
              f"{med[w] / med[base]:7.2f}x {ref[w] / ref[max(base, 1)]:12.2f}x")
    print(f"{'eval':<10} {evals:9.1f}   (resize {round(args.size * 256 / 224)} + centre crop, {top} workers)")

    step_rate = None  # after the input table, which stands on its own
    if args.step_batch:
        from bench.common import interleaved_medians
        from bench.train_step import mlpbnn_step

        step = mlpbnn_step("bireal_resnet18", "mlp", args.size, args.step_batch, "auto", small_inputs=False)
        step_rate = args.step_batch / interleaved_medians({"step": step}, args.rounds)["step"]

    if step_rate is not None:
        print(f"{'consumed':<10} {step_rate:9.1f}   by a bireal_resnet18 training step at {args.size}x{args.size}, "
              f"batch {args.step_batch}, on the same {cores} cores: the input of "
              f"{step_rate / (med[base] / max(base, 1)):.2f} worker processes at the measured rate")
    path = write_json("input_pipeline", {
        "what": "training-input images/s of mlpbnn.data.imagenet (grain: array_record read, decode + Inception "
                "crop + flip + resize + normalise, float32 NHWC) against grain worker processes (0: in the main "
                "process), on generated 500x375 JPEGs prepared by TFDS imagenet2012 (array_record)",
        "command": "python -m bench.input_pipeline " + " ".join(
            f"--{k} {','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()),
        "images": args.images, "mean_jpeg_bytes": round(mean_bytes), "image_size": args.size,
        "global_batch": args.batch, "timed_batches": args.batches, "rounds": args.rounds,
        "prepare_seconds": round(prep_s, 2),
        "train_images_per_s": {str(w): round(med[w], 1) for w in args.workers},
        "train_rounds": {str(w): [round(r, 1) for r in v] for w, v in rates.items()},
        "seconds_to_first_batch": {str(w): round(start[w], 2) for w in args.workers},
        "reference_zlib_per_s": {str(w): round(ref[w], 2) for w in args.workers},
        "eval_images_per_s": round(evals, 1), "eval_workers": top,
        "cores": cores,
        "load_average_1min": [round(load_before[0], 2), round(load_after[0], 2)],
        "train_step_images_per_s": None if step_rate is None else round(step_rate, 2),
        "train_step_batch": args.step_batch,
        "note": "the machine may be shared: the zlib reference (threads = workers) shows how many cores were "
                "actually available",
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
