"""Optimizers by parameter partition, and learning-rate schedules.

The trainable tree is ``{'params': ..., 'estimator': ...}``. Its leaves fall in partitions:

- ``binary_kernel``: latent weights of binary layers (found from the model itself);
- ``real_kernel``: kernels of real convolutions and dense layers;
- ``other``: biases, BN scales and offsets, PReLU slopes, learnable shifts;
- ``estimator``: the learnable estimator's theta, with an optimizer of its own.

The three main partitions share ``config.optimizer`` with per-partition lr multipliers and
weight decay; ``estimator`` follows ``config.optimizer.estimator``. (The official BBC recipe:
Adam 2.5e-3 with linear decay and no weight decay for the model, Adam 1e-3 x 0.1 at epochs
70/90/100/110 for the estimator.) A frozen teacher is not trainable and has no optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

Schedule = Callable[[Any], Any]


def schedule(opt: Any, total_steps: int, steps_per_epoch: float) -> Schedule:
    """step -> learning rate for ``opt`` (an ``optimizer_config``) over ``total_steps`` steps."""
    base, kind = float(opt.learning_rate), opt.schedule
    if opt.schedule_unit == "epoch":
        horizon = total_steps / steps_per_epoch

        def t(step):  # the epoch index the PyTorch scheduler believes it is in
            return jnp.floor(step / steps_per_epoch) + (1.0 if opt.epoch_start_quirk else 0.0)
    else:
        horizon = float(total_steps)

        def t(step):
            return jnp.asarray(step, jnp.float32)

    milestones = jnp.asarray(tuple(opt.milestones) or (math.inf,), jnp.float32)

    def lr(step):
        u = t(step)
        if kind == "constant":
            value = base * jnp.ones_like(u)
        elif kind == "linear":
            value = base * jnp.clip(1.0 - u / horizon, 0.0, 1.0)
        elif kind == "cosine":
            value = base * 0.5 * (1.0 + jnp.cos(math.pi * jnp.clip(u / horizon, 0.0, 1.0)))
        else:
            value = base * opt.gamma ** jnp.sum(u >= milestones)
        if opt.warmup_steps:
            value = value * jnp.minimum(1.0, (jnp.asarray(step, jnp.float32) + 1.0) / opt.warmup_steps)
        return value

    return lr


def _transform(opt: Any, lr: Schedule, weight_decay: float, lr_mult: float) -> optax.GradientTransformation:
    if lr_mult == 0.0:
        return optax.set_to_zero()
    chain = []
    if opt.grad_clip_norm:
        chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    if weight_decay and opt.weight_decay_mode == "l2":
        chain.append(optax.add_decayed_weights(weight_decay))
    if opt.name == "adam":
        chain.append(optax.scale_by_adam(opt.b1, opt.b2, opt.eps))
    else:
        chain.append(optax.trace(opt.momentum, opt.nesterov))
    if weight_decay and opt.weight_decay_mode == "decoupled":
        chain.append(optax.add_decayed_weights(weight_decay))
    chain.append(optax.scale_by_learning_rate(lambda s: lr(s) * lr_mult))
    return optax.chain(*chain)


def partition_labels(trainable: Any, binary_kernels: set[str]) -> Any:
    """A tree like ``trainable`` of partition names; ``binary_kernels`` holds module paths
    ('layer1_0/binary_conv') of layers whose kernel is binarized."""
    def label(collection: str, path: tuple[str, ...]) -> str:
        *modules, leaf = path
        if collection == "estimator":
            return "estimator"
        if leaf == "kernel":
            return "binary_kernel" if "/".join(modules) in binary_kernels else "real_kernel"
        return "other"

    # Per collection, so that an empty one (a model without a learnable estimator) keeps its {}.
    return {collection: traverse_util.unflatten_dict({p: label(collection, p)
                                                      for p in traverse_util.flatten_dict(tree)})
            for collection, tree in trainable.items()}


def make(config: Any, trainable: Any, binary_kernels: set[str], total_steps: int, steps_per_epoch: float,
         weight_decay_override: float | None = None) -> tuple[optax.GradientTransformation, dict[str, Schedule]]:
    """The partitioned optimizer and its schedules ({'main': ..., 'estimator': ...})."""
    opt = config.optimizer
    schedules = {"main": schedule(opt, total_steps, steps_per_epoch),
                 "estimator": schedule(opt.estimator, total_steps, steps_per_epoch)}
    transforms = {}
    for name, part in opt.partitions.items():
        wd = part.weight_decay if part.weight_decay is not None else opt.weight_decay
        if weight_decay_override is not None:
            wd = weight_decay_override
        transforms[name] = _transform(opt, schedules["main"], wd, part.lr_mult)
    transforms["estimator"] = _transform(opt.estimator, schedules["estimator"], opt.estimator.weight_decay, 1.0)
    labels = partition_labels(trainable, binary_kernels)
    return optax.multi_transform(transforms, labels), schedules


def partition_sizes(trainable: Any, binary_kernels: set[str]) -> dict[str, int]:
    labels = partition_labels(trainable, binary_kernels)
    sizes: dict[str, int] = {}
    for label, leaf in zip(jax.tree.leaves(labels), jax.tree.leaves(trainable), strict=True):
        sizes[label] = sizes.get(label, 0) + int(leaf.size)
    return sizes
