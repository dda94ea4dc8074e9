"""Optimizer partitions and learning-rate schedules (optax), and the learning rates the optimizer
state reports for the log."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mlpbnn import layers, models
from mlpbnn.train import base_config, optim
from tests.utils_train import tiny


def test_schedules_and_the_epoch_start_quirk():
    opt = base_config().optimizer
    opt.learning_rate, opt.schedule, opt.schedule_unit = 1.0, "linear", "epoch"
    lr = optim.schedule(opt, total_steps=40, steps_per_epoch=10)  # 4 epochs
    assert [float(lr(s)) for s in (0, 9, 10, 39)] == [1.0, 1.0, 0.75, 0.25]
    opt.epoch_start_quirk = True
    lr = optim.schedule(opt, total_steps=40, steps_per_epoch=10)
    assert [float(lr(s)) for s in (0, 10, 39)] == [0.75, 0.5, 0.0]  # as the official scheduler.step() first
    est = base_config().optimizer.estimator
    est.schedule, est.schedule_unit, est.milestones, est.learning_rate = "step", "epoch", (2, 3), 1.0
    lr = optim.schedule(est, total_steps=40, steps_per_epoch=10)
    np.testing.assert_allclose([float(lr(s)) for s in (19, 20, 30)], [1.0, 0.1, 0.01], rtol=1e-6)


@pytest.mark.slow
def test_optimizer_partitions_follow_the_model():
    c = tiny()
    c.optimizer.partitions.binary_kernel.lr_mult = 0.0  # freezes latent weights only
    model = models.create("bireal_resnet18", 10, small_inputs=True, width=8, stage_sizes=(1, 1, 1, 1))
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
    trainable = {"params": variables["params"], "estimator": variables["estimator"]}
    binary = layers.binary_layer_paths(model, jnp.zeros((1, 8, 8, 1)), train=False)
    assert binary and all("binary_conv" in p for p in binary)
    tx, _ = optim.make(c, trainable, binary, 10, 5.0)
    grads = jax.tree.map(jnp.ones_like, trainable)
    updates, _ = tx.update(grads, tx.init(trainable), trainable)
    flat = flax.traverse_util.flatten_dict(updates)
    for path, u in flat.items():
        frozen = path[0] == "params" and path[-1] == "kernel" and "/".join(path[1:-1]) in binary
        assert bool(jnp.all(u == 0)) == frozen, path
    labels = optim.partition_labels(trainable, binary)
    assert set(jax.tree.leaves(labels)) == {"binary_kernel", "real_kernel", "other", "estimator"}


def test_optax_schedules_follow_the_written_formulas():
    """Each schedule against its formula written out (per step; warm-up multiplies)."""
    opt = base_config().optimizer
    opt.learning_rate = 0.5
    steps = np.arange(0, 100)
    for kind, want in [("constant", 0.5 * np.ones(100)),
                       ("linear", 0.5 * np.clip(1 - steps / 80, 0, 1)),
                       ("cosine", 0.5 * 0.5 * (1 + np.cos(np.pi * np.clip(steps / 80, 0, 1))))]:
        opt.schedule = kind
        lr = optim.schedule(opt, total_steps=80, steps_per_epoch=10)
        np.testing.assert_allclose([float(lr(s)) for s in steps], want, rtol=1e-6, atol=1e-7, err_msg=kind)
    opt.schedule, opt.milestones, opt.gamma, opt.warmup_steps = "step", (30, 60, 60), 0.1, 10
    lr = optim.schedule(opt, total_steps=80, steps_per_epoch=10)
    # A repeated milestone multiplies twice, as torch.optim.lr_scheduler.MultiStepLR does.
    want = 0.5 * 0.1 ** ((steps >= 30) + 2 * (steps >= 60)) * np.minimum(1.0, (steps + 1) / 10)
    np.testing.assert_allclose([float(lr(s)) for s in steps], want, rtol=1e-5)


def test_optimizer_state_reports_the_learning_rates_used():
    c = tiny()
    c.optimizer.learning_rate, c.optimizer.schedule = 1.0, "linear"
    c.optimizer.partitions.real_kernel.lr_mult = 0.5
    c.optimizer.partitions.other.lr_mult = 0.0
    c.optimizer.estimator.learning_rate = 0.25
    trainable = {"params": {"a": {"kernel": jnp.ones(3)}, "b": {"kernel": jnp.ones(2)}, "c": {"bias": jnp.ones(2)}},
                 "estimator": {"w0": jnp.ones(4)}}
    tx, schedules = optim.make(c, trainable, {"a"}, total_steps=10, steps_per_epoch=5.0)
    state = tx.init(trainable)
    grads = jax.tree.map(jnp.ones_like, trainable)
    for i in range(4):
        updates, state = tx.update(grads, state, trainable)
        lrs = {k: float(v) for k, v in optim.learning_rates(state).items()}
        assert lrs == {"binary_kernel": float(schedules["main"](i)), "real_kernel": float(schedules["main"](i) * 0.5),
                       "other": 0.0, "estimator": 0.25}, i
        np.testing.assert_allclose(lrs["binary_kernel"], 1.0 - i / 10, rtol=1e-6)


def _bop_by_hand(w0, grads, gammas, thresholds):
    """Helwegen et al. (arXiv 1906.02107), Algorithm 1, written out: m <- (1 - g) m + g grad;
    flip w where |m| > tau and sign(m) == sign(w)."""
    w, m, out = w0.copy(), np.zeros_like(w0), []
    for grad, g, tau in zip(grads, gammas, thresholds, strict=True):
        m = (1 - g) * m + g * grad
        flip = (np.abs(m) > tau) & (np.sign(m) == np.sign(w))
        w = np.where(flip, -w, w)
        out.append(w.copy())
    return out


def test_bop_follows_the_papers_update_rule():
    rng = np.random.default_rng(0)
    w0 = (rng.choice([-1.0, 1.0], 200) * rng.uniform(0.5, 2.0, 200)).astype(np.float32)  # |w| kept by a flip
    grads = [rng.normal(0, 1, 200) for _ in range(6)]
    gamma = optax.piecewise_constant_schedule(0.3, {3: 0.1})  # step 3 on: 0.03
    tau = lambda step: 0.1 + 0.05 * step  # noqa: E731 - a schedule of the step count
    want = _bop_by_hand(w0, grads, [float(gamma(i)) for i in range(6)], [0.1 + 0.05 * i for i in range(6)])
    tx = optim.bop(gamma, tau)
    w, state = jnp.asarray(w0), tx.init(jnp.asarray(w0))
    flips = 0
    for i, grad in enumerate(grads):
        updates, state = jax.jit(tx.update)(jnp.asarray(grad), state, w)
        new = optax.apply_updates(w, updates)
        flips += int(jnp.sum(jnp.sign(new) != jnp.sign(w)))
        w = new
        np.testing.assert_array_equal(np.asarray(w), want[i], err_msg=f"step {i}")
    assert 0 < flips < 6 * 200  # the rule did flip, and not everything
    with pytest.raises(ValueError, match="bop needs the parameters"):
        tx.update(jnp.asarray(grads[0]), tx.init(jnp.asarray(w0)))


def test_bop_partition_flips_binary_kernels_while_the_rest_keep_adam():
    c = tiny()
    part = c.optimizer.partitions.binary_kernel
    part.name, part.gamma, part.threshold = "bop", 0.5, 1e-3
    part.gamma_schedule, part.milestones, part.decay = "step", (2,), 0.1
    trainable = {"params": {"a": {"kernel": jnp.array([1.0, -2.0, 3.0, -4.0])}, "b": {"kernel": jnp.ones(2)}},
                 "estimator": {}}
    tx, _ = optim.make(c, trainable, {"a"}, total_steps=10, steps_per_epoch=5.0)
    state = tx.init(trainable)
    grads = {"params": {"a": {"kernel": jnp.array([1.0, 1.0, -1.0, -1.0])}, "b": {"kernel": jnp.ones(2)}},
             "estimator": {}}
    updates, state = tx.update(grads, state, trainable)
    # m = 0.5 * grad: sign agrees with w for the first and last only, |m| > 1e-3: those flip.
    np.testing.assert_array_equal(updates["params"]["a"]["kernel"], [-2.0, 0.0, 0.0, 8.0])
    np.testing.assert_allclose(updates["params"]["b"]["kernel"], -c.optimizer.learning_rate * np.ones(2), rtol=1e-5)
    assert float(optim.learning_rates(state)["binary_kernel"]) == 0.0
    gamma, _ = optim.bop_schedules(part, c.optimizer, 10, 5.0)
    assert [float(gamma(s)) for s in (0, 1, 2, 9)] == pytest.approx([0.5, 0.5, 0.05, 0.05])


def test_bop_config_is_checked_by_field():
    from mlpbnn.train.config import ConfigError, validate

    for overrides, message in [({"name": "sgd"}, r"binary_kernel.name: 'sgd' is not valid; choose '' "),
                               ({"name": "bop", "gamma": 1.5}, r"binary_kernel.gamma: must be a finite number in"),
                               ({"name": "bop", "threshold": -1.0}, r"binary_kernel.threshold: must be"),
                               ({"name": "bop", "gamma_schedule": "step"}, r"binary_kernel.milestones: gamma_sch")]:
        c = tiny()
        c.optimizer.partitions.binary_kernel.update(overrides)
        with pytest.raises(ConfigError, match=message):
            validate(c, 8)
