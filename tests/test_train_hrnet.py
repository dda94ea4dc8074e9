"""configs/bhrnet_w32_coco.py through train.py on the real COCO sample (its 4 images as both
splits, 128x96 crops, a narrow BHRNet): distillation from a full-precision HRNet teacher (a
variables checkpoint made here), evaluation on GT boxes and at the end on the detector boxes,
and a resumed run continuing from its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from mlpbnn import models
from mlpbnn.pose.evaluate import STAT_NAMES
from mlpbnn.train.metrics import read_metrics
from mlpbnn.variables_io import save_variables
from tests.utils_train import cli

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_sample"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (SAMPLE / "test_coco.json").is_file(),
                                                   reason=f"the real COCO sample is not at {SAMPLE}")]
NARROW = {"width": 8, "stem_width": 16, "layer1_blocks": 1, "stage_modules": (1, 1, 1), "stage_blocks": 1}


def flags(teacher: Path, steps: int) -> tuple[str, ...]:
    ann, s = str(SAMPLE / "test_coco.json"), str(SAMPLE)
    narrow = [f"--config.model.{k}={v}".replace(" ", "") for k, v in NARROW.items()]
    return (f"--config.data.train_ann={ann}", f"--config.data.val_ann={ann}", f"--config.data.train_images={s}",
            f"--config.data.val_images={s}", f"--config.data.det_file={s}/test_coco_det_AP_H_56.json",
            "--config.data.image_size=(128,96)", "--config.data.workers=0", *narrow,
            f"--config.teacher.checkpoint={teacher}", "--config.batch_size=8", "--config.eval_batch_size=16",
            f"--config.num_train_steps={steps}", "--config.log_every_steps=1", "--config.checkpoint_every_steps=2",
            "--config.eval_every_steps=2", "--config.eval.samples=0")


def test_bhrnet_recipe_distils_from_an_hrnet_teacher_and_resumes(tmp_path):
    teacher = models.create("hrnet_w32", num_joints=17, **NARROW)
    variables = teacher.init(jax.random.key(1, impl="rbg"), np.zeros((1, 128, 96, 3), np.float32))
    save_variables(tmp_path / "teacher", jax.device_get(variables), "hrnet_w32", {"num_joints": 17, **NARROW})
    run = tmp_path / "run"
    out = cli(run, *flags(tmp_path / "teacher", 3 * 2), config="configs/bhrnet_w32_coco.py")
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "teacher: hrnet_w32" in log
    train = read_metrics(run, "train")
    assert all(np.isfinite(r["kd"]) and r["kd"] > 0 and np.isfinite(r["loss"]) for r in train)
    # alpha 0.5: the logged loss is the mean of the target MSE and the distillation term
    assert all(abs(r["loss"] - 0.5 * (r["mse"] + r["kd"])) <= 1e-6 * r["loss"] for r in train)
    final = json.loads((run / "final_metrics.json").read_text())["eval"]
    assert final["count"] == 12 and final["det/count"] == 118
    assert all(np.isfinite(final[k]) for k in STAT_NAMES)
    # The same command with more steps (a changed schedule: accepted explicitly) resumes from step 6.
    again = cli(run, *flags(tmp_path / "teacher", 8), "--allow_config_change", config="configs/bhrnet_w32_coco.py")
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "at step 6" in again.stdout + again.stderr
    assert [r["step"] for r in read_metrics(run, "train")] == list(range(1, 9))
