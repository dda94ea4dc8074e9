"""Optimizers by parameter partition, and learning-rate schedules.

The trainable tree is ``{'params': ..., 'estimator': ...}``. Its leaves fall in partitions:

- ``binary_kernel``: latent weights of binary layers (found from the model itself);
- ``real_kernel``: kernels of real convolutions and dense layers;
- ``other``: biases, BN scales and offsets, PReLU slopes, learnable shifts;
- ``estimator``: the learnable estimator's theta, with an optimizer of its own.

The three main partitions share ``config.optimizer`` with per-partition lr multipliers and
weight decay; ``estimator`` follows ``config.optimizer.estimator``. ``binary_kernel`` may instead
use Bop (``optimizer.partitions.binary_kernel.name='bop'``, Helwegen et al., arXiv 1906.02107),
the latent-free binary optimizer: ``bop`` below, with its ``gamma`` and ``threshold`` scheduled.
(The official BBC recipe: Adam 2.5e-3 with linear decay and no weight decay for the model, Adam 1e-3 x 0.1 at epochs
70/90/100/110 for the estimator.) A frozen teacher is not trainable and has no optimizer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

Schedule = Callable[[Any], Any]


def _base_schedule(opt: Any, horizon: float) -> Schedule:
    """The schedule over its own unit (steps or epochs), from optax."""
    base = float(opt.learning_rate)
    if opt.schedule == "constant":
        return optax.constant_schedule(base)
    if opt.schedule == "linear":
        return optax.linear_schedule(base, 0.0, horizon)
    if opt.schedule == "cosine":
        return optax.cosine_decay_schedule(base, horizon)
    scales: dict[float, float] = {}
    for m in opt.milestones:  # a repeated milestone multiplies twice, as PyTorch's MultiStepLR
        scales[float(m)] = scales.get(float(m), 1.0) * opt.gamma
    return optax.piecewise_constant_schedule(base, scales)


def schedule(opt: Any, total_steps: int, steps_per_epoch: float) -> Schedule:
    """step -> learning rate for ``opt`` (an ``optimizer_config``) over ``total_steps`` steps.

    optax's schedules, evaluated per step (``schedule_unit='step'``) or on the epoch index the
    PyTorch scheduler believes it is in (``'epoch'``: piecewise constant per epoch, shifted by one
    with ``epoch_start_quirk``), times a linear warm-up factor min(1, (step + 1) / warmup_steps).
    """
    if opt.schedule_unit == "epoch":
        inner = _base_schedule(opt, total_steps / steps_per_epoch)
        shift = 1.0 if opt.epoch_start_quirk else 0.0

        def main(step):
            return inner(jnp.floor(jnp.asarray(step, jnp.float32) / steps_per_epoch) + shift)
    else:
        main = _base_schedule(opt, float(total_steps))
    if opt.warmup_steps <= 1:
        return main
    warmup = optax.linear_schedule(1.0 / opt.warmup_steps, 1.0, opt.warmup_steps - 1)
    return lambda step: main(step) * warmup(step)


def _chain(opt: Any, weight_decay: float, learning_rate: Any) -> optax.GradientTransformation:
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
    chain.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*chain)


def _transform(opt: Any, lr: Schedule, weight_decay: float, lr_mult: float) -> optax.GradientTransformation:
    if lr_mult == 0.0:
        return optax.set_to_zero()
    # inject_hyperparams keeps the learning rate of the latest update in the optimizer state,
    # where the trainer reads it for the log.
    make = functools.partial(_chain, opt, weight_decay)
    return optax.inject_hyperparams(make)(learning_rate=(lambda s: lr(s) * lr_mult) if lr_mult != 1.0 else lr)


class BopState(NamedTuple):
    """Bop's state: the exponential moving average of each binary kernel's gradient."""

    momentum: Any


def bop(gamma: float | Schedule = 1e-4, threshold: float | Schedule = 1e-8) -> optax.GradientTransformation:
    """Bop (Helwegen et al., arXiv 1906.02107, Algorithm 1) as an optax transformation of the
    binary kernels: with the gradient g_t,

        m_t = (1 - gamma) m_{t-1} + gamma g_t            (m_0 = 0; gamma the adaptivity rate)
        w_t = -w_{t-1} if |m_t| > threshold and sign(m_t) = sign(w_{t-1}), else w_{t-1}

    (larq's ``Bop``: flip where sign(w) m_t > threshold). Only the sign of a latent weight
    matters to Bop; a flip negates it, keeping its magnitude (larq writes +-1 instead; with the
    forward alpha * sign(w), alpha = mean |w|, the two differ only in alpha, which the BN after
    every binary conv absorbs), and a weight of exactly 0 never flips. ``gamma`` and
    ``threshold`` are numbers or schedules of the step count (the update's index from 0).
    The updates are ``w_t - w_{t-1}``: apply them with ``optax.apply_updates``; no learning rate.
    """
    def init(params):
        return BopState(jax.tree.map(jnp.zeros_like, params)), optax.ScaleByScheduleState(jnp.zeros([], jnp.int32))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("bop needs the parameters: tx.update(grads, state, params)")
        bop_state, count = state
        g = gamma(count.count) if callable(gamma) else gamma
        t = threshold(count.count) if callable(threshold) else threshold
        momentum = jax.tree.map(lambda m, d: (1 - g) * m + g * d, bop_state.momentum, grads)
        updates = jax.tree.map(lambda m, w: jnp.where(jnp.sign(w) * m > t, -2 * w, jnp.zeros_like(w)),
                               momentum, params)
        return updates, (BopState(momentum), optax.ScaleByScheduleState(optax.safe_increment(count.count)))

    return optax.GradientTransformation(init, update)


def bop_schedules(part: Any, main: Any, total_steps: int, steps_per_epoch: float) -> tuple[Schedule, Schedule]:
    """Bop's gamma and threshold schedules from a partition's config (``gamma``, ``threshold``,
    ``gamma_schedule`` / ``threshold_schedule`` of ``constant | linear | cosine | step``, with
    ``milestones`` and ``decay`` for 'step'), in the main optimizer's ``schedule_unit``: the
    learning-rate schedules with the value in place of the learning rate (larq's Bop example
    decays gamma by 10x every 100 epochs: ``step``, ``milestones=(100, 200)``, ``decay=0.1``)."""
    def one(value: float, kind: str) -> Schedule:
        opt = SimpleNamespace(learning_rate=value, schedule=kind, schedule_unit=main.schedule_unit,
                              epoch_start_quirk=main.epoch_start_quirk, warmup_steps=0,
                              milestones=tuple(part.milestones), gamma=part.decay)
        return schedule(opt, total_steps, steps_per_epoch)

    return one(part.gamma, part.gamma_schedule), one(part.threshold, part.threshold_schedule)


def learning_rates(opt_state: Any) -> dict[str, Any]:
    """{partition: learning rate of the latest update} from a ``make`` optimizer's state
    (0 for a frozen partition and for Bop, which has none)."""
    out = {}
    for name, inner in opt_state.inner_states.items():
        hp = getattr(inner.inner_state, "hyperparams", None)
        out[name] = hp["learning_rate"] if hp is not None else jnp.zeros((), jnp.float32)
    return out


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
    """The partitioned optimizer and its schedules ({'main': ..., 'estimator': ...}); the learning
    rates it used last are in its state (``learning_rates``)."""
    opt = config.optimizer
    schedules = {"main": schedule(opt, total_steps, steps_per_epoch),
                 "estimator": schedule(opt.estimator, total_steps, steps_per_epoch)}
    transforms = {}
    for name, part in opt.partitions.items():
        wd = part.weight_decay if part.weight_decay is not None else opt.weight_decay
        if weight_decay_override is not None:
            wd = weight_decay_override
        if part.get("name", "") == "bop":  # latent-free: no learning rate, no weight decay
            transforms[name] = bop(*bop_schedules(part, opt, total_steps, steps_per_epoch))
            continue
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
