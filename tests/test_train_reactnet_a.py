"""The ReActNet-A recipes (configs/reactnet_a_*.py) load, validate and run both of their steps on
generated ILSVRC-layout tars (real JPEGs, the ImageNet pipeline, a converted PyTorch teacher),
shrunk to a 4-block ReActNet-A at 32 px; step 2 starts from step 1's kernels."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mlpbnn.train import run
from mlpbnn.train.metrics import read_metrics
from mlpbnn.variables_io import load_variables
from tests.test_multihost import ilsvrc  # noqa: F401 - the module-scoped fixture of generated tars

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_adambnn_is_reactnets_program_with_its_epochs_and_weight_decay():
    """AdamBNN's recipe differs from ReActNet's only in 256 epochs per step and step 1's weight
    decay 5e-6, so running ReActNet's below runs its program too."""
    react, adam = load("reactnet_a_imagenet").to_dict(), load("reactnet_a_adambnn_imagenet").to_dict()
    assert (adam.pop("num_epochs"), react.pop("num_epochs")) == (512, 256)
    assert (adam["two_stage"].pop("stage1_weight_decay"), react["two_stage"].pop("stage1_weight_decay")) == (5e-6, 1e-5)
    assert adam == react


@pytest.mark.slow
@pytest.mark.parametrize("name", ["reactnet_a_imagenet", "reactnet_a_bbc_imagenet"])
def test_recipe_runs_its_two_steps(name, ilsvrc, tmp_path):  # noqa: F811 - the fixture
    c = load(name)
    assert c.model.name == "reactnet_a" and c.two_stage.enabled and c.teacher.alpha == 1.0
    c.data.manual_dir, c.data.data_dir = str(ilsvrc["manual"]), str(ilsvrc["data_dir"])
    c.data.image_size, c.data.workers = 32, 0
    c.model.width, c.model.stage_sizes = 4, (1, 1, 1)
    c.teacher.checkpoint, c.teacher.model = str(ilsvrc["teacher"]), "resnet18"
    c.batch_size = c.eval_batch_size = 8
    c.num_train_steps, c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 2, 1, 2, -1
    c.progress_bar = False
    final = run(c, tmp_path / "run")
    assert final["count"] == 7  # every validation image, the last batch padded
    logs = read_metrics(tmp_path / "run", "train")
    assert len(logs) == 2 and all(np.isfinite(r["loss"]) for r in logs)
    variables, _ = load_variables(tmp_path / "run" / "variables")
    assert "feature_3" in variables["params"] and ("estimator" in variables) == (name == "reactnet_a_bbc_imagenet")
