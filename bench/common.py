"""Shared helpers for benchmarks: interleaved timing, machine description, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

RESULTS = Path(__file__).resolve().parent / "results"


def block(tree: Any) -> Any:
    return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, tree)


def interleaved_times(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1, burst: int = 1,
                      pause: float = 0.0) -> dict[str, list[float]]:
    """Seconds per call of each function, timed round-robin so that machine noise (this is a
    shared 2-core box) hits every candidate alike: in each round each candidate runs ``burst``
    calls back to back (their mean is one sample), after ``pause`` seconds of sleep (lets another
    framework's spinning worker threads go idle first)."""
    for fn in fns.values():
        for _ in range(warmup):
            block(fn())
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            if pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            for _ in range(burst):
                block(fn())
            times[name].append((time.perf_counter() - t0) / burst)
    return times


def interleaved_medians(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function (``interleaved_times``)."""
    return {k: statistics.median(v) for k, v in interleaved_times(fns, rounds, warmup).items()}


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()]}


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path
