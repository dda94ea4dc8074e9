"""The train state and the jit'd, sharded train and eval steps of any task.

The state lives replicated on a ``Mesh`` whose ``data`` axis spans every device of every host;
batches are sharded along that axis, so BatchNorm statistics are over the global batch and
gradients are reduced by XLA. The train step donates the state. What is computed from the
model's outputs (loss, metrics, evaluation values) comes from the task (``mlpbnn.tasks``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mlpbnn import layers as L
from mlpbnn.tasks import Task
from mlpbnn.train import optim

Array = jax.Array
# Metrics of the train step that are control flags for the loop, not values to log.
FLAGS = ("nonfinite", "stop")


@flax.struct.dataclass
class TrainState:
    step: Array
    params: Any
    batch_stats: Any
    estimator: Any
    opt_state: Any
    rng: Array

    @property
    def trainable(self) -> dict[str, Any]:
        return {"params": self.params, "estimator": self.estimator}

    def variables(self) -> dict[str, Any]:
        return _variables(self.params, self.batch_stats, self.estimator)


def _variables(params: Any, batch_stats: Any, estimator: Any) -> dict[str, Any]:
    v = {"params": params, "batch_stats": batch_stats}
    if estimator:
        v["estimator"] = estimator
    return v


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, task: Task, *, total_steps: int,
                    teacher: nn.Module | None = None) -> Callable[..., tuple[TrainState, dict[str, Array]]]:
    """(state, global batch, teacher variables) -> (new state, metrics): the task's loss and
    metrics plus grad_norm, flip_ratio (of the binary weights' forward values), the learning
    rates used, ``nonfinite`` (1 where the loss or a gradient is not finite) and ``stop`` (the
    largest of the batch's optional ``stop`` field: any process asked to stop)."""

    def step(state: TrainState, batch: dict[str, Array], teacher_vars: Any) -> tuple[TrainState, dict]:
        progress = state.step.astype(jnp.float32) / total_steps  # for scheduled estimators
        # Each process's graceful-stop flag (mlpbnn.train.stop), reduced over the global batch:
        # every process reads the same value, so all stop after the same step.
        batch = dict(batch)
        stop = jnp.max(batch.pop("stop")) if "stop" in batch else jnp.zeros((), jnp.int32)
        images = batch["images"]
        teacher_out = None
        if teacher is not None:
            teacher_out = jax.lax.stop_gradient(teacher.apply(teacher_vars, images, train=False))

        def loss_fn(trainable):
            variables = _variables(trainable["params"], state.batch_stats, trainable["estimator"])
            outputs, updates = model.apply(variables, images, train=True, progress=progress, mutable=["batch_stats"])
            loss, metrics = task.loss(outputs, batch, teacher_out)
            return loss, (metrics, updates["batch_stats"])

        (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.trainable)
        finite = jnp.isfinite(loss) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        # The binary weights as the forward pass sees them, before and after the update; only
        # the weight paths are computed (the convolutions' outputs are unused: dead code to XLA).
        probe = images[:1]
        signs = [L.weight_signs(model, _variables(t["params"], state.batch_stats, t["estimator"]), probe,
                                train=False, progress=progress) for t in (state.trainable, trainable)]
        metrics = {
            "loss": loss, **metrics,
            "grad_norm": optax.tree.norm(grads),
            "flip_ratio": L.flip_ratio(*signs),
            "nonfinite": 1.0 - finite.astype(jnp.float32),
            "stop": stop,
            **{f"lr/{k}": v for k, v in optim.learning_rates(opt_state).items()},
        }
        new_state = state.replace(step=state.step + 1, params=trainable["params"], estimator=trainable["estimator"],
                                  batch_stats=batch_stats, opt_state=opt_state)
        return new_state, metrics

    return step


def make_eval_step(model: nn.Module, task: Task) -> Callable[[dict, dict[str, Array]], dict[str, Array]]:
    """(variables, padded global batch) -> the task's per-example evaluation outputs."""

    def step(variables: dict, batch: dict[str, Array]) -> dict[str, Array]:
        outputs = task.predict(lambda x: model.apply(variables, x, train=False), batch["images"])
        return task.eval_outputs(outputs, batch)

    return step
