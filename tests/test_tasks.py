"""The task abstraction: a task defined here, outside mlpbnn (regression of the digit's value
with a one-output head), trains through ``mlpbnn.train.run`` with exact evaluation, a best
checkpoint by its own metric, and exact resume, without any change to the trainer."""

from __future__ import annotations

import dataclasses
import json
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlpbnn import models, tasks
from mlpbnn.data.small import digits
from mlpbnn.tasks.base import Evaluator, Task, gather_rows
from mlpbnn.train import ConfigError, base_config, run
from mlpbnn.train.checkpoint import Checkpoints
from mlpbnn.train.metrics import read_metrics
from mlpbnn.variables_io import load_variables


class AbsErrorEvaluator(Evaluator):
    """Keeps every real example's absolute error on the host; the mean over all processes."""

    def __init__(self):
        self.errors: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []

    def update(self, outputs: dict[str, np.ndarray], batch: dict[str, Any]) -> None:
        self.errors.append(outputs["abs_err"])
        self.masks.append(np.asarray(batch["mask"]))

    def result(self) -> dict[str, float]:
        err, mask = gather_rows(np.concatenate(self.errors)), gather_rows(np.concatenate(self.masks))
        real = err[mask > 0].astype(np.float64)
        return {"mae": float(real.mean()), "mse": float((real ** 2).mean()), "count": float(real.size)}


@dataclasses.dataclass(frozen=True)
class DigitValue(Task):
    """Predict the digit's value 0..9 as a number (squared error)."""

    best_metric: str = "mae"
    name = "digit_value"
    progress_metric = "mae"

    def model_args(self) -> dict[str, Any]:
        return {"num_classes": 1}

    def loss(self, outputs, batch, teacher_outputs=None):
        err = outputs[:, 0] - batch["labels"].astype(jnp.float32)
        return jnp.mean(err ** 2), {"mae": jnp.mean(jnp.abs(err))}

    def eval_outputs(self, outputs, batch):
        return {"abs_err": jnp.abs(outputs[:, 0] - batch["labels"].astype(jnp.float32))}

    @property
    def eval_metrics(self) -> tuple[str, ...]:
        return ("mae", "mse")

    def evaluator(self) -> AbsErrorEvaluator:
        return AbsErrorEvaluator()

    def metric_mode(self, name: str) -> str:
        return "min"

    def summary(self, m: dict[str, float]) -> str:
        return f"eval mean absolute error {m['mae']:.3f} on {int(m['count'])} images"


tasks.register("digit_value", lambda config, dataset: DigitValue())


def config(**overrides: Any):
    c = base_config()
    c.task = "digit_value"
    c.model.name = "bireal_resnet18"
    c.model.small_inputs = True
    c.model.width = 8
    c.model.stage_sizes = (1, 1, 1, 1)
    c.estimator.weights = "mlp(init='positive', hidden=16)"
    c.batch_size, c.eval_batch_size = 16, 48  # 360 = 7 x 48 + 24: the last eval batch is padded
    c.num_train_steps, c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 6, 2, 2, 4
    c.progress_bar = False
    c.optimizer.learning_rate = 2.5e-3
    for k, v in overrides.items():
        c[k] = v
    return c


def test_registry():
    assert "classification" in tasks.names() and "digit_value" in tasks.names()
    with pytest.raises(ValueError, match="already registered"):
        tasks.register("digit_value", lambda c, d: DigitValue())
    c = config()
    c.task = "segmentation"
    with pytest.raises(ConfigError, match=r"config.task: 'segmentation' is not valid; choose one of .*classification"):
        run(c, "/nonexistent")


def test_best_metric_must_be_the_tasks(tmp_path):
    with pytest.raises(ConfigError, match=r"config.best_metric: 'top1' is not valid for the digit_value task"):
        run(config(best_metric="top1"), tmp_path / "x")


@pytest.mark.slow
def test_own_task_trains_evaluates_exactly_and_resumes(tmp_path):
    final = run(config(), tmp_path / "whole")
    assert set(final) == {"mae", "mse", "count"} and final["count"] == 360
    # Exact evaluation: the exported variables' direct pass over all 360 images.
    variables, meta = load_variables(tmp_path / "whole" / "variables")
    assert meta["model_kwargs"]["num_classes"] == 1
    model = models.create(meta["model"], **meta["model_kwargs"])
    ds = digits(0)
    pred = np.asarray(model.apply(variables, ds.x_test, train=False))[:, 0]
    np.testing.assert_allclose(final["mae"], np.mean(np.abs(pred - ds.y_test)), rtol=1e-5)
    train = read_metrics(tmp_path / "whole", "train")
    assert [r["step"] for r in train] == [2, 4, 6] and all(np.isfinite(r["mae"]) for r in train)
    evals = read_metrics(tmp_path / "whole", "eval")
    assert [r["step"] for r in evals] == [4, 6]
    # The best checkpoint is the lower mean absolute error of the two evaluations.
    summary = json.loads((tmp_path / "whole" / "final_metrics.json").read_text())
    assert summary["best_step"] == (4 if evals[0]["mae"] < evals[1]["mae"] else 6)

    # Resume: the same run with its last checkpoint, final metrics and export removed starts again
    # from step 4 and ends exactly as the uninterrupted run.
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    for name in ("variables", "final_metrics.json"):
        target = tmp_path / "resumed" / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "6")
    assert Checkpoints(tmp_path / "resumed", 3).latest_step() == 4
    again = run(config(), tmp_path / "resumed")
    assert again == final
    strip = ("steps_per_sec", "examples_per_sec")
    assert ([{k: v for k, v in r.items() if k not in strip} for r in read_metrics(tmp_path / "resumed")]
            == [{k: v for k, v in r.items() if k not in strip} for r in read_metrics(tmp_path / "whole")])


def test_gather_rows_single_process():
    x = np.arange(6, dtype=np.float64).reshape(3, 2) / 7
    np.testing.assert_array_equal(gather_rows(x), x)
    assert jax.process_count() == 1
