"""The training loop of any task: config -> data, task -> mesh -> (stages of) model, optimizer,
state -> steps with periodic actions (log, evaluate, checkpoint); resumes from ``workdir`` when a
checkpoint is there.

``Trainer.run`` reads top to bottom: it locks the workdir and checks its config record
(``workdir``), ``_resume`` finds where a previous run stopped, ``_setup_stage`` builds one
stage's model, optimizer, state and compiled steps, ``_train`` runs its steps, ``_periodic`` does
what is due after a step, ``_finish`` evaluates and exports. One ``ExitStack`` closes the
progress bar, checkpoints, metric writer, signal handlers and lock on every path. A stop request
(``stop``: SIGTERM, SIGINT, ``max_runtime``) ends the run after the current step with a
checkpoint of it and raises ``Stopped``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from mlpbnn import complexity, data, models, tasks
from mlpbnn import layers as L
from mlpbnn.data.base import data_sharding, to_global
from mlpbnn.registry import from_section
from mlpbnn.tasks.base import local_rows
from mlpbnn.train import evaluation, optim
from mlpbnn.train import workdir as wd
from mlpbnn.train.checkpoint import CheckpointMismatch, Checkpoints
from mlpbnn.train.config import ConfigError, eval_batch_size, is_binary, model_kwargs, total_steps, validate
from mlpbnn.train.evaluation import EvalEntry
from mlpbnn.train.metrics import MetricWriter, parameter_overview
from mlpbnn.train.step import FLAGS, TrainState, make_eval_step, make_train_step
from mlpbnn.train.stop import Stopped, StopRequests, pack_pending, unpack_pending
from mlpbnn.variables_io import load_variables, save_variables


class TrainingDiverged(FloatingPointError):
    """A non-finite loss or gradient; the last good checkpoint is left as it was."""


class DamagedCheckpoint(Exception):
    """A checkpoint that cannot be read back."""

    def __init__(self, step: int, cause: BaseException):
        self.step = step
        self.reason = f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"
        super().__init__(f"checkpoint {step}: {self.reason}")


@dataclasses.dataclass(frozen=True)
class Stage:
    index: int
    start: int
    end: int
    weights: str                      # the weight estimator of this stage ('none': real weights)
    weight_decay: float | None        # overrides the main optimizer's weight decay


def plan_stages(config: Any, total: int) -> list[Stage]:
    if not config.two_stage.enabled:
        return [Stage(0, 0, total, config.estimator.weights, None)]
    split = max(1, min(total - 1, round(total * config.two_stage.stage1_fraction)))
    return [Stage(0, 0, split, "none", config.two_stage.stage1_weight_decay),
            Stage(1, split, total, config.estimator.weights, None)]


@dataclasses.dataclass
class StageRun:
    """What one stage trains with."""

    stage: Stage
    state: TrainState
    train_step: Any
    eval_step: Any


def say(msg: str) -> None:
    if jax.process_index() == 0:
        tqdm.write(msg, file=sys.stdout)  # the bar's stream: tqdm clears and redraws it around the line


def _finish_saves(ckpts: Checkpoints) -> Any:
    """ExitStack exit callback: lets the saves already started (of good states) finish and closes
    the manager; when the run is already failing, an error of these (a full disk, say) is reported
    as a warning and the original error propagates."""

    def exit_(exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        for action in (ckpts.wait, ckpts.close):
            try:
                action()
            except Exception as e:
                if exc is None:
                    raise
                say(f"warning: while stopping, the checkpoint manager also failed: {type(e).__name__}: {e}")
        return False

    return exit_


def use_compilation_cache(directory: str) -> None:
    """JAX's persistent compilation cache in ``directory`` ('' turns it off): a restarted or
    resumed run loads its compiled steps instead of compiling them again. JAX reads the setting
    at its first compilation in the process; a later change of directory is reported. JAX's own
    ``JAX_COMPILATION_CACHE_DIR``, where set, wins."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    if not directory:
        jax.config.update("jax_enable_compilation_cache", False)
        return
    path = os.path.abspath(os.path.expanduser(directory))
    current = jax.config.jax_compilation_cache_dir
    if current and os.path.abspath(current) != path:
        say(f"note: the compilation cache is already {current} in this process; {path} is not used")
        return
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)  # not the many tiny ones


def host(tree: Any) -> Any:
    """Replicated global arrays -> numpy, on every process (each holds a full copy)."""
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else a, tree)


def replicated(mesh: Mesh) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def make_mesh(config: Any) -> Mesh:
    devices = jax.devices() if config.num_devices == -1 else jax.devices()[: config.num_devices]
    return Mesh(np.asarray(devices), ("data",))


def merge_variables(init: dict[str, Any], loaded: dict[str, Any], source: str,
                    optional: tuple[str, ...] = ("estimator",), strict: bool = True) -> dict[str, Any]:
    """``init`` with every leaf of ``loaded`` put in its place; shapes must agree and every
    non-optional collection of ``init`` must be covered completely. ``strict=False`` (a backbone
    for another head, as PyTorch's ``load_state_dict(strict=False)`` in HRNet's and SimpleBaseline's
    ImageNet initialisation): leaves the model lacks are ignored and the model's leaves the
    checkpoint lacks keep their init; a leaf of both must still agree in shape."""
    flat_init = flax.traverse_util.flatten_dict(init)
    flat_loaded = flax.traverse_util.flatten_dict(dict(loaded))
    if not strict:
        ignored = [p for p in flat_loaded if p not in flat_init]
        flat_loaded = {p: v for p, v in flat_loaded.items() if p in flat_init}
        kept = [p for p in flat_init if p not in flat_loaded]
        def modules(paths: list[tuple]) -> str:  # the top-level modules of variable paths, a few
            names = sorted({p[1] if len(p) > 1 else p[0] for p in paths})
            return ", ".join(names[:6]) + (", ..." if len(names) > 6 else "") if names else "none"

        say(f"{source}: {len(flat_loaded):,} variables loaded, {len(kept):,} of the model kept at their init "
            f"({modules(kept)}), {len(ignored):,} of the checkpoint ignored ({modules(ignored)})")
        optional = tuple({p[0] for p in flat_init})
    problems = []
    for path, value in flat_loaded.items():
        if path not in flat_init:
            problems.append(f"unexpected {'/'.join(path)} {tuple(np.shape(value))}")
        elif tuple(np.shape(value)) != tuple(flat_init[path].shape):
            problems.append(f"{'/'.join(path)}: model has {tuple(flat_init[path].shape)}, "
                            f"{source} has {tuple(np.shape(value))}")
    for path in flat_init:
        if path not in flat_loaded and path[0] not in optional:
            problems.append(f"missing {'/'.join(path)}")
    if problems:
        raise ValueError(f"{source} does not fit the model:\n  " + "\n  ".join(problems[:20])
                         + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""))
    merged = {p: (jnp.asarray(flat_loaded[p], flat_init[p].dtype) if p in flat_loaded else v)
              for p, v in flat_init.items()}
    return flax.traverse_util.unflatten_dict(merged)


def load_teacher(config: Any, task: tasks.Task, mesh: Mesh) -> tuple[Any, Any]:
    """(teacher module, replicated variables) or (None, None). The teacher's head must produce
    what the task's does (``task.model_args()``: the same number of classes, say)."""
    if not config.teacher.checkpoint:
        return None, None
    from mlpbnn import convert

    path, head = Path(config.teacher.checkpoint), task.model_args()
    if path.is_file():
        name, kwargs = config.teacher.model, dict(head)
        try:
            variables = convert.from_torch(name, convert.load_torch_checkpoint(path), **head)
        except ValueError as e:
            raise ConfigError(f"teacher.checkpoint: {e}") from e
    else:
        variables, meta = load_variables(path)
        name, kwargs = meta["model"], dict(meta["model_kwargs"])
        wrong = {k: kwargs.get(k) for k, v in head.items() if kwargs.get(k) != v}
        if wrong:
            raise ConfigError(f"config.teacher.checkpoint: the teacher has {wrong}, the {task.name} task needs "
                              f"{ {k: head[k] for k in wrong} }")
    teacher = models.create(name, dtype=jnp.dtype(config.dtype), **kwargs)
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats", "estimator")}
    say(f"teacher: {name} from {path}")
    return teacher, jax.device_put(variables, replicated(mesh))


class Trainer:
    """One run in ``workdir``; ``run()`` trains, evaluates and returns the final eval metrics."""

    def __init__(self, config: Any, workdir: str | Path, allow_config_change: bool = False):
        self.config = config
        self.workdir = Path(workdir).absolute()  # orbax refuses relative paths
        if self.workdir.exists() and not self.workdir.is_dir():
            raise NotADirectoryError(f"workdir {self.workdir} is a file, not a directory; pass a new directory "
                                     "or a run's workdir")
        self.allow_config_change = allow_config_change
        self.pi, self.pc = jax.process_index(), jax.process_count()
        validate(config, jax.device_count(), self.pc)
        use_compilation_cache(config.compilation_cache_dir)
        self.dataset = data.create(config.data, config.seed)
        try:
            self.task = tasks.create(config, self.dataset)
        except ValueError as e:
            raise ConfigError(f"config.task: {e}") from e
        self.best_metric = self.task.best_metric if config.best_metric == "auto" else config.best_metric
        if self.best_metric and self.best_metric not in self.task.eval_metrics:
            raise ConfigError(f"config.best_metric: {self.best_metric!r} is not valid for the {self.task.name} "
                              f"task; choose one of {', '.join(self.task.eval_metrics)}, '' (none) or 'auto'")
        self.mesh = make_mesh(config)
        self.total = total_steps(config, self.dataset.train_size)
        self.steps_per_epoch = self.dataset.train_size / config.batch_size
        self.eval_batch = eval_batch_size(config, self.mesh.devices.size)
        self.stages = plan_stages(config, self.total)
        self.dtype = jnp.dtype(config.dtype)
        self.image_shape = tuple(self.dataset.image_shape)
        self.exported_before = (self.workdir / "variables").exists()
        self.evals: dict[str, tuple[EvalEntry, Any]] = {}
        for name, section in config.evals.items():
            entry = from_section(EvalEntry, section, f"evals.{name}")
            try:
                self.evals[name] = (entry, self.dataset.eval_set(entry.source))
            except ValueError as e:
                raise ConfigError(f"config.evals.{name}.source: {e}") from None
        self.teacher: Any = None
        self.teacher_vars: Any = None
        self._best_step: int | None = None
        self.stop = StopRequests(config.max_runtime, say)
        self._stop_flag: Any = None       # the reduced stop flag of the newest dispatched step
        self._resumed_pending: list[dict] = []  # a stopped run's unlogged steps, from its checkpoint

    # ------------------------------------------------------------------ setup

    def _model(self, stage: Stage) -> Any:
        return models.create(self.config.model.name, dtype=self.dtype, **self.task.model_args(),
                             **model_kwargs(self.config, stage.weights))

    def _init_variables(self, model: Any, key: jax.Array) -> dict[str, Any]:
        dummy = jnp.zeros((1, *self.image_shape), jnp.float32)
        init = jax.jit(lambda k: model.init(k, dummy, train=False), out_shardings=replicated(self.mesh))
        return dict(init(key))

    def _state(self, variables: dict[str, Any], tx: Any, rng: jax.Array) -> TrainState:
        def make(v, r):
            trainable = {"params": v["params"], "estimator": v.get("estimator", {})}
            return TrainState(step=jnp.zeros((), jnp.int32), params=v["params"], batch_stats=v.get("batch_stats", {}),
                              estimator=trainable["estimator"], opt_state=tx.init(trainable), rng=r)
        return jax.jit(make, out_shardings=replicated(self.mesh))(variables, rng)

    def _resume(self, ckpts: Checkpoints, writer: MetricWriter) -> tuple[int, int, StageRun | None]:
        """(step, input position, the resumed stage) from the newest intact checkpoint, or (0, 0,
        None). A damaged one (unreadable meta or state) is moved aside with a warning, never deleted."""
        while (latest := ckpts.latest_step()) is not None:
            try:
                try:
                    meta = ckpts.restore_meta(latest)
                    step, position, index = int(meta["step"]), int(meta["position"]), int(meta["stage"])
                    stage = self.stages[index]
                    self._resumed_pending = unpack_pending(meta.get("pending", {}))
                except Exception as e:  # noqa: BLE001 - JSON, orbax and key errors alike mean damage
                    raise DamagedCheckpoint(latest, e) from e
                run = self._setup_stage(stage, step, None, ckpts, restore=latest)
            except DamagedCheckpoint as e:
                moved = ckpts.set_aside(e.step)
                say(f"warning: checkpoint {e.step} is damaged ({e.reason}); moved to {moved}; "
                    "resuming from the newest intact one instead")
                continue
            writer.truncate(step)
            say(f"resuming from {ckpts.directory} at step {step} (stage {index + 1}, input position {position:,})")
            return step, position, run
        return 0, 0, None

    def _setup_stage(self, stage: Stage, step: int, previous: TrainState | None, ckpts: Checkpoints,
                     restore: int | None = None) -> StageRun:
        """The stage's model, optimizer, compiled steps and state: restored from checkpoint step
        ``restore``, else continued from ``previous`` (stage one's state), else initialised."""
        config, key = self.config, jax.random.PRNGKey(self.config.seed)
        model = self._model(stage)
        dummy = jnp.zeros((1, *self.image_shape), jnp.float32)
        binary = L.binary_layer_paths(model, dummy, train=False)
        variables = self._init_variables(model, jax.random.fold_in(key, stage.index))
        trainable = {"params": variables["params"], "estimator": variables.get("estimator", {})}
        tx, _ = optim.make(config, trainable, binary, stage.end - stage.start, self.steps_per_epoch,
                                   stage.weight_decay)
        if restore is not None:
            try:
                state = ckpts.restore_state(restore, self._state(variables, tx, key))
            except CheckpointMismatch as e:  # readable, but not this config's: an error, not damage
                raise ConfigError(str(e)) from e
            except Exception as e:  # noqa: BLE001 - missing, truncated or zeroed files
                raise DamagedCheckpoint(restore, e) from e
        else:
            if previous is not None:  # stage two starts from stage one
                variables = merge_variables(variables, previous.variables(), "the stage-one state")
            elif config.init_checkpoint:
                loaded, _ = load_variables(config.init_checkpoint)
                variables = merge_variables(variables, loaded, f"init_checkpoint {config.init_checkpoint}",
                                            strict=config.init_strict)
            # Placed like the rest of the state: an uncommitted scalar would make the second step
            # see a different input sharding and compile the whole train step again.
            state = self._state(variables, tx, key).replace(
                step=jax.device_put(jnp.asarray(step, jnp.int32), replicated(self.mesh)))
        self._describe(model, state, binary, stage)
        rep, batch = replicated(self.mesh), data_sharding(self.mesh)
        train_step = jax.jit(make_train_step(model, tx, self.task, total_steps=self.total, teacher=self.teacher),
                             in_shardings=(rep, batch, rep), out_shardings=(rep, rep), donate_argnums=(0,))
        eval_step = jax.jit(make_eval_step(model, self.task), in_shardings=(rep, batch), out_shardings=batch)
        return StageRun(stage, state, train_step, eval_step)

    # ------------------------------------------------------------------ metrics and eval

    def _flush(self, pending: list[dict], step: int, t0: float, writer: MetricWriter, bar: tqdm,
               timed: int) -> dict[str, float]:
        """Logs the means of ``pending``; the rates are of its last ``timed`` steps, run since ``t0``
        (the others came from a stopped run's checkpoint)."""
        values = self._check_finite(pending, step)  # waits for the steps: the rate below is of computed steps
        seconds = time.perf_counter() - t0
        means = {k: float(np.mean([v[k] for v in values])) for k in values[0] if k not in FLAGS}
        means["steps_per_sec"] = timed / seconds
        means["examples_per_sec"] = timed * self.config.batch_size / seconds
        means["epoch"] = step * self.config.batch_size / self.dataset.train_size
        writer.write(step, "train", means)
        shown = self.task.progress_metric
        bar.set_postfix(loss=f"{means['loss']:.4f}", **({shown: f"{means[shown]:.4g}"} if shown in means else {}),
                        refresh=False)
        return means

    def _check_finite(self, pending: list[dict], step: int) -> list[dict]:
        """The pending steps' metrics on the host; TrainingDiverged if any step was not finite."""
        values = jax.device_get(pending)
        bad = [i for i, v in enumerate(values) if v["nonfinite"] or not math.isfinite(float(v["loss"]))]
        if bad:
            first = step - len(values) + 1
            raise TrainingDiverged(
                f"non-finite loss or gradients at step {first + bad[0]} (of steps {first}..{step}); "
                f"stopped without saving. The last good checkpoint in {self.workdir / 'checkpoints'} is "
                f"untouched. Lower optimizer.learning_rate or check the input data.")
        return values

    def _evaluate_finite(self, eval_step: Any, state: TrainState, step: int, dataset: Any = None,
                         prefix: str = "") -> dict[str, float]:
        metrics = self.evaluate(eval_step, state, dataset, prefix)
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if bad:
            raise TrainingDiverged(f"evaluation at step {step} gave non-finite {', '.join(bad)}; stopped without "
                                   f"saving: the checkpoints in {self.workdir / 'checkpoints'} are untouched")
        return metrics

    def evaluate(self, eval_step: Any, state: TrainState, dataset: Any = None, prefix: str = "") -> dict[str, float]:
        """Exact: every eval example once (padded last batch, masked), the same on every process.
        ``dataset``: another evaluation set than the run's (a named evaluation's); ``prefix`` names
        what the evaluator writes for it."""
        dataset = dataset or self.dataset
        evaluator = self.task.evaluator()
        result, = evaluation.evaluate(
            eval_step, state.variables(), dataset.eval_batches(self.eval_batch, self.pi, self.pc), [evaluator],
            lambda batch: to_global(batch, self.mesh), lambda out: [{k: local_rows(v) for k, v in out.items()}],
            dataset.eval_size)
        if self.pi == 0:
            evaluator.write(self.workdir, prefix)
        return result

    def _evaluate_named(self, run: StageRun, step: int, final: bool) -> dict[str, float]:
        """The main evaluation and the named ones due at ``step`` (all of them when ``final``),
        the named ones' metrics prefixed ``NAME/``."""
        metrics = self._evaluate_finite(run.eval_step, run.state, step)
        for name, (entry, dataset) in self.evals.items():
            if final or (entry.every_steps and step % entry.every_steps == 0):
                extra = self._evaluate_finite(run.eval_step, run.state, step, dataset, prefix=f"{name}_")
                metrics.update({f"{name}/{k}": v for k, v in extra.items()})
        return metrics

    # ------------------------------------------------------------------ the run

    def _lock(self, stack: contextlib.ExitStack) -> None:
        """The workdir's lock, taken by process 0 for the run (``workdir.Lock``); every process
        learns whether it was free, so all refuse together."""
        error = ""
        if self.pi == 0:
            lock = wd.Lock(self.workdir)
            try:
                lock.acquire()
                stack.callback(lock.release)
            except wd.WorkdirBusy as e:
                error = str(e)
        if self.pc > 1 and int(multihost_utils.broadcast_one_to_all(np.int32(bool(error)))) and not error:
            error = f"workdir {self.workdir} is in use by another run (process 0 found its lock held)"
        if error:
            raise wd.WorkdirBusy(error)

    def _check_record(self, ckpts: Checkpoints) -> dict[str, float] | None:
        """The config record: started when there is no checkpoint, else compared (``workdir``).
        Returns the final metrics of a run that already finished, else None."""
        latest = ckpts.latest_step()
        config_json = self.config.to_json_best_effort(indent=2)
        if latest is None:
            if self.pi == 0:
                wd.start_record(self.workdir, config_json)
            return None
        changed = wd.check_config(self.workdir, config_json, latest, self.allow_config_change, self.pi == 0)
        if changed:
            say(f"config changed since the checkpoints (recorded in {wd.HISTORY}): "
                + "; ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in changed.items()))
        summary_file = self.workdir / "final_metrics.json"
        if latest == self.total and summary_file.exists():
            summary = json.loads(summary_file.read_text())
            if summary.get("step") == self.total:
                say(f"the run in {self.workdir} is finished (step {self.total}; final_metrics.json): nothing to do")
                return summary["eval"]
        return None

    def run(self) -> dict[str, float]:
        config, workdir = self.config, self.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            self._lock(stack)
            stack.enter_context(self.stop)  # SIGTERM / SIGINT: a stop after the current step
            ckpts = Checkpoints(workdir, config.keep_checkpoints, self.best_metric,
                                self.task.metric_mode(self.best_metric))
            stack.push(_finish_saves(ckpts))
            finished = self._check_record(ckpts)
            if finished is not None:
                return finished
            writer = MetricWriter(workdir, active=self.pi == 0)
            stack.callback(writer.close)
            say(self.dataset.describe() + f"; task {self.task.name}; {self.total:,} steps of {config.batch_size} "
                f"({self.total / self.steps_per_epoch:.2f} epochs) on {self.mesh.devices.size} device(s), "
                f"{self.pc} process(es)")
            if self.eval_batch != (config.eval_batch_size if config.eval_batch_size != -1 else config.batch_size):
                say(f"eval batch rounded up to {self.eval_batch}, a multiple of the {self.mesh.devices.size} devices "
                    "(the padding is masked: every example still counts once)")
            self.teacher, self.teacher_vars = load_teacher(config, self.task, self.mesh)
            step, position, run = self._resume(ckpts, writer)
            bar = None
            final_train: dict[str, float] = {}
            for stage in self.stages:
                if step > stage.end or (run is not None and run.stage.index > stage.index):
                    continue
                if run is None or run.stage.index != stage.index:
                    run = self._setup_stage(stage, step, run.state if run else None, ckpts)
                if bar is None:  # after the start-up lines, so that none is printed inside the bar
                    bar = tqdm(total=self.total, initial=step, unit="step", dynamic_ncols=True, mininterval=2.0,
                               file=sys.stdout, disable=self.pi != 0 or not config.progress_bar)
                    stack.callback(bar.close)
                step, position, final_train = self._train(run, step, position, ckpts, writer, bar)
                if self._agreed_stop(self._stop_flag):  # asked during the stage's last step
                    self._stop_now(run, step, position, ckpts, [])
            final = self._finish(run, step, position, ckpts, writer)
        summary = {"step": step, "eval": final, "train": final_train, "best_step": self._best_step}
        if self.pi == 0:
            (workdir / "final_metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        say(f"step {step}: {self.task.summary(final)}")
        return final

    def _train(self, run: StageRun, step: int, position: int, ckpts: Checkpoints, writer: MetricWriter,
               bar: tqdm) -> tuple[int, int, dict[str, float]]:
        """Steps ``step .. run.stage.end``; returns (step, position, last logged train metrics)."""
        config, stage = self.config, run.stage
        # XLA:CPU runs the simulated devices' halves of a collective on one thread pool; a step
        # dispatched before the previous one finished can starve it and deadlock the all-reduce.
        serialize = jax.default_backend() == "cpu" and jax.local_device_count() > 1
        batches = self.dataset.train_batches(position, config.batch_size, self.pi, self.pc)
        pending, self._resumed_pending = self._resumed_pending, []  # a stopped run's unlogged steps
        logged: dict[str, float] = {}
        t0, timed, first = time.perf_counter(), 0, step
        profile = Profile(self.workdir / "profile", first + 1, config.profile_steps)
        try:
            while step < stage.end:
                batch, position = next(batches)
                batch = {**batch, "stop": self.stop.flag(len(batch["images"]))}
                previous = self._stop_flag
                profile.before(step)
                run.state, metrics = run.train_step(run.state, to_global(batch, self.mesh), self.teacher_vars)
                self._stop_flag = metrics["stop"]
                if serialize:
                    jax.block_until_ready(metrics)
                pending.append(metrics)
                step, timed = step + 1, timed + 1
                bar.update(1)
                profile.after(step, metrics)
                if step % config.log_every_steps == 0 or step == stage.end:
                    logged = self._flush(pending, step, t0, writer, bar, timed)
                    pending = []
                if self._periodic(run, step, position, ckpts, writer, pending) or not pending:
                    t0, timed = time.perf_counter(), 0  # the logged rate is of training steps only
                # The flag of the step before this one: read while this one runs, the same on every
                # process, so every process stops here.
                if self._agreed_stop(previous):
                    self._stop_now(run, step, position, ckpts, pending)
        finally:
            profile.close()
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        return step, position, logged

    def _agreed_stop(self, flag: Any) -> bool:
        """Whether a step's reduced stop flag (replicated: the same on every process) is set."""
        return flag is not None and bool(host(flag))

    def _stop_now(self, run: StageRun, step: int, position: int, ckpts: Checkpoints, pending: list[dict]) -> None:
        """Saves step ``step`` (with the metrics of its unlogged steps, which the resumed run logs)
        unless it was just saved, and raises ``Stopped``; the ExitStack waits for the save."""
        values = self._check_finite(pending, step) if pending else []
        if ckpts.latest_step() != step:
            ckpts.save(step, run.state, {"step": step, "position": position, "stage": run.stage.index,
                                         "pending": pack_pending(values)})
        raise Stopped(step, self.stop.cause or "a stop request of another process")

    def _periodic(self, run: StageRun, step: int, position: int, ckpts: Checkpoints, writer: MetricWriter,
                  pending: list[dict]) -> bool:
        """Evaluation and checkpoint due after ``step``; the run's very last step is left to
        ``_finish``. Nothing non-finite is evaluated or saved. Returns whether anything was done."""
        config, last = self.config, step == self.total
        evaluate = config.eval_every_steps > 0 and step % config.eval_every_steps == 0 and not last
        save = (step % config.checkpoint_every_steps == 0 or step == run.stage.end) and not last
        if evaluate or save:
            self._check_finite(pending, step)  # empty when the step was just logged (validate aligns them)
        metrics = None
        if evaluate:
            metrics = self._evaluate_named(run, step, final=False)
            writer.write(step, "eval", metrics)
        if evaluate or save:
            ckpts.save(step, run.state, {"step": step, "position": position, "stage": run.stage.index}, metrics)
        if metrics is not None:
            best = ckpts.best_step()
            say(f"step {step}: {self.task.summary(metrics)}"
                + (f" (best {self.best_metric} so far: step {best})" if best is not None else ""))
        return evaluate or save

    def _finish(self, run: StageRun, step: int, position: int, ckpts: Checkpoints,
                writer: MetricWriter) -> dict[str, float]:
        """The final evaluations (the main one and every named one, ``config.evals``: e.g.
        ``det/AP`` on detector boxes), saved with the last checkpoint, and the exported variables."""
        final = self._evaluate_named(run, step, final=True)
        writer.write(step, "eval", final)
        if ckpts.latest_step() != step:
            ckpts.save(step, run.state, {"step": step, "position": position, "stage": run.stage.index}, final)
        ckpts.wait()
        self._best_step = ckpts.best_step()
        self._export(run)
        return final

    def _describe(self, model: Any, state: TrainState, binary: set[str], stage: Stage) -> None:
        if self.pi != 0:
            return
        report = complexity.count(model, self.image_shape, name=self.config.model.name)
        overview = parameter_overview(host(state.variables()))
        sizes = optim.partition_sizes(host(state.trainable), binary)
        head = f"stage {stage.index + 1}/{len(self.stages)}: " if len(self.stages) > 1 else ""
        if self.config.model.get("binarize"):
            binarized = f"rules: {model_kwargs(self.config, stage.weights)['binarize']}"
        else:
            activations = self.config.estimator.activations if is_binary(self.config) else "-"
            binarized = f"weights: {stage.weights}, activations: {activations}"
        text = (f"{head}model {self.config.model.name} ({binarized})\n"
                f"{overview}\noptimizer partitions: {sizes}\n\n{report.table()}\n")
        (self.workdir / f"summary_stage{stage.index + 1}.txt").write_text(text)
        t = report.totals()
        counts = ", ".join(f"{k} {sum(np.size(x) for x in jax.tree.leaves(v)):,}" for k, v in state.variables().items())
        say(f"variables: {counts} ({overview.splitlines()[-1].removeprefix('Total: ')}); optimizer partitions {sizes}")
        say(f"complexity per image: FLOPs {t['flops']:.3g}, BOPs {t['bops']:.3g}, OPs {t['ops']:.3g}, "
            f"model size {t['size_bytes'] / 2 ** 20:.2f} MiB (full table in {self.workdir}/summary_stage"
            f"{stage.index + 1}.txt)")

    def _export(self, run: StageRun) -> None:
        """The final variables as a variables checkpoint (a teacher or init for other runs)."""
        if self.exported_before:  # decided at start: every process must take the same branch
            return
        kwargs = {**self.task.model_args(), **model_kwargs(self.config)}
        tree = host(run.state.variables()) if self.pc == 1 else run.state.variables()
        save_variables(self.workdir / "variables", tree, self.config.model.name, kwargs)


class Profile:
    """``config.profile_steps`` steps traced with ``jax.profiler`` (for TensorBoard's profile
    plugin) into ``directory``, starting at step ``start``: the second step of this start, so
    that compilation is not in the trace."""

    def __init__(self, directory: Path, start: int, steps: int):
        self.directory, self.start, self.end = directory, start, start + steps
        self.active = False
        self.on = steps > 0

    def before(self, step: int) -> None:
        if self.on and step == self.start and not self.active:
            jax.profiler.start_trace(str(self.directory))
            self.active = True

    def after(self, step: int, metrics: Any) -> None:
        if self.active and step >= self.end:
            jax.block_until_ready(metrics)
            self.close()
            say(f"profile of steps {self.start + 1}..{self.end} written to {self.directory} (tensorboard --logdir "
                f"{self.directory})")

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active, self.on = False, False


def run(config: Any, workdir: str | Path, allow_config_change: bool = False) -> dict[str, float]:
    """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint); returns final eval
    metrics. Raises ``Stopped`` after a requested stop (SIGTERM, SIGINT, ``max_runtime``) saved
    its step; ``allow_config_change`` accepts a resume whose config changes the trajectory."""
    return Trainer(config, workdir, allow_config_change).run()
