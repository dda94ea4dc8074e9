"""Shared helpers for benchmarks: interleaved timing, machine description, JSON output, and a
heatmap model's real keypoints training step."""

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
import numpy as np

# Where benches write their JSON: bench/results, or $MLPBNN_BENCH_RESULTS (bench/gpu_session.sh's folder).
RESULTS = Path(os.environ.get("MLPBNN_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


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


def estimator_options(name: str) -> dict[str, Any]:
    """The estimators a binary model is trained with in these benches (BBC's MLP on weights,
    ApproxSign on activations; arXiv 2205.07433); {} for a full-precision model."""
    from mlpbnn import models

    return {"weight_estimator": "mlp", "activation_estimator": "approx_sign"} if models.info(name).binary else {}


def trainer_step(model: Any, task: Any, config: Any, data: dict[str, Any], total_steps: int,
                 steps_per_epoch: float, teacher: Any = None) -> tuple[Callable[[], Any], dict[str, float]]:
    """(a zero-argument function running one step of the project's training on the fixed batch
    ``data``, {'init_s', 'compile_s'}): the trainer's ``make_train_step`` (loss, metrics, flip
    ratio, nonfinite check) for ``task``, with ``mlpbnn.train.optim``'s partitioned optimizer
    built from ``config`` (its step reads the learning rates from that optimizer's state) and
    ``teacher``'s forward for distillation if given; jitted with the state donated and compiled
    ahead of time. The function's ``compiled`` attribute is the executable (for its memory)."""
    import jax.numpy as jnp

    from mlpbnn import layers
    from mlpbnn.train import optim
    from mlpbnn.train.step import TrainState, make_train_step

    t0 = time.perf_counter()
    probe = data["images"][:1]
    variables = model.init(jax.random.key(0), probe, train=False)
    teacher_vars = None if teacher is None else teacher.init(jax.random.key(1), probe, train=False)
    trainable = {"params": variables["params"], "estimator": variables.get("estimator", {})}
    tx, _ = optim.make(config, trainable, layers.binary_layer_paths(model, probe, train=False), total_steps,
                       steps_per_epoch=steps_per_epoch)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                       batch_stats=variables.get("batch_stats", {}), estimator=trainable["estimator"],
                       opt_state=tx.init(trainable), rng=jax.random.PRNGKey(0))
    block((state, teacher_vars))
    t1 = time.perf_counter()
    step = make_train_step(model, tx, task, total_steps=total_steps, teacher=teacher)
    compiled = jax.jit(step, donate_argnums=0).lower(state, data, teacher_vars).compile()
    t2 = time.perf_counter()
    holder = [state]

    def run():
        holder[0], metrics = compiled(holder[0], data, teacher_vars)
        return metrics["loss"]

    run.compiled = compiled
    return run, {"init_s": t1 - t0, "compile_s": t2 - t1}


def heatmap_step(name: str, height: int, width: int, batch: int, total_steps: int = 1000, num_joints: int = 17,
                 **options: Any) -> tuple[Callable[[], Any], dict[str, float]]:
    """``trainer_step`` for the keypoints training of heatmap model ``name`` on a fixed random
    batch, with the Keypoints task and the keypoints config's Adam (1e-3, constant, for the model
    and the estimator). ``options`` go to ``models.create`` after ``estimator_options(name)``."""
    import jax.numpy as jnp

    from mlpbnn import models
    from mlpbnn.tasks.keypoints import Keypoints
    from mlpbnn.train.config import base_config, keypoints_config

    model = models.create(name, num_joints=num_joints, **{**estimator_options(name), **options})
    heatmap_shape = (height // 4, width // 4, num_joints)
    rng = np.random.default_rng(0)
    data = {"images": jnp.asarray(rng.normal(size=(batch, height, width, 3)).astype(np.float32)),
            "heatmaps": jnp.asarray(rng.uniform(0, 1, (batch, *heatmap_shape)).astype(np.float32)),
            "target_weight": jnp.ones((batch, num_joints), jnp.float32)}
    return trainer_step(model, Keypoints(coco=None, heatmap_shape=heatmap_shape), keypoints_config(base_config()),
                        data, total_steps, steps_per_epoch=total_steps)
