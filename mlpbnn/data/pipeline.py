"""What the image pipelines share: ImageNet mean/std normalisation, worker counts, the batch
functions of a training stream and of an evaluation pass, and the grain stream that runs them in
worker processes (or read threads) in order.

A dataset describes a split as ``Examples`` (picklable: its size, its seed, and how to make the rows
of given examples); ``TrainBatch`` and ``EvalBatch`` turn that into a function ``k -> this
process's rows of the k-th batch`` (pure, all randomness drawn from the seed and the global stream
position), mapped over ``grain.MapDataset.range(length)``; grain (https://github.com/google/grain)
runs it. Each worker makes whole batches, so the batches never depend on the worker count.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np

from mlpbnn.data.base import Batch, eval_pad_size, local_slice, pad_to, stream_indices

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


class Examples(Protocol):
    """One split as grain's workers see it (picklable)."""

    def __len__(self) -> int: ...

    def train_batch(self, indices: np.ndarray, positions: np.ndarray) -> Batch:
        """The examples at ``indices``, augmented as at their global stream ``positions``."""

    def eval_batch(self, indices: np.ndarray) -> Batch:
        """The examples at ``indices`` (possibly none: zero rows), not augmented."""


class TrainBatch:
    """grain map function: ``k`` -> this process's rows of the ``k``-th global batch of the stream
    that starts at ``start`` (a fresh permutation of the examples per epoch, drawn from ``seed``)."""

    def __init__(self, examples: Examples, seed: int, start: int, global_batch: int, rows: slice):
        self.examples, self.seed, self.start, self.global_batch, self.rows = (
            examples, int(seed), int(start), int(global_batch), rows)
        # stream_indices draws a whole permutation per call: keep a chunk of the stream. A tuple,
        # replaced whole, so that concurrent read threads never see half an update.
        self._chunk = max(64 * self.global_batch, 4096)
        self._cache: tuple[int, np.ndarray] = (0, np.empty(0, np.int64))

    def indices(self, pos: int) -> np.ndarray:
        """Example indices of the global batch at stream position ``pos``."""
        start, cache = self._cache
        if not start <= pos <= pos + self.global_batch <= start + len(cache):
            start, cache = pos, stream_indices(pos, self._chunk, len(self.examples), self.seed)
            self._cache = (start, cache)
        return cache[pos - start:pos - start + self.global_batch]

    def __call__(self, k: int) -> Batch:
        pos = self.start + int(k) * self.global_batch
        positions = np.arange(pos, pos + self.global_batch)[self.rows]
        return self.examples.train_batch(self.indices(pos)[self.rows], positions)


class EvalBatch:
    """grain map function: ``k`` -> this process's rows of the ``k``-th evaluation batch, padded
    with zeros after the last example and masked (the real rows of a process are a prefix of its
    slice)."""

    def __init__(self, examples: Examples, global_batch: int, rows: slice):
        self.examples, self.global_batch, self.rows = examples, int(global_batch), rows

    def __call__(self, k: int) -> Batch:
        start = int(k) * self.global_batch
        idx = np.arange(start, start + self.global_batch)[self.rows]
        idx = idx[idx < len(self.examples)]
        n = self.rows.stop - self.rows.start
        batch = self.examples.eval_batch(idx)
        return pad_to(batch, n) if len(idx) < n else {**batch, "mask": np.ones(n, np.float32)}


def train_batches(examples: Examples, seed: int, position: int, global_batch: int, process_index: int,
                  process_count: int, workers: int, prefetch: int = 1) -> Iterator[tuple[Batch, int]]:
    """``Dataset.train_batches`` of ``examples``: this process's rows of each global batch from
    ``position`` on, each with the position after it."""
    fn = TrainBatch(examples, seed, position, global_batch, local_slice(global_batch, process_index, process_count))
    with contextlib.closing(grain_stream(fn, ENDLESS, workers, prefetch)) as batches:
        for k, batch in enumerate(batches):
            yield batch, int(position) + (k + 1) * global_batch


def eval_batches(examples: Examples, global_batch: int, process_index: int, process_count: int,
                 workers: int, prefetch: int = 1) -> Iterator[Batch]:
    """``Dataset.eval_batches`` of ``examples``: every example once, the last batch padded and masked."""
    fn = EvalBatch(examples, global_batch, local_slice(global_batch, process_index, process_count))
    length = eval_pad_size(len(examples), global_batch) // global_batch
    with contextlib.closing(grain_stream(fn, length, workers, prefetch)) as batches:
        yield from batches


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
