"""What the image pipelines share: ImageNet mean/std normalisation, worker counts, and the grain
stream that runs a batch function in worker processes (or read threads) in order.

A pipeline here is a function ``k -> this process's rows of the k-th batch`` (pure, picklable, all
randomness drawn from the seed and the global stream position), mapped over
``grain.MapDataset.range(length)``; grain (https://github.com/google/grain) runs it. Each worker
makes whole batches, so the batches never depend on the worker count.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

Batch = dict[str, Any]

MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # ImageNet RGB statistics on the 0-1 scale
STD = np.array([0.229, 0.224, 0.225], np.float32)
# Normalisation as one lookup per channel: table[c, v] = (v / 255 - MEAN[c]) / STD[c].
_SCALE = (1.0 / (255.0 * STD)).astype(np.float32)
_OFFSET = (-MEAN / STD).astype(np.float32)
_TABLE = np.ascontiguousarray((np.arange(256, dtype=np.float32)[:, None] * _SCALE + _OFFSET).T)

ENDLESS = 2**62  # batches in a training stream: grain's MapDataset wants a length
AUTO_WORKERS = 32  # the most grain worker processes that ``workers=-1`` starts


def normalise_into(out: np.ndarray, pixels: np.ndarray) -> None:
    """Writes the normalised float32 version of uint8 RGB ``pixels`` (h, w, 3) into ``out``."""
    for c in range(3):
        np.take(_TABLE[c], pixels[..., c], out=out[..., c])


def threads(workers: int) -> int:
    """``workers`` if positive, else one per core."""
    return workers if workers and workers > 0 else (os.cpu_count() or 1)


def worker_processes(workers: int) -> int:
    """``data.workers`` as a process count: -1 is one per core, at most ``AUTO_WORKERS`` (each is a
    Python process of ~0.3 GB, jax imported by grain, plus its batches in flight); 0 is none."""
    if int(workers) < -1:
        raise ValueError(f"data.workers must be -1 (one per core), 0 (in this process) or a count, got {workers}")
    return min(threads(-1), AUTO_WORKERS) if int(workers) < 0 else int(workers)


def absl_flags_parsed() -> None:
    """grain reads its absl flags (profiling, debug mode) when it starts workers; outside an absl app
    (tests, notebooks, benchmarks) nothing has parsed them, so their defaults are taken."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def grain_stream(fn: Callable[[int], Batch], length: int, workers: int, prefetch: int = 1) -> Iterator[Batch]:
    """Elements ``fn(0), fn(1), ...`` in order. With ``workers`` > 0, grain's ``mp_prefetch`` gives
    worker ``i`` the elements ``i, i + workers, ...`` and interleaves them back (``prefetch`` batches
    ready per worker); with 0, grain's read threads run ``fn`` in this process. Closing the generator
    (or dropping it) stops the workers."""
    import grain

    absl_flags_parsed()
    ds = grain.MapDataset.range(length).map(fn)
    if workers:
        # A worker computes one batch while ``prefetch`` wait in its queue: batches are large.
        pipeline = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)).mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch))
    else:
        n = threads(0)
        pipeline = ds.to_iter_dataset(grain.ReadOptions(num_threads=n, prefetch_buffer_size=n + prefetch))
    it = iter(pipeline)
    try:
        for batch in it:
            # Plain ndarray views (worker outputs arrive as grain's shared-memory array subclass).
            yield {k: _plain(v) for k, v in batch.items()}
    finally:
        it.close()


def _plain(v: Any) -> Any:
    return {k: np.asarray(x) for k, x in v.items()} if isinstance(v, dict) else np.asarray(v)
