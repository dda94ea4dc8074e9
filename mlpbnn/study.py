"""K training runs of one network as one compiled program: ``jax.vmap`` over copies.

Research on estimators needs many short runs (seeds, learning rates, estimator inits), and a small
network leaves most of an accelerator idle. ``Study`` trains K copies at once: the trainer's own
step (``mlpbnn.train.step.make_train_step``: the task's loss, the optimizer of
``mlpbnn.train.optim``, the metrics) is vmapped over a leading copy axis of the ``TrainState`` and
of the batch and jit-compiled once; evaluation vmaps the trainer's eval step over the copies'
variables on the shared evaluation batches and feeds one task evaluator per copy. Every copy
keeps its own metrics.

A copy (``Copy``) has its own seed, which, as ``mlpbnn.train.run`` with ``config.seed`` = that
seed, draws the initial variables (key ``fold_in(PRNGKey(seed), 0)``) and the input order
(``data.create(config.data, seed)``), and its own numeric hyper-parameters:

- ``lr_scale``, ``estimator_lr_scale`` multiply the learning rates of the main optimizer (every
  partition) and of the estimator's optimizer, schedules included. Every optimizer of
  ``mlpbnn.train.optim`` ends in ``scale_by_learning_rate``, so scaling its learning rate scales
  its updates; ``scale_updates`` does that with factors kept in the optimizer state, where vmap
  sees them as per-copy data. (``optax.inject_hyperparams`` cannot carry them: the learning rates
  are schedules, recomputed from the step count.) A copy with ``lr_scale`` = s computes what the
  trainer computes with ``optimizer.learning_rate`` times s (bitwise for powers of two; tested).
- ``estimator_init_scale`` multiplies the last layer of every learnable estimator's theta at
  initialisation (``w1`` and ``b1`` of ``mlp``/``linear``): the output scale of f, hence its
  initial slope at 0.

Not supported here (they are the trainer's): a teacher, two-stage training, ``init_checkpoint``,
several devices or processes (the study runs on one device).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlpbnn import data, models, tasks
from mlpbnn import layers as L
from mlpbnn.data.base import HOST, Dataset
from mlpbnn.train import optim
from mlpbnn.train.config import ConfigError, model_kwargs, total_steps, validate
from mlpbnn.train.evaluation import evaluate
from mlpbnn.train.step import FLAGS, TrainState, make_eval_step, make_train_step

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Copy:
    """One run of a study: its seed and its numeric hyper-parameters (multipliers of the config's)."""

    seed: int
    lr_scale: float = 1.0
    estimator_lr_scale: float = 1.0
    estimator_init_scale: float = 1.0

    def label(self) -> str:
        extra = [f"{f.name}={getattr(self, f.name):g}" for f in dataclasses.fields(self)[1:]
                 if getattr(self, f.name) != f.default]
        return f"seed {self.seed}" + (f" ({', '.join(extra)})" if extra else "")


class ScaledState(NamedTuple):
    """``scale_updates``' state: the wrapped optimizer's, and the two update factors."""

    inner: Any
    lr_scale: Array
    estimator_lr_scale: Array

    @property
    def inner_states(self) -> Any:
        """The wrapped partitioned optimizer's states, where ``optim.learning_rates`` (and so the
        train step's ``lr/*`` metrics: the unscaled rates) reads them."""
        return self.inner.inner_states


def scale_updates(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` (an ``optim.make`` optimizer of ``{'params', 'estimator'}``) with its updates to
    ``params`` times ``state.lr_scale`` and to ``estimator`` times ``state.estimator_lr_scale``
    (both 1 after ``init``; set them in the state)."""

    def init(params: Any) -> ScaledState:
        one = jnp.ones((), jnp.float32)
        return ScaledState(tx.init(params), one, one)

    def update(updates: Any, state: ScaledState, params: Any = None) -> tuple[Any, ScaledState]:
        updates, inner = tx.update(updates, state.inner, params)
        scales = {"params": state.lr_scale, "estimator": state.estimator_lr_scale}
        updates = {k: jax.tree.map(lambda u, s=scales[k]: u * s.astype(u.dtype), v) for k, v in updates.items()}
        return updates, state._replace(inner=inner)

    return optax.GradientTransformation(init, update)


def scale_estimator_init(estimator: Any, scale: Array) -> Any:
    """The estimator collection with the last layer (``w{L}``, ``b{L}``: the highest index) of
    every theta in it multiplied by ``scale``."""
    flat = flax.traverse_util.flatten_dict(dict(estimator))
    last: dict[tuple[str, ...], int] = {}
    for *parent, leaf in flat:
        if leaf[:1] in ("w", "b") and leaf[1:].isdigit():
            last[tuple(parent)] = max(last.get(tuple(parent), -1), int(leaf[1:]))
    out = {}
    for path, v in flat.items():
        *parent, leaf = path
        top = last.get(tuple(parent))
        out[path] = v * scale.astype(v.dtype) if top is not None and leaf in (f"w{top}", f"b{top}") else v
    return flax.traverse_util.unflatten_dict(out) if out else estimator


def stack(trees: Sequence[Any]) -> Any:
    """Trees -> one tree with a leading copy axis."""
    return jax.tree.map(lambda *a: np.stack(a), *trees)


def unstack(tree: Any, i: int) -> Any:
    """Copy ``i`` of a stacked tree."""
    return jax.tree.map(lambda a: a[i], tree)


@dataclasses.dataclass
class StudyResult:
    """What ``Study.run`` measured, per copy (lists in the order of ``copies``)."""

    copies: list[Copy]
    train: list[list[dict[str, float]]]     # per log window: step, the step's metric means, examples/s
    eval: list[list[dict[str, float]]]      # per evaluation: step and the task evaluator's result
    estimator: list[list[tuple[int, Any]]]  # (step, estimator collection as numpy) at 0 and each evaluation
    diverged_at: list[int | None]           # the first step with a non-finite loss or gradient, or None
    steps: int
    compile_seconds: float
    train_seconds: float                    # the training steps only (no evaluation, no compilation)
    eval_seconds: float
    batch_size: int
    state: TrainState                       # the final state, copies stacked

    @property
    def examples_per_sec(self) -> float:
        """Training examples of all copies per second of training steps."""
        return self.steps * len(self.copies) * self.batch_size / self.train_seconds if self.train_seconds else 0.0


class Study:
    """K copies of the network of ``config`` trained together (``Copy`` or a seed per copy).

    ``datasets`` (optional): one dataset per copy instead of ``data.create(config.data, seed)``,
    e.g. a transformed one; evaluation uses the first one's evaluation batches, which must be the
    same for every copy (they are for every mlpbnn dataset: the seed only orders training input).
    """

    def __init__(self, config: Any, copies: Sequence[Copy | int], datasets: Sequence[Dataset] | None = None):
        self.copies = [c if isinstance(c, Copy) else Copy(int(c)) for c in copies]
        if not self.copies:
            raise ValueError("a study needs at least one copy")
        config = config.copy_and_resolve_references()
        config.num_devices = 1
        validate(config, jax.device_count())
        for field, unsupported in (("teacher.checkpoint", config.teacher.checkpoint),
                                   ("two_stage.enabled", config.two_stage.enabled),
                                   ("init_checkpoint", config.init_checkpoint)):
            if unsupported:
                raise ConfigError(f"config.{field}: not supported by mlpbnn.study (use mlpbnn.train.run)")
        self.config = config
        if datasets is None:
            by_seed: dict[int, Dataset] = {}
            for c in self.copies:
                if c.seed not in by_seed:
                    by_seed[c.seed] = data.create(config.data, c.seed)
            datasets = [by_seed[c.seed] for c in self.copies]
        if len(datasets) != len(self.copies):
            raise ValueError(f"{len(datasets)} datasets for {len(self.copies)} copies")
        self.datasets = list(datasets)
        self.task = tasks.create(config, self.datasets[0])
        self.total = total_steps(config, self.datasets[0].train_size)
        self.steps_per_epoch = self.datasets[0].train_size / config.batch_size
        self.eval_batch = config.eval_batch_size if config.eval_batch_size != -1 else config.batch_size
        self.model = models.create(config.model.name, dtype=jnp.dtype(config.dtype), **self.task.model_args(),
                                   **model_kwargs(config))
        self._dummy = jnp.zeros((1, *self.datasets[0].image_shape), jnp.float32)
        self.binary = L.binary_layer_paths(self.model, self._dummy, train=False)
        shapes = jax.eval_shape(lambda: self.model.init(jax.random.PRNGKey(0), self._dummy, train=False))
        trainable = {"params": shapes["params"], "estimator": shapes.get("estimator", {})}
        tx, self.schedules = optim.make(config, trainable, self.binary, self.total, self.steps_per_epoch)
        self.tx = scale_updates(tx)
        step = make_train_step(self.model, self.tx, self.task, total_steps=self.total)
        self.train_step = jax.jit(jax.vmap(step, in_axes=(0, 0, None)), donate_argnums=(0,))
        self.eval_step = jax.jit(jax.vmap(make_eval_step(self.model, self.task), in_axes=(0, None)))

    @property
    def k(self) -> int:
        return len(self.copies)

    # ------------------------------------------------------------------ state and data

    def _init_one(self, key: Array, lr_scale: Array, estimator_lr_scale: Array,
                  estimator_init_scale: Array) -> TrainState:
        """One copy's state as the trainer makes it (``Trainer._setup_stage``), then its hparams."""
        variables = self.model.init(jax.random.fold_in(key, 0), self._dummy, train=False)
        estimator = scale_estimator_init(variables.get("estimator", {}), estimator_init_scale)
        trainable = {"params": variables["params"], "estimator": estimator}
        opt_state = self.tx.init(trainable)._replace(lr_scale=lr_scale, estimator_lr_scale=estimator_lr_scale)
        return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                          batch_stats=variables.get("batch_stats", {}), estimator=estimator, opt_state=opt_state,
                          rng=key)

    def init(self) -> TrainState:
        """Every copy's initial state, stacked on a leading axis."""
        keys = jnp.stack([jax.random.PRNGKey(c.seed) for c in self.copies])
        hp = [jnp.asarray([getattr(c, f) for c in self.copies], jnp.float32)
              for f in ("lr_scale", "estimator_lr_scale", "estimator_init_scale")]
        return jax.jit(jax.vmap(self._init_one))(keys, *hp)

    def batches(self, position: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Stacked training batches (copy, batch, ...) from input ``position`` on: each copy reads
        its own dataset's stream; copies with the same dataset share its batches."""
        streams: dict[int, Iterator] = {}
        for ds in self.datasets:
            if id(ds) not in streams:
                streams[id(ds)] = ds.train_batches(position, self.config.batch_size)
        try:
            while True:
                current = {i: next(s)[0] for i, s in streams.items()}
                yield stack([current[id(ds)] for ds in self.datasets])
        finally:
            for s in streams.values():
                close = getattr(s, "close", None)
                if close is not None:
                    close()

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, state: TrainState) -> list[dict[str, float]]:
        """Every copy's evaluation (the task's exact evaluator over the whole evaluation set), by
        the trainer's evaluation loop (``mlpbnn.train.evaluation.evaluate``)."""
        ds = self.datasets[0]

        def per_copy(out: dict[str, Array]) -> list[dict[str, Any]]:
            out = jax.device_get(out)
            return [{k: v[i] for k, v in out.items()} for i in range(self.k)]

        return evaluate(self.eval_step, state.variables(), ds.eval_batches(self.eval_batch),
                        [self.task.evaluator() for _ in self.copies],
                        lambda batch: {k: v for k, v in batch.items() if k != HOST}, per_copy, ds.eval_size)

    # ------------------------------------------------------------------ the run

    def benchmark(self, steps: int = 10, warmup: int = 2) -> dict[str, float]:
        """Speed of the vmapped train step (the copies' states and batches as in ``run``): compile
        seconds, then the median over ``steps`` timed steps after ``warmup`` ones, as seconds per
        step and training examples (of all copies) per second."""
        state = self.init()
        batches = self.batches(0)
        try:
            batch = next(batches)
            t0 = time.perf_counter()
            compiled = self.train_step.lower(state, batch, None).compile()
            compile_seconds = time.perf_counter() - t0
            times = []
            for i in range(warmup + steps):
                t0 = time.perf_counter()
                state, metrics = compiled(state, batch, None)
                jax.block_until_ready(metrics)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
                batch = next(batches)
        finally:
            batches.close()
        per_step = float(np.median(times))
        return {"copies": self.k, "batch_size": self.config.batch_size, "compile_seconds": compile_seconds,
                "seconds_per_step": per_step, "examples_per_sec": self.k * self.config.batch_size / per_step,
                "timed_steps": steps}

    def _lr_metric(self, key: str, i: int) -> float:
        c = self.copies[i]
        return c.estimator_lr_scale if key == "lr/estimator" else c.lr_scale

    def run(self, log: Callable[[str], None] | None = None, steps: int | None = None) -> StudyResult:
        """Trains every copy for the config's steps (or ``steps``), logging every
        ``log_every_steps`` and evaluating every ``eval_every_steps`` (-1: at the end only) and at
        the end. A copy whose loss or gradients become non-finite is reported
        (``diverged_at``) and the others go on."""
        config, k = self.config, self.k
        steps = self.total if steps is None else steps
        say = log or (lambda _msg: None)
        state = self.init()
        batches = self.batches(0)
        first = next(batches)
        t0 = time.perf_counter()
        compiled = self.train_step.lower(state, first, None).compile()
        compile_seconds = time.perf_counter() - t0
        say(f"{k} copies of {config.model.name} ({', '.join(c.label() for c in self.copies)}): {steps:,} steps "
            f"of {config.batch_size} ({steps / self.steps_per_epoch:.2f} epochs), compiled in {compile_seconds:.1f} s")
        result = StudyResult(self.copies, [[] for _ in range(k)], [[] for _ in range(k)], [[] for _ in range(k)],
                             [None] * k, steps, compile_seconds, 0.0, 0.0, config.batch_size, state)
        self._record_estimator(result, 0, state)
        pending: list[dict[str, Array]] = []
        t0 = time.perf_counter()
        try:
            batch = first
            for step in range(1, steps + 1):
                state, metrics = compiled(state, batch, None)
                pending.append(metrics)
                if step < steps:
                    batch = next(batches)  # the host prepares the next batch while the device computes
                evaluate = step == steps or (config.eval_every_steps > 0 and step % config.eval_every_steps == 0)
                if pending and (evaluate or step % config.log_every_steps == 0):
                    result.train_seconds += self._flush(result, pending, step, t0, say)
                    pending = []
                if evaluate:
                    t1 = time.perf_counter()
                    for i, r in enumerate(self.evaluate(state)):
                        result.eval[i].append({"step": step, **r})
                    self._record_estimator(result, step, state)
                    result.eval_seconds += time.perf_counter() - t1
                    shown = self.task.best_metric
                    say(f"step {step}: eval {shown} " + " ".join(f"{result.eval[i][-1][shown]:.4g}" for i in range(k)))
                if not pending:
                    t0 = time.perf_counter()  # the logged rate is of training steps only
        finally:
            batches.close()
        result.state = state
        return result

    def _flush(self, result: StudyResult, pending: list[dict[str, Array]], step: int, t0: float,
               say: Callable[[str], None]) -> float:
        values = jax.device_get(pending)  # waits for the steps: the rate is of computed steps
        seconds = time.perf_counter() - t0
        first = step - len(values) + 1
        for i in range(self.k):
            bad = [j for j, v in enumerate(values) if v["nonfinite"][i] or not math.isfinite(v["loss"][i])]
            if bad and result.diverged_at[i] is None:
                result.diverged_at[i] = first + bad[0]
                say(f"copy {i} ({self.copies[i].label()}): non-finite loss or gradients at step {first + bad[0]}")
            means = {key: float(np.mean([v[key][i] for v in values])) for key in values[0] if key not in FLAGS}
            means = {key: v * self._lr_metric(key, i) if key.startswith("lr/") else v for key, v in means.items()}
            means["epoch"] = step * self.config.batch_size / self.datasets[i].train_size
            result.train[i].append({"step": step, **means, "examples_per_sec": self.k * len(values) *
                                    self.config.batch_size / seconds})
        shown = self.task.progress_metric
        say(f"step {step}: {self.k * len(values) * self.config.batch_size / seconds:,.0f} examples/s; loss "
            + " ".join(f"{result.train[i][-1]['loss']:.4f}" for i in range(self.k))
            + (f"; {shown} " + " ".join(f"{result.train[i][-1][shown]:.4g}" for i in range(self.k))
               if shown in result.train[0][-1] else ""))
        return seconds

    def _record_estimator(self, result: StudyResult, step: int, state: TrainState) -> None:
        estimator = jax.device_get(state.estimator)
        for i in range(self.k):
            result.estimator[i].append((step, unstack(estimator, i)))
