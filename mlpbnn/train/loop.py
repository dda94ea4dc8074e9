"""The training loop: config -> data -> mesh -> (stages of) model, optimizer, state -> steps,
logging, exact evaluation, checkpoints; resumes from ``workdir`` when a checkpoint is there."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from mlpbnn import complexity, data, models
from mlpbnn.data.base import data_sharding, to_global
from mlpbnn.train import optim
from mlpbnn.train.checkpoint import Checkpoints
from mlpbnn.train.config import ConfigError, model_kwargs, total_steps, validate
from mlpbnn.train.metrics import MetricWriter, parameter_overview
from mlpbnn.train.step import TrainState, make_eval_step, make_train_step, replicated
from mlpbnn.variables_io import load_variables, save_variables


class TrainingDiverged(FloatingPointError):
    """A non-finite loss or gradient; the last good checkpoint is left as it was."""


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


def say(msg: str) -> None:
    if jax.process_index() == 0:
        tqdm.write(msg)


def host(tree: Any) -> Any:
    """Replicated global arrays -> numpy, on every process (each holds a full copy)."""
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else a, tree)


def make_mesh(config: Any) -> Mesh:
    devices = jax.devices() if config.num_devices == -1 else jax.devices()[: config.num_devices]
    return Mesh(np.asarray(devices), ("data",))


def binary_kernel_paths(model: Any, image_shape: tuple[int, ...]) -> set[str]:
    """Module paths of layers whose kernel is binarized, read from the model by tracing."""
    return {layer.path for layer in complexity.count(model, image_shape).layers if layer.params_1bit}


def merge_variables(init: dict[str, Any], loaded: dict[str, Any], source: str,
                    optional: tuple[str, ...] = ("estimator",)) -> dict[str, Any]:
    """``init`` with every leaf of ``loaded`` put in its place; shapes must agree and every
    non-optional collection of ``init`` must be covered completely."""
    flat_init = flax.traverse_util.flatten_dict(init)
    flat_loaded = flax.traverse_util.flatten_dict(dict(loaded))
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


def load_teacher(config: Any, num_classes: int, mesh: Mesh) -> tuple[Any, Any]:
    """(teacher module, replicated variables) or (None, None)."""
    if not config.teacher.checkpoint:
        return None, None
    from mlpbnn import convert

    path = Path(config.teacher.checkpoint)
    if path.is_file():
        name = config.teacher.model
        variables = convert.from_torch(name, convert.load_torch_checkpoint(path))
        kwargs = {"num_classes": variables["params"]["fc"]["bias"].shape[0]}
    else:
        variables, meta = load_variables(path)
        name, kwargs = meta["model"], dict(meta["model_kwargs"])
    if kwargs.get("num_classes") != num_classes:
        raise ConfigError(f"config.teacher.checkpoint: the teacher has {kwargs.get('num_classes')} classes, "
                          f"the data {num_classes}")
    teacher = models.create(name, dtype=jnp.dtype(config.dtype), **kwargs)
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats", "estimator")}
    say(f"teacher: {name} from {path}")
    return teacher, jax.device_put(variables, replicated(mesh))


class Trainer:
    """One run in ``workdir``; ``run()`` trains, evaluates and returns the final eval metrics."""

    def __init__(self, config: Any, workdir: str | Path):
        self.config = config
        self.workdir = Path(workdir).absolute()  # orbax refuses relative paths
        self.pi, self.pc = jax.process_index(), jax.process_count()
        validate(config, jax.device_count(), self.pc)
        self.dataset = data.create(config.data, config.seed)
        self.mesh = make_mesh(config)
        self.total = total_steps(config, self.dataset.train_size)
        self.steps_per_epoch = self.dataset.train_size / config.batch_size
        self.eval_batch = config.eval_batch_size if config.eval_batch_size != -1 else config.batch_size
        self.stages = plan_stages(config, self.total)
        self.dtype = jnp.dtype(config.dtype)
        self.image_shape = tuple(self.dataset.image_shape)
        self.exported_before = (self.workdir / "variables").exists()

    # ------------------------------------------------------------------ setup per stage

    def _model(self, stage: Stage) -> Any:
        return models.create(self.config.model.name, self.dataset.num_classes, dtype=self.dtype,
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

    # ------------------------------------------------------------------ metrics and eval

    def _flush(self, pending: list[dict], step: int, stage: Stage, schedules: dict, t0: float,
               writer: MetricWriter, bar: tqdm) -> dict[str, float]:
        values = jax.device_get(pending)  # waits for the steps: the rate below is of computed steps
        seconds = time.perf_counter() - t0
        nonfinite = sum(v["nonfinite"] for v in values)
        if nonfinite or not all(math.isfinite(v["loss"]) for v in values):
            first = step - len(values) + 1 + next(i for i, v in enumerate(values)
                                                  if v["nonfinite"] or not math.isfinite(v["loss"]))
            raise TrainingDiverged(
                f"non-finite loss or gradients at step {first} (of steps {step - len(values) + 1}..{step}); "
                f"stopped without saving. The last good checkpoint in {self.workdir / 'checkpoints'} is "
                f"untouched. Lower optimizer.learning_rate or check the input data.")
        means = {k: float(np.mean([v[k] for v in values])) for k in values[0] if k != "nonfinite"}
        local = step - stage.start
        means["lr/main"] = float(schedules["main"](local - 1))
        means["lr/estimator"] = float(schedules["estimator"](local - 1))
        means["steps_per_sec"] = len(values) / seconds
        means["examples_per_sec"] = len(values) * self.config.batch_size / seconds
        means["epoch"] = step * self.config.batch_size / self.dataset.train_size
        writer.write(step, "train", means)
        bar.set_postfix(loss=f"{means['loss']:.4f}", top1=f"{means['top1']:.3f}", refresh=False)
        return means

    def evaluate(self, eval_step: Any, state: TrainState) -> dict[str, float]:
        """Exact: every eval example once (padded last batch, masked)."""
        sums = None
        variables = state.variables()
        for batch in self.dataset.eval_batches(self.eval_batch, self.pi, self.pc):
            out = eval_step(variables, to_global(batch, self.mesh))
            sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        sums = jax.device_get(sums)
        count = float(sums.pop("count"))
        if count != self.dataset.eval_size:
            raise RuntimeError(f"evaluation saw {count} examples, the eval set has {self.dataset.eval_size}")
        return {**{k: float(v) / count for k, v in sums.items()}, "count": count}

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, float]:
        config, workdir = self.config, self.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        if self.pi == 0:
            (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
        ckpts = Checkpoints(workdir, config.keep_checkpoints, config.best_metric)
        writer = MetricWriter(workdir, active=self.pi == 0)
        latest = ckpts.latest_step()
        meta = ckpts.restore_meta(latest) if latest is not None else None
        step = int(meta["step"]) if meta else 0
        position = int(meta["position"]) if meta else 0
        if meta:
            writer.truncate(step)
            say(f"resuming from {ckpts.directory} at step {step} (stage {meta['stage'] + 1}, "
                f"input position {position:,})")
        say(self.dataset.describe() + f"; {self.total:,} steps of {config.batch_size} "
            f"({self.total / self.steps_per_epoch:.2f} epochs) on {self.mesh.devices.size} device(s), "
            f"{self.pc} process(es)")
        teacher, teacher_vars = load_teacher(config, self.dataset.num_classes, self.mesh)
        key = jax.random.PRNGKey(config.seed)
        bar = tqdm(total=self.total, initial=step, unit="step", dynamic_ncols=True, mininterval=2.0,
                   disable=self.pi != 0 or not config.progress_bar)
        state = None
        final_train: dict[str, float] = {}
        try:
            for stage in self.stages:
                if step > stage.end or (meta and meta["stage"] > stage.index):
                    continue
                model = self._model(stage)
                binary = binary_kernel_paths(model, self.image_shape)
                variables = self._init_variables(model, jax.random.fold_in(key, stage.index))
                trainable = {"params": variables["params"], "estimator": variables.get("estimator", {})}
                tx, schedules = optim.make(config, trainable, binary, stage.end - stage.start, self.steps_per_epoch,
                                           stage.weight_decay)
                if meta and meta["stage"] == stage.index:
                    state = ckpts.restore_state(latest, self._state(variables, tx, key))
                else:
                    if state is not None:  # stage two starts from stage one
                        variables = merge_variables(variables, {"params": state.params,
                                                                "batch_stats": state.batch_stats,
                                                                **({"estimator": state.estimator}
                                                                   if state.estimator else {})},
                                                    "the stage-one state")
                    elif config.init_checkpoint:
                        loaded, _ = load_variables(config.init_checkpoint)
                        variables = merge_variables(variables, loaded, f"init_checkpoint {config.init_checkpoint}")
                    state = self._state(variables, tx, key)
                    state = state.replace(step=jnp.asarray(step, jnp.int32))
                self._describe(model, state, binary, stage)
                train_step = jax.jit(
                    make_train_step(model, tx, total_steps=self.total, label_smoothing=config.loss.label_smoothing,
                                    binary_kernels=binary, weight_norm=getattr(model, "weight_norm", "none"),
                                    teacher=teacher, alpha=config.teacher.alpha,
                                    temperature=config.teacher.temperature),
                    in_shardings=(replicated(self.mesh), data_sharding(self.mesh), replicated(self.mesh)),
                    out_shardings=(replicated(self.mesh), replicated(self.mesh)), donate_argnums=(0,))
                eval_step = jax.jit(make_eval_step(model),
                                    in_shardings=(replicated(self.mesh), data_sharding(self.mesh)),
                                    out_shardings=replicated(self.mesh))
                # XLA:CPU runs the simulated devices' halves of a collective on one thread pool; a step
                # dispatched before the previous one finished can starve it and deadlock the all-reduce.
                serialize = jax.default_backend() == "cpu" and jax.local_device_count() > 1
                batches = self.dataset.train_batches(position, config.batch_size, self.pi, self.pc)
                pending: list[dict] = []
                t0 = time.perf_counter()
                while step < stage.end:
                    batch, position = next(batches)
                    state, metrics = train_step(state, to_global(batch, self.mesh), teacher_vars)
                    if serialize:
                        jax.block_until_ready(metrics)
                    pending.append(metrics)
                    step += 1
                    bar.update(1)
                    if step % config.log_every_steps == 0 or step == stage.end:
                        final_train = self._flush(pending, step, stage, schedules, t0, writer, bar)
                        pending = []
                        t0 = time.perf_counter()
                    meta_now = {"step": step, "position": position, "stage": stage.index}
                    if config.eval_every_steps > 0 and step % config.eval_every_steps == 0 and step < self.total:
                        ev = self.evaluate(eval_step, state)
                        writer.write(step, "eval", ev)
                        ckpts.save_best(step, state, meta_now, ev)
                        t0 = time.perf_counter()
                    if step % config.checkpoint_every_steps == 0 or step == stage.end:
                        ckpts.save(step, state, meta_now)
            final = self.evaluate(eval_step, state)
            writer.write(step, "eval", final)
            ckpts.save_best(step, state, {"step": step, "position": position, "stage": self.stages[-1].index}, final)
            ckpts.wait()
            self._export(state)
        except BaseException:
            bar.close()
            ckpts.wait()  # saves already started were of good states: let them finish
            ckpts.close()
            writer.close()
            raise
        bar.close()
        ckpts.close()
        writer.close()
        summary = {"step": step, "eval": final, "train": final_train}
        if self.pi == 0:
            (workdir / "final_metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        say(f"step {step}: eval top-1 {final['top1']:.2%}" + (f", top-5 {final['top5']:.2%}" if "top5" in final else "")
            + f", loss {final['loss']:.4f} on {int(final['count']):,} images")
        return final

    def _describe(self, model: Any, state: TrainState, binary: set[str], stage: Stage) -> None:
        if self.pi != 0:
            return
        report = complexity.count(model, self.image_shape, name=self.config.model.name)
        overview = parameter_overview(host(state.variables()))
        sizes = optim.partition_sizes(host(state.trainable), binary)
        head = f"stage {stage.index + 1}/{len(self.stages)}: " if len(self.stages) > 1 else ""
        text = (f"{head}model {self.config.model.name} (weights: {stage.weights}, activations: "
                f"{self.config.estimator.activations if models.family(self.config.model.name) != 'resnet' else '-'})\n"
                f"{overview}\noptimizer partitions: {sizes}\n\n{report.table()}\n")
        (self.workdir / f"summary_stage{stage.index + 1}.txt").write_text(text)
        t = report.totals()
        say(overview.splitlines()[-1] + f"; optimizer partitions {sizes}")
        say(f"complexity per image: FLOPs {t['flops']:.3g}, BOPs {t['bops']:.3g}, OPs {t['ops']:.3g}, "
            f"model size {t['size_bytes'] / 2 ** 20:.2f} MiB (full table in {self.workdir}/summary_stage"
            f"{stage.index + 1}.txt)")

    def _export(self, state: TrainState) -> None:
        """The final variables as a variables checkpoint (a teacher or init for other runs)."""
        out = self.workdir / "variables"
        if self.exported_before:  # decided at start: every process must take the same branch
            return
        kwargs = {"num_classes": self.dataset.num_classes, **model_kwargs(self.config)}
        tree = host(state.variables()) if self.pc == 1 else state.variables()
        save_variables(out, tree, self.config.model.name, kwargs)


def run(config: Any, workdir: str | Path) -> dict[str, float]:
    """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint); returns final eval metrics."""
    return Trainer(config, workdir).run()
