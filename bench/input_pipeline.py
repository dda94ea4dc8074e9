"""ImageNet input-pipeline throughput: training images/s of ``mlpbnn.data.imagenet`` (decode,
Inception crop, flip, resize, normalise) with one decode thread and with all cores, on generated
500x375 JPEGs in the ILSVRC2012 layout prepared by TFDS's real imagenet2012 builder.

    python bench/input_pipeline.py [--images 256] [--batch 64] [--batches 8] [--rounds 3] [--size 224]
                                   [--step_batch 16]

Beside it, the images/s that a ``bireal_resnet18`` training step (BBC MLP on weights, ApproxSign
activations, Adam; at ``--size``) consumes on the same machine (``--step_batch 0`` skips it).

Prints a table and writes bench/results/input_pipeline.json. ``input_rate(dataset, ...)`` is the
measurement, reusable for other datasets or beside a training step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import write_json  # noqa: E402
from mlpbnn.data import imagenet  # noqa: E402
from mlpbnn.data.base import Dataset  # noqa: E402


def photo_like_jpeg(rng: np.random.Generator, height: int = 375, width: int = 500, quality: int = 90) -> bytes:
    """Random content with a photo's spectrum, roughly: a smooth random field (a 12x16 grid of
    random colours, bicubically enlarged) plus pixel noise; about 40-90 KB at quality 90, like
    ILSVRC's ~110 KB average image (pure noise would give ~170 KB and decode slower)."""
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8)).resize((width, height),
                                                                                 Image.Resampling.BICUBIC)
    arr = np.asarray(coarse, np.int16) + rng.integers(-24, 25, (height, width, 3), np.int16)
    return imagenet.encode_jpeg(np.clip(arr, 0, 255).astype(np.uint8), quality=quality)


def make_prepared(root: Path, n_images: int, synsets: int = 8, seed: int = 0) -> tuple[str, float]:
    """Writes ``n_images`` training JPEGs (plus 32 validation ones) as ILSVRC2012 tars under
    ``root/manual`` and prepares them in ``root/tfds``; returns (data dir, mean JPEG size in bytes)."""
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(seed)
    names = tfds.core.tfds_path("datasets/imagenet2012/labels.txt").read_text().split()[:synsets]
    train: dict[str, list[tuple[str, bytes]]] = {s: [] for s in names}
    for i in range(n_images):
        s = names[i % synsets]
        train[s].append((f"{s}_{i}.JPEG", photo_like_jpeg(rng)))
    val = [(f"ILSVRC2012_val_{i + 1:08d}.JPEG", photo_like_jpeg(rng)) for i in range(32)]
    imagenet.write_tars(root / "manual", train, val)
    imagenet.prepare(str(root / "manual"), str(root / "tfds"), log=lambda _: None)
    sizes = [len(d) for images in train.values() for _, d in images]
    return str(root / "tfds"), float(np.mean(sizes))


def input_rate(dataset: Dataset, global_batch: int, batches: int, warmup: int = 1, position: int = 0,
               process_index: int = 0, process_count: int = 1) -> float:
    """Host images/s of ``dataset.train_batches``: a fresh stream from ``position``, ``warmup``
    batches untimed (thread start, prefetch fill), then ``batches`` timed."""
    it = dataset.train_batches(position, global_batch, process_index, process_count)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    rows = 0
    for _ in range(batches):
        batch, _ = next(it)
        rows += len(batch["labels"])
    seconds = time.perf_counter() - t0
    it.close()
    return rows / seconds


def reference_rate(threads: int, tasks: int = 24) -> float:
    """zlib compressions/s of 1 MB of random bytes with ``threads`` threads: a GIL-free workload whose
    scaling says how many cores the (shared) machine actually gives us at the moment."""
    data = os.urandom(1 << 20)
    with ThreadPoolExecutor(threads) as pool:
        t0 = time.perf_counter()
        list(pool.map(lambda _: zlib.compress(data, 6), range(tasks)))
        return tasks / (time.perf_counter() - t0)


def eval_rate(dataset: Dataset, global_batch: int) -> float:
    t0 = time.perf_counter()
    rows = sum(int(b["mask"].sum()) for b in dataset.eval_batches(global_batch))
    return rows / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="generated training JPEGs")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per setting (median; interleaved)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--step_batch", type=int, default=16, help="batch of the training step timed (0: skip)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1

    with tempfile.TemporaryDirectory(prefix="bench_imagenet_") as tmp:
        t0 = time.perf_counter()
        data_dir, mean_bytes = make_prepared(Path(tmp), args.images)
        prep_s = time.perf_counter() - t0
        settings = {"1 thread": 1, f"{cores} threads": cores}
        datasets = {k: imagenet.ImageNet(data_dir, 0, image_size=args.size, workers=w)
                    for k, w in settings.items()}
        rates: dict[str, list[float]] = {k: [] for k in settings}
        refs: dict[str, list[float]] = {k: [] for k in settings}
        load_before = os.getloadavg()
        position = 0
        for _ in range(args.rounds):  # interleaved, so that noise on the shared machine hits all alike
            for k, ds in datasets.items():
                refs[k].append(reference_rate(settings[k]))
                rates[k].append(input_rate(ds, args.batch, args.batches, position=position))
                position += (args.batches + 1) * args.batch
        evals = eval_rate(datasets[f"{cores} threads"], args.batch)
        load_after = os.getloadavg()

    step_rate = None
    if args.step_batch:
        from bench.common import interleaved_medians
        from bench.train_step import mlpbnn_step

        step = mlpbnn_step("bireal_resnet18", "mlp", args.size, args.step_batch, "auto", small_inputs=False)
        step_rate = args.step_batch / interleaved_medians({"step": step}, args.rounds)["step"]

    med = {k: statistics.median(v) for k, v in rates.items()}
    one, allc = med["1 thread"], med[f"{cores} threads"]
    ref_scaling = statistics.median(refs[f"{cores} threads"]) / statistics.median(refs["1 thread"])
    print(f"{args.images} generated 500x375 JPEGs (mean {mean_bytes / 1024:.0f} KB), crop {args.size}, "
          f"batch {args.batch}; prepared in {prep_s:.1f} s")
    print(f"{'setting':<12} {'images/s':>9} {'per core':>9}")
    print(f"{'1 thread':<12} {one:9.1f} {one:9.1f}")
    print(f"{f'{cores} threads':<12} {allc:9.1f} {allc / cores:9.1f}   (x{allc / one:.2f} of one thread)")
    print(f"reference GIL-free workload (zlib) scales x{ref_scaling:.2f} from 1 to {cores} threads now "
          f"(load average {load_before[0]:.1f} before, {load_after[0]:.1f} after): the pipeline reaches "
          f"{(allc / one) / ref_scaling:.0%} of the parallelism the machine gives")
    print(f"{'eval':<12} {evals:9.1f} {evals / cores:9.1f}   (resize {round(args.size * 256 / 224)} + centre crop, "
          f"{cores} threads)")
    if step_rate is not None:
        print(f"{'consumed':<12} {step_rate:9.1f}             by a bireal_resnet18 training step at {args.size}x"
              f"{args.size}, batch {args.step_batch}, on the same {cores} cores: the input needs "
              f"{step_rate / one:.2f} of them")
    path = write_json("input_pipeline", {
        "what": "training-input images/s of mlpbnn.data.imagenet (decode + Inception crop + flip + resize + "
                "normalise, float32 NHWC) on generated 500x375 JPEGs prepared by TFDS imagenet2012 (array_record)",
        "images": args.images, "mean_jpeg_bytes": round(mean_bytes), "image_size": args.size,
        "global_batch": args.batch, "timed_batches": args.batches, "rounds": args.rounds,
        "prepare_seconds": round(prep_s, 2),
        "train_images_per_s": {"1_thread": round(one, 1), "all_cores": round(allc, 1)},
        "train_images_per_s_per_core": {"1_thread": round(one, 1), "all_cores": round(allc / cores, 1)},
        "train_rounds": {k: [round(r, 1) for r in v] for k, v in rates.items()},
        "eval_images_per_s_all_cores": round(evals, 1),
        "cores": cores,
        "reference_zlib_scaling_1_to_all_cores": round(ref_scaling, 2),
        "pipeline_scaling_1_to_all_cores": round(allc / one, 2),
        "load_average_1min": [round(load_before[0], 2), round(load_after[0], 2)],
        "train_step_images_per_s": None if step_rate is None else round(step_rate, 2),
        "train_step_batch": args.step_batch,
        "note": "the machine is shared: the zlib reference shows how many cores were actually available",
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
