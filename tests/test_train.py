"""The trainer end to end on real data (scikit-learn's digits): train.py, sharded equals single
device, SIGKILL + resume equals an uninterrupted run, exact evaluation, distillation, two stages,
bf16, bad configs and non-finite losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlpbnn import data, models
from mlpbnn.data.small import digits
from mlpbnn.train import ConfigError, TrainingDiverged, base_config, losses, optim, run
from mlpbnn.train.checkpoint import Checkpoints
from mlpbnn.train.config import validate
from mlpbnn.train.metrics import read_metrics
from mlpbnn.variables_io import load_variables

ROOT = Path(__file__).resolve().parents[1]


def tiny(**overrides):
    c = base_config()
    c.model.name = "bireal_resnet18"
    c.model.small_inputs = True
    c.model.width = 8
    c.model.stage_sizes = (1, 1, 1, 1)
    c.estimator.weights = "mlp(init='positive', hidden=16)"
    c.data.name = "digits"
    c.batch_size = 16
    c.num_train_steps = 6
    c.log_every_steps = 2
    c.checkpoint_every_steps = 4
    c.progress_bar = False
    c.optimizer.learning_rate = 2.5e-3
    c.optimizer.schedule = "linear"
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c


def cli(workdir: Path, *flags: str, devices: int = 1, wait: bool = True, cwd: Path = ROOT):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/digits.py"),
           "--workdir", str(workdir), "--config.progress_bar=False", *flags]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


SMALL_CLI = ("--config.model.width=8", "--config.batch_size=32", "--config.num_train_steps=40",
             "--config.log_every_steps=2", "--config.checkpoint_every_steps=2", "--config.eval_every_steps=-1")


@pytest.mark.slow
def test_train_py_end_to_end(tmp_path):
    out = cli(Path("run"), *SMALL_CLI[:2], "--config.num_train_steps=6", "--config.log_every_steps=2",
              "--config.checkpoint_every_steps=4", cwd=tmp_path)  # a relative workdir, as in the README
    assert out.returncode == 0, out.stdout + out.stderr
    assert "eval top-1" in out.stdout + out.stderr
    run_dir = tmp_path / "run"
    train = read_metrics(run_dir, "train")
    assert [r["step"] for r in train] == [2, 4, 6]
    for key in ("loss", "top1", "top5", "lr/main", "lr/estimator", "flip_ratio", "steps_per_sec"):
        assert all(np.isfinite(r[key]) for r in train), key
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert final["step"] == 6 and final["eval"]["count"] == 360
    assert any((run_dir / "tensorboard").iterdir())
    assert (run_dir / "summary_stage1.txt").read_text().count("binary") > 0
    assert Checkpoints(run_dir, 3).latest_step() == 6
    variables, meta = load_variables(run_dir / "variables")
    assert meta["model"] == "bireal_resnet18" and "estimator" in variables


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted(tmp_path):
    """A run killed with SIGKILL just after a checkpoint and started again with the same command
    ends with exactly the metrics of a run that was never interrupted."""
    whole = cli(tmp_path / "whole", *SMALL_CLI)
    assert whole.returncode == 0, whole.stderr
    victim = tmp_path / "victim"
    proc = cli(victim, *SMALL_CLI, wait=False)
    deadline = time.time() + 300
    while not (victim / "checkpoints" / "4").is_dir():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (victim / "final_metrics.json").exists(), "the run finished before it could be killed"
    killed_at = Checkpoints(victim, 3).latest_step()
    assert killed_at is not None and killed_at < 40
    again = cli(victim, *SMALL_CLI)
    assert again.returncode == 0, again.stderr
    assert f"resuming from {victim / 'checkpoints'} at step {killed_at}" in again.stdout + again.stderr
    a = json.loads((tmp_path / "whole" / "final_metrics.json").read_text())
    b = json.loads((victim / "final_metrics.json").read_text())
    assert a["eval"] == b["eval"]
    assert a["train"]["loss"] == b["train"]["loss"] and a["train"]["top1"] == b["train"]["top1"]
    strip = ("steps_per_sec", "examples_per_sec")
    clean = [{k: v for k, v in r.items() if k not in strip} for r in read_metrics(tmp_path / "whole")]
    resumed = [{k: v for k, v in r.items() if k not in strip} for r in read_metrics(victim)]
    assert clean == resumed  # the log reads as one uninterrupted run, every loss equal


@pytest.mark.slow
def test_eight_devices_equal_one_device(tmp_path):
    """Batch sharded over 8 devices (BN statistics over the global batch) gives the losses of
    one device for the first 10 steps."""
    assert jax.device_count() == 8
    c = dict(num_train_steps=10, log_every_steps=1, checkpoint_every_steps=10, batch_size=32, best_metric="")
    run(tiny(**c, num_devices=8), tmp_path / "d8")
    run(tiny(**c, num_devices=1), tmp_path / "d1")
    l8 = [r["loss"] for r in read_metrics(tmp_path / "d8", "train")]
    l1 = [r["loss"] for r in read_metrics(tmp_path / "d1", "train")]
    assert len(l8) == len(l1) == 10
    np.testing.assert_allclose(l8, l1, rtol=1e-4, atol=1e-5)
    assert l1[0] != l1[-1]


@pytest.mark.slow
def test_evaluation_is_exact_and_equals_a_direct_computation(tmp_path):
    """360 test images with eval batches of 48 (the last one padded): every image counted once,
    and top-1 and loss equal a direct pass over all images with the exported variables."""
    final = run(tiny(eval_batch_size=48), tmp_path / "run")
    assert final["count"] == 360
    variables, meta = load_variables(tmp_path / "run" / "variables")
    model = models.create(meta["model"], **meta["model_kwargs"])
    ds = digits(0)
    logits = model.apply(variables, ds.x_test, train=False)
    np.testing.assert_allclose(final["top1"], np.mean(np.argmax(logits, -1) == ds.y_test), atol=1e-6)
    np.testing.assert_allclose(final["loss"], np.mean(losses.cross_entropy(logits, ds.y_test)), rtol=1e-5)


@pytest.mark.slow
def test_distillation_from_a_trained_teacher_and_two_stages(tmp_path):
    run(tiny(**{"model.name": "resnet18"}), tmp_path / "teacher")
    final = run(tiny(**{"teacher.checkpoint": str(tmp_path / "teacher" / "variables"), "teacher.alpha": 0.9,
                        "two_stage.enabled": True, "num_train_steps": 8}), tmp_path / "student")
    assert final["count"] == 360
    out = (tmp_path / "student").iterdir()
    assert {"summary_stage1.txt", "summary_stage2.txt"} <= {p.name for p in out}
    # Stage one trains real weights (no weight estimator), stage two binary ones.
    assert "weights: none" in (tmp_path / "student" / "summary_stage1.txt").read_text()
    assert "weights: mlp" in (tmp_path / "student" / "summary_stage2.txt").read_text()


def test_distillation_loss_formula():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
    y = np.array([0, 3, 1, 4])
    p_t = np.exp(t) / np.exp(t).sum(-1, keepdims=True)
    log_p_s = s - np.log(np.exp(s).sum(-1, keepdims=True))
    want = 0.9 * -(p_t * log_p_s).sum(-1) + 0.1 * -log_p_s[np.arange(4), y]
    np.testing.assert_allclose(losses.distillation(s, t, y, 0.9), want, rtol=1e-5)


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
        result[dtype] = float(jnp.mean(losses.cross_entropy(logits, y)))
        leaves = jax.tree.leaves(variables)
        assert all(v.dtype == jnp.float32 for v in leaves)  # params, BN statistics, estimator stay f32
        assert logits.dtype == jnp.float32
    assert abs(result[jnp.float32] - result[jnp.bfloat16]) < 1e-2, result


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_good_checkpoint(tmp_path, monkeypatch):
    real_create = data.create

    def poisoned(cfg, seed):
        ds = real_create(cfg, seed)
        inner = ds.train_batches

        def batches(position, *args):
            for batch, pos in inner(position, *args):
                if pos > 7 * cfg_batch:  # from step 8 on
                    batch = {**batch, "images": np.full_like(batch["images"], np.nan)}
                yield batch, pos
        ds.train_batches = batches
        return ds

    cfg_batch = 16
    monkeypatch.setattr(data, "create", poisoned)
    workdir = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"non-finite loss or gradients at step 8"):
        run(tiny(num_train_steps=12), workdir)
    ckpts = Checkpoints(workdir, 3)
    assert ckpts.latest.all_steps() == [4]
    assert ckpts.restore_meta(4)["step"] == 4


def test_bad_configs_fail_with_the_field_named(tmp_path):
    cases = [
        ({"model.name": "resnet7"}, r"config.model.name: 'resnet7' is not valid; choose one of .*bireal_resnet18"),
        ({"estimator.weights": "sine"}, r"config.estimator.weights: unknown estimator 'sine'; valid names: .*ste"),
        ({"optimizer.name": "lamb"}, r"config.optimizer.name: 'lamb' is not valid; choose one of adam, sgd"),
        ({"batch_size": 12}, r"config.batch_size: 12 is not divisible by the 8 devices"),
        ({"data.name": "cifar"}, r"config.data.name: 'cifar' is not valid"),
        ({"teacher.checkpoint": str(tmp_path / "none")}, r"config.teacher.checkpoint: .* does not exist"),
        ({"data.name": "imagenet", "data.data_dir": str(tmp_path / "tfds"), "data.manual_dir": ""},
         r"config.data.manual_dir: imagenet2012 is not prepared"),
        ({"checkpoint_every_steps": 3}, r"config.checkpoint_every_steps: 3 must be a multiple of log_every_steps"),
        ({"optimizer.estimator.schedule": "step"}, r"config.optimizer.estimator.milestones"),
    ]
    for overrides, message in cases:
        c = tiny(**overrides)
        with pytest.raises(ConfigError, match=message):
            validate(c, 8)


def test_bad_config_from_the_command_line_fails_before_compiling(tmp_path):
    out = cli(tmp_path / "x", "--config.model.name=resnet7")
    assert out.returncode != 0
    assert "error: config.model.name: 'resnet7' is not valid" in out.stderr
    assert not (tmp_path / "x").exists()


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


def test_optimizer_partitions_follow_the_model():
    c = tiny()
    c.optimizer.partitions.binary_kernel.lr_mult = 0.0  # freezes latent weights only
    model = models.create("bireal_resnet18", 10, small_inputs=True, width=8, stage_sizes=(1, 1, 1, 1))
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
    trainable = {"params": variables["params"], "estimator": variables["estimator"]}
    from mlpbnn.train.loop import binary_kernel_paths
    binary = binary_kernel_paths(model, (8, 8, 1))
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
