"""Configuration validation: every bad field is named before anything is built or compiled."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlpbnn import data, models
from mlpbnn.train import ConfigError
from mlpbnn.train.config import validate
from tests.utils_train import cli, tiny


def test_bad_configs_fail_with_the_field_named(tmp_path):
    cases = [
        ({"model.name": "resnet7"}, r"config.model.name: 'resnet7' is not valid; choose one of .*bireal_resnet18"),
        ({"estimator.weights": "sine"}, r"config.estimator.weights: unknown estimator 'sine'; valid names: .*ste"),
        ({"optimizer.name": "lamb"}, r"config.optimizer.name: 'lamb' is not valid; choose one of adam, sgd"),
        ({"batch_size": 12}, r"config.batch_size: 12 is not divisible by the 8 devices"),
        ({"data.name": "cifar"}, r"config.data.name: 'cifar' is not valid"),
        ({"teacher.checkpoint": str(tmp_path / "none")}, r"config.teacher.checkpoint: .* does not exist"),
        ({"data": data.section("imagenet", data_dir=str(tmp_path / "tfds"))},
         r"config.data.manual_dir: imagenet2012 is not prepared"),
        ({"data": data.section("imagenet", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "no"))},
         r"config.data.manual_dir: .*/no is not a directory"),
        ({"data.name": "imagenet"}, r"config.data.augment: not a field of this section; valid: data_dir"),
        ({"data": data.section("coco", image_size=(64, 47), heatmap_size=(16, 16))},
         r"config.data.heatmap_size: \(16, 16\) must keep the aspect"),
        ({"data": data.section("coco", workers="2")}, r"config.data.workers: expected int, got '2'"),
        ({"eval": {"decode": "soft"}, "task": "keypoints", "model.name": "sbpn_resnet18",
          "data": data.section("pose_synthetic")}, r"config.eval.decode: must be one of quarter, dark"),
        ({"checkpoint_every_steps": 3}, r"config.checkpoint_every_steps: 3 must be a multiple of log_every_steps"),
        ({"optimizer.estimator.schedule": "step"}, r"config.optimizer.estimator.milestones"),
        ({"optimizer.grad_clip_norm": -1.0}, r"config.optimizer.grad_clip_norm: must be a finite number in \[0, inf\)"),
        ({"optimizer.b2": 2.0}, r"config.optimizer.b2: must be a finite number in \[0, 1\), got 2.0"),
        ({"optimizer.eps": -1e-8}, r"config.optimizer.eps: must be a finite number"),
        ({"optimizer.momentum": -0.5}, r"config.optimizer.momentum: must be a finite number in \[0, 1\)"),
        ({"optimizer.learning_rate": float("nan")}, r"config.optimizer.learning_rate: must be a finite number"),
        ({"optimizer.estimator.learning_rate": float("inf")}, r"config.optimizer.estimator.learning_rate"),
        ({"eval_every_steps": 3}, r"config.eval_every_steps: 3 must be a multiple of log_every_steps \(2\)"),
        ({"data.augment": "rotate"}, r"config.data.augment: 'rotate' is not valid for digits; choose one of none"),
        ({"task": "detection"}, r"config.task: 'detection' is not valid; choose one of classification"),
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


@pytest.mark.parametrize("config", ["configs/bhrnet_w32_coco.py", "configs/bireal34_imagenet.py"])
def test_inheriting_config_loads_outside_the_repo_root(config, tmp_path):
    """A config that imports its parent (``from configs import ...``) loads when train.py runs from
    another folder: the override's error comes from validating the loaded config."""
    out = cli(tmp_path / "x", "--config.model.name=resnet7", cwd=tmp_path, config=config)
    assert out.returncode != 0
    assert "error: config.model.name: 'resnet7' is not valid" in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("[!_]*.py")),
                         ids=lambda p: p.name)
def test_every_config_file_is_valid(path, tmp_path):
    """Every recipe in configs/ loads and passes validation on 8 devices (what train.py checks first;
    the ImageNet ones given a folder for their tars, the COCO ones a detection file, the MPII ones
    a generated MPII root)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    if config.data.name == "imagenet":
        config.data.manual_dir = str(tmp_path)
    if config.data.name == "coco":
        config.data.det_file = str(tmp_path / "detections.json")
    if config.data.name == "mpii":
        from tests.utils_mpii import write_mpii

        write_mpii(tmp_path, num_train=1, num_val=1)
        config.data.dir = str(tmp_path)
    validate(config, 8)
    if config.task == "keypoints":
        assert models.info(config.model.name).head == "heatmap"
