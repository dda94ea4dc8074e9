"""The training loop end to end on real data (scikit-learn's digits): train.py, sharded equals single
device, SIGKILL + resume equals an uninterrupted run, exact evaluation, distillation, two stages,
non-finite losses."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlpbnn import data, models
from mlpbnn.data.small import digits
from mlpbnn.tasks.classification import cross_entropy
from mlpbnn.train import TrainingDiverged, run
from mlpbnn.train.checkpoint import Checkpoints
from mlpbnn.train.metrics import read_metrics
from mlpbnn.variables_io import load_variables, save_variables
from tests.utils_train import SMALL_CLI, cli, kill_after_checkpoint, tiny


@pytest.mark.slow
def test_train_py_end_to_end(tmp_path):
    out = cli(Path("run"), *SMALL_CLI[:2], "--config.num_train_steps=6", "--config.log_every_steps=2",
              "--config.checkpoint_every_steps=4", cwd=tmp_path)  # a relative workdir, as in the README
    assert out.returncode == 0, out.stdout + out.stderr
    assert "eval top-1" in out.stdout + out.stderr
    run_dir = tmp_path / "run"
    train = read_metrics(run_dir, "train")
    assert [r["step"] for r in train] == [2, 4, 6]
    for key in ("loss", "top1", "top5", "lr/binary_kernel", "lr/real_kernel", "lr/other", "lr/estimator",
                "flip_ratio", "steps_per_sec"):
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
    kill_after_checkpoint(proc, victim, 4, timeout=300)
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
    np.testing.assert_allclose(final["loss"], np.mean(cross_entropy(logits, ds.y_test)), rtol=1e-5)


@pytest.mark.slow
def test_distillation_and_two_stages(tmp_path):
    """A full-precision teacher (a variables checkpoint of an initialised ResNet-18), then two
    stages: real weights first, binary ones second."""
    teacher = models.create("resnet18", 10, small_inputs=True, width=8, stage_sizes=(1, 1, 1, 1))
    save_variables(tmp_path / "teacher" / "variables", teacher.init(jax.random.key(1), jnp.zeros((1, 8, 8, 1))),
                   "resnet18", {"num_classes": 10, "small_inputs": True, "width": 8, "stage_sizes": [1, 1, 1, 1]})
    final = run(tiny(**{"teacher.checkpoint": str(tmp_path / "teacher" / "variables"), "teacher.alpha": 0.9,
                        "two_stage.enabled": True, "num_train_steps": 8}), tmp_path / "student")
    assert final["count"] == 360
    out = (tmp_path / "student").iterdir()
    assert {"summary_stage1.txt", "summary_stage2.txt"} <= {p.name for p in out}
    # Stage one trains real weights (no weight estimator), stage two binary ones.
    assert "weights: none" in (tmp_path / "student" / "summary_stage1.txt").read_text()
    assert "weights: mlp" in (tmp_path / "student" / "summary_stage2.txt").read_text()


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
    assert ckpts.manager.all_steps() == [4]
    assert ckpts.restore_meta(4)["step"] == 4


def test_merge_variables_strict_and_partial():
    """init_checkpoint: strict by default (every variable of the model, nothing else); with
    init_strict=False an ImageNet classifier's backbone goes into a pose model: shared variables
    loaded, the head kept at its init, fc ignored; a shape disagreement is an error either way."""
    from mlpbnn.train.loop import merge_variables

    z = functools.partial(np.zeros, dtype=np.float32)
    init = {"params": {"conv1": {"kernel": z((3, 3))}, "final_layer": {"kernel": z(2)}},
            "batch_stats": {"bn1": {"mean": z(3)}}}
    loaded = {"params": {"conv1": {"kernel": np.ones((3, 3))}, "fc": {"kernel": np.ones(4)}},
              "batch_stats": {"bn1": {"mean": np.ones(3)}}}
    with pytest.raises(ValueError, match=r"unexpected params/fc/kernel \(4,\)[\s\S]*missing params/final_layer"):
        merge_variables(init, loaded, "ckpt")
    merged = merge_variables(init, loaded, "ckpt", strict=False)
    np.testing.assert_array_equal(merged["params"]["conv1"]["kernel"], np.ones((3, 3)))
    np.testing.assert_array_equal(merged["params"]["final_layer"]["kernel"], np.zeros(2))
    np.testing.assert_array_equal(merged["batch_stats"]["bn1"]["mean"], np.ones(3))
    assert "fc" not in merged["params"]
    loaded["params"]["conv1"]["kernel"] = np.ones((3, 4))
    with pytest.raises(ValueError, match=r"conv1/kernel: model has \(3, 3\), ckpt has \(3, 4\)"):
        merge_variables(init, loaded, "ckpt", strict=False)
