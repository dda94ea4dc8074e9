"""mlpbnn.study: K copies trained as one vmapped program equal K separate runs of the trainer's step
(seeds and numeric hparams included) and, end to end, the trainer itself (mlpbnn.train.run) with the
copy's seed and learning rates; the hparams act as documented."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlpbnn.study import Copy, Study, scale_estimator_init, unstack
from mlpbnn.train import run
from mlpbnn.train.metrics import read_metrics
from mlpbnn.train.step import make_train_step
from mlpbnn.variables_io import load_variables
from tests.utils_train import tiny

STEPS = 3


def _config(**overrides):
    return tiny(**{"num_train_steps": STEPS, "log_every_steps": 1, "checkpoint_every_steps": STEPS,
                   "model.width": 4, "model.stage_sizes": (1,), "num_devices": 1, **overrides})


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.slow
def test_vmapped_copies_equal_separate_runs():
    copies = [Copy(0), Copy(1, lr_scale=0.5, estimator_lr_scale=2.0), Copy(0, lr_scale=2.0),
              Copy(0, estimator_init_scale=2.0)]
    study = Study(_config(), copies)
    state = study.init()
    initial = jax.device_get(state)  # the vmapped step donates its state
    batches = study.batches(0)
    stream = [next(batches) for _ in range(STEPS)]
    batches.close()
    # Copies with one seed read the same input; different seeds, different input.
    np.testing.assert_array_equal(stream[0]["images"][0], stream[0]["images"][2])
    assert not np.array_equal(stream[0]["images"][0], stream[0]["images"][1])

    vmapped_losses = []
    for batch in stream:
        state, metrics = study.train_step(state, batch, None)
        vmapped_losses.append(np.asarray(metrics["loss"]))
    vmapped = jax.device_get(state)

    single = jax.jit(make_train_step(study.model, study.tx, study.task, total_steps=study.total))
    for i in range(len(copies)):
        s = jax.tree.map(jnp.asarray, unstack(initial, i))
        for t, batch in enumerate(stream):
            s, m = single(s, unstack(batch, i), None)
            np.testing.assert_allclose(float(m["loss"]), vmapped_losses[t][i], rtol=1e-5, atol=1e-6)
        one = jax.device_get(s)
        for part in ("params", "batch_stats", "estimator", "opt_state"):
            assert _max_diff(getattr(one, part), unstack(getattr(vmapped, part), i)) < 1e-5, (i, part)
        assert int(one.step) == STEPS

    # Not vacuous: the copies differ, each hparam as documented.
    assert _max_diff(unstack(vmapped.params, 0), unstack(vmapped.params, 1)) > 1e-3
    w1 = initial.estimator["weight_estimator"]["w1"]
    np.testing.assert_array_equal(w1[3], 2.0 * w1[0])                       # estimator_init_scale: W1 x 2
    np.testing.assert_array_equal(initial.estimator["weight_estimator"]["w0"][3],
                                  initial.estimator["weight_estimator"]["w0"][0])
    # lr_scale 2 on copy 0's seed: the first Adam step moves every parameter twice as far.
    s0, s2 = (jax.tree.map(jnp.asarray, unstack(initial, i)) for i in (0, 2))
    (a, _), (b, _) = single(s0, unstack(stream[0], 0), None), single(s2, unstack(stream[0], 2), None)
    for p0, p1, p2 in zip(jax.tree.leaves(initial.params), jax.tree.leaves(a.params), jax.tree.leaves(b.params),
                          strict=True):
        step0, step2 = np.asarray(p1) - p0[0], np.asarray(p2) - p0[2]
        np.testing.assert_allclose(step2, 2.0 * step0, rtol=1e-4, atol=1e-9)
    assert max(float(np.max(np.abs(np.asarray(p1) - p0[0]))) for p0, p1 in
               zip(jax.tree.leaves(initial.params), jax.tree.leaves(a.params), strict=True)) > 1e-4


def test_scale_estimator_init_scales_the_last_layer_of_every_theta():
    est = {"weight_estimator": {"w0": jnp.ones((1, 3)), "w1": jnp.full((3, 2), 0.5), "b1": jnp.ones(2)},
           "input_estimator": {"w0": jnp.full((1, 2), 3.0)},               # classifier: one layer
           "layer1": {"conv": {"w0": jnp.ones((1, 2)), "w1": jnp.ones((2, 2)), "w2": jnp.ones((2, 2))}}}
    out = scale_estimator_init(est, jnp.asarray(3.0))
    assert float(out["weight_estimator"]["w0"][0, 0]) == 1.0 and float(out["weight_estimator"]["w1"][0, 0]) == 1.5
    assert float(out["weight_estimator"]["b1"][0]) == 3.0 and float(out["input_estimator"]["w0"][0, 0]) == 9.0
    assert [float(out["layer1"]["conv"][k][0, 0]) for k in ("w0", "w1", "w2")] == [1.0, 1.0, 3.0]
    assert scale_estimator_init({}, jnp.asarray(2.0)) == {}


def test_study_rejects_what_only_the_trainer_does():
    c = _config()
    c.two_stage.enabled = True
    with pytest.raises(ValueError, match="two_stage.enabled: not supported by mlpbnn.study"):
        Study(c, [0])


@pytest.mark.slow
def test_study_equals_the_trainer(tmp_path):
    # Two copies in one program; copy 1 against mlpbnn.train.run with seed 1 and the scaled learning
    # rates: every step's metrics, the final variables and the final evaluation.
    config = _config()
    study = Study(config, [Copy(0), Copy(1, lr_scale=0.5, estimator_lr_scale=2.0)])
    result = study.run()
    assert [r["step"] for r in result.train[1]] == [1, 2, 3] and [r["step"] for r in result.eval[1]] == [3]
    assert [step for step, _ in result.estimator[1]] == [0, STEPS] and result.diverged_at == [None, None]
    assert result.examples_per_sec > 0 and result.compile_seconds > 0

    trainer = _config(seed=1)
    trainer.optimizer.learning_rate *= 0.5
    trainer.optimizer.estimator.learning_rate *= 2.0
    final = run(trainer, tmp_path / "run")
    logged = read_metrics(tmp_path / "run", "train")
    for ours, theirs in zip(result.train[1], logged, strict=True):
        assert ours["step"] == theirs["step"]
        for key in ("loss", "top1", "grad_norm", "flip_ratio", "lr/binary_kernel", "lr/other", "lr/estimator"):
            np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5, atol=1e-7, err_msg=key)
    assert result.train[1][0]["lr/binary_kernel"] == pytest.approx(0.5 * result.train[0][0]["lr/binary_kernel"])
    variables, _ = load_variables(tmp_path / "run" / "variables")
    ours = jax.device_get(unstack(result.state.variables(), 1))
    assert _max_diff({k: variables[k] for k in ours}, ours) < 1e-5
    assert _max_diff(result.estimator[1][-1][1], variables["estimator"]) < 1e-5
    for key in ("loss", "top1", "top5", "count"):
        np.testing.assert_allclose(result.eval[1][-1][key], final[key], rtol=1e-5, err_msg=key)
    assert result.eval[0][-1]["loss"] != result.eval[1][-1]["loss"]
