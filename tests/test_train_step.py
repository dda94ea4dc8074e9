"""The jit'd train step: mixed precision, and the metrics it reports."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlpbnn import layers, models, tasks
from mlpbnn.data.small import digits
from mlpbnn.tasks.classification import cross_entropy
from mlpbnn.train import optim
from mlpbnn.train.step import TrainState, make_train_step
from tests.utils_train import tiny


@pytest.mark.slow
def test_bfloat16_step_loss_is_close_to_float32():
    ds = digits(0)
    x, y = ds.x_train[:64], ds.y_train[:64]
    result = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = models.create("bireal_resnet18", 10, small_inputs=True, width=16, stage_sizes=(1, 1, 1, 1),
                              dtype=dtype)
        variables = model.init(jax.random.key(0), x[:1], train=False)
        logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        result[dtype] = float(jnp.mean(cross_entropy(logits, y)))
        leaves = jax.tree.leaves(variables)
        assert all(v.dtype == jnp.float32 for v in leaves)  # params, BN statistics, estimator stay f32
        assert logits.dtype == jnp.float32
    assert abs(result[jnp.float32] - result[jnp.bfloat16]) < 1e-2, result


@pytest.mark.slow
def test_frozen_binary_weights_flip_nothing():
    """flip_ratio counts sign changes of the binary weights' forward values: zero when their
    optimizer partition is frozen, above zero when it trains at a large learning rate."""
    ds = digits(0)
    batch = {"images": jnp.asarray(ds.x_train[:16]), "labels": jnp.asarray(ds.y_train[:16])}
    model = models.create("bireal_resnet18", 10, small_inputs=True, width=8, stage_sizes=(1, 1, 1, 1),
                          weight_estimator="ste")
    variables = model.init(jax.random.key(0), batch["images"][:1], train=False)
    binary = layers.binary_layer_paths(model, batch["images"][:1], train=False)
    task = tasks.classification.Classification(num_classes=10)
    ratios = []
    for mult in (0.0, 1.0):
        c = tiny()
        c.optimizer.learning_rate = 0.5
        c.optimizer.partitions.binary_kernel.lr_mult = mult
        trainable = {"params": variables["params"], "estimator": {}}
        tx, _ = optim.make(c, trainable, binary, 10, 5.0)
        state = TrainState(jnp.zeros((), jnp.int32), variables["params"], variables["batch_stats"], {},
                           tx.init(trainable), jax.random.key(0))
        _, metrics = jax.jit(make_train_step(model, tx, task, total_steps=10))(state, batch, None)
        assert np.isfinite(float(metrics["loss"])) and 0.0 <= float(metrics["top1"]) <= 1.0
        ratios.append(float(metrics["flip_ratio"]))
    assert ratios[0] == 0.0 and 0.0 < ratios[1] < 1.0
