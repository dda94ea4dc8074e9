"""The train state and the jit'd, sharded train and eval steps.

The state lives replicated on a ``Mesh`` whose ``data`` axis spans every device of every host;
batches are sharded along that axis, so BatchNorm statistics are over the global batch and
gradients are reduced by XLA. The train step donates the state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mlpbnn import estimators
from mlpbnn import layers as L
from mlpbnn.train import losses

Array = jax.Array


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
        v = {"params": self.params, "batch_stats": self.batch_stats}
        if self.estimator:
            v["estimator"] = self.estimator
        return v


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _binary_signs(params: Any, binary_kernels: set[str], weight_norm: str) -> list[Array]:
    flat = flax.traverse_util.flatten_dict(params)
    ste = estimators.get("ste", clip=None)
    return [L.binarize_weights(flat[(*path.split("/"), "kernel")], ste, {}, None, weight_norm=weight_norm,
                               weight_scale="none") for path in sorted(binary_kernels)]


def flip_ratio(old: Any, new: Any, binary_kernels: set[str], weight_norm: str) -> Array:
    """Fraction of binary weights whose sign changed in this step (larq's FlipRatio)."""
    if not binary_kernels:
        return jnp.zeros((), jnp.float32)
    a, b = _binary_signs(old, binary_kernels, weight_norm), _binary_signs(new, binary_kernels, weight_norm)
    flips = sum(jnp.sum(x != y) for x, y in zip(a, b, strict=True))
    return flips.astype(jnp.float32) / sum(x.size for x in a)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *, total_steps: int,
                    label_smoothing: float, binary_kernels: set[str], weight_norm: str,
                    teacher: nn.Module | None = None, alpha: float = 0.9,
                    temperature: float = 1.0) -> Callable[..., tuple[TrainState, dict[str, Array]]]:
    num_classes = model.num_classes

    def step(state: TrainState, batch: dict[str, Array], teacher_vars: Any) -> tuple[TrainState, dict]:
        progress = state.step.astype(jnp.float32) / total_steps  # for scheduled estimators
        images, labels = batch["images"], batch["labels"]
        teacher_logits = None
        if teacher is not None:
            teacher_logits = jax.lax.stop_gradient(teacher.apply(teacher_vars, images, train=False))

        def loss_fn(trainable):
            variables = {"params": trainable["params"], "batch_stats": state.batch_stats}
            if trainable["estimator"]:
                variables["estimator"] = trainable["estimator"]
            logits, updates = model.apply(variables, images, train=True, progress=progress,
                                          mutable=["batch_stats"])
            if teacher_logits is None:
                per_example = losses.cross_entropy(logits, labels, label_smoothing)
            else:
                per_example = losses.distillation(logits, teacher_logits, labels, alpha, temperature,
                                                  label_smoothing)
            return jnp.mean(per_example), (logits, updates["batch_stats"])

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.trainable)
        finite = jnp.isfinite(loss) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        metrics = {
            "loss": loss,
            "top1": jnp.mean(losses.topk_correct(logits, labels, 1)),
            "grad_norm": optax.tree.norm(grads),
            "flip_ratio": flip_ratio(state.params, trainable["params"], binary_kernels, weight_norm),
            "nonfinite": 1.0 - finite.astype(jnp.float32),
        }
        if num_classes >= 5:
            metrics["top5"] = jnp.mean(losses.topk_correct(logits, labels, 5))
        new_state = state.replace(step=state.step + 1, params=trainable["params"], estimator=trainable["estimator"],
                                  batch_stats=batch_stats, opt_state=opt_state)
        return new_state, metrics

    return step


def make_eval_step(model: nn.Module) -> Callable[[dict, dict[str, Array]], dict[str, Array]]:
    """Masked sums over a padded global batch: loss, correct top-1/top-5, count."""
    k5 = model.num_classes >= 5

    def step(variables: dict, batch: dict[str, Array]) -> dict[str, Array]:
        logits = model.apply(variables, batch["images"], train=False)
        mask = batch["mask"]
        out = {"loss": jnp.sum(losses.cross_entropy(logits, batch["labels"]) * mask),
               "top1": jnp.sum(losses.topk_correct(logits, batch["labels"], 1) * mask),
               "count": jnp.sum(mask)}
        if k5:
            out["top5"] = jnp.sum(losses.topk_correct(logits, batch["labels"], 5) * mask)
        return out

    return step
