"""The COCO recipe (configs/sbpn_coco.py) through train.py on the real COCO sample (its 4 images as
both splits, a small crop and a narrow network): evaluation on ground-truth boxes during training and
on the 118 detector boxes at the end, the result files and pictures, SIGKILL + resume equal to an
uninterrupted run (one device: exact to the bit), two processes x 4 devices equal to it (to
float rounding: the cross-device sums add in another order), and one process resuming the two
processes' checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlpbnn.pose.evaluate import STAT_NAMES
from mlpbnn.train.checkpoint import Checkpoints
from mlpbnn.train.metrics import read_metrics
from tests.utils_train import cli, kill_after_checkpoint, train

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_sample"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (SAMPLE / "test_coco.json").is_file(),
                                                   reason=f"the real COCO sample is not at {SAMPLE}")]
CONFIG = "configs/sbpn_coco.py"


def flags(steps: int = 6) -> tuple[str, ...]:
    ann, s = str(SAMPLE / "test_coco.json"), str(SAMPLE)
    return (f"--config.data.train_ann={ann}", f"--config.data.val_ann={ann}", f"--config.data.train_images={s}",
            f"--config.data.val_images={s}", f"--config.data.det_file={s}/test_coco_det_AP_H_56.json",
            "--config.data.image_size=(128,96)", "--config.data.workers=0", "--config.model.width=8",
            "--config.model.stage_sizes=(1,1,1,1)", "--config.model.deconv_features=16", "--config.batch_size=8",
            "--config.eval_batch_size=16", f"--config.num_train_steps={steps}", "--config.log_every_steps=1",
            "--config.checkpoint_every_steps=2", "--config.eval_every_steps=4", "--config.eval.samples=2")


def _final(workdir: Path) -> dict:
    return json.loads((workdir / "final_metrics.json").read_text())


def _log(workdir: Path) -> list[dict]:
    strip = ("steps_per_sec", "examples_per_sec")
    return [{k: v for k, v in r.items() if k not in strip} for r in read_metrics(workdir)]


def test_sbpn_recipe_on_the_real_sample_resumes_exactly_after_sigkill(tmp_path):
    whole = tmp_path / "whole"
    out = cli(whole, *flags(), config=CONFIG)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    final = _final(whole)
    ev = final["eval"]
    assert ev["count"] == 12 and ev["det/count"] == 118  # every ground-truth and detector box once
    assert all(np.isfinite(ev[k]) and np.isfinite(ev[f"det/{k}"]) for k in STAT_NAMES)
    assert "det boxes: AP" in out.stdout + out.stderr
    assert [r["step"] for r in read_metrics(whole, "eval")] == [4, 6]
    train_log = read_metrics(whole, "train")
    assert all(np.isfinite(r["loss"]) and 0 <= r["pck"] <= 1 for r in train_log)
    for name in ("eval_results.json", "det_eval_results.json"):
        results = json.loads((whole / name).read_text())
        assert all(len(r["keypoints"]) == 51 and "bbox" not in r for r in results)
    assert (whole / "eval_samples.png").is_file() and (whole / "det_eval_samples.png").is_file()

    victim = tmp_path / "victim"
    proc = cli(victim, *flags(), config=CONFIG, wait=False)
    kill_after_checkpoint(proc, victim, 2)
    assert not (victim / "final_metrics.json").exists(), "the run finished before it could be killed"
    killed_at = Checkpoints(victim, 3).latest_step()
    again = cli(victim, *flags(), config=CONFIG)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"at step {killed_at}" in again.stdout + again.stderr
    assert _final(victim)["eval"] == ev and _log(victim) == _log(whole)

    two = tmp_path / "two"
    log = train(CONFIG, two, *flags(), processes=2)
    assert "on 8 device(s), 2 process(es)" in log
    np.testing.assert_allclose([r["loss"] for r in read_metrics(two, "train")],
                               [r["loss"] for r in train_log], rtol=1e-5, atol=1e-7)
    b = _final(two)["eval"]
    assert b["count"] == 12 and b["det/count"] == 118
    for key in (*STAT_NAMES, *(f"det/{k}" for k in STAT_NAMES)):
        assert b[key] == pytest.approx(ev[key], abs=1e-6), key
    # The two processes' checkpoint restores in one process, which trains on from step 6 (more
    # steps change the schedule: accepted explicitly and recorded).
    log = train(CONFIG, two, *flags(8), "--allow_config_change")
    assert "at step 6" in log and "num_train_steps: 6 -> 8" in log
    assert [r["step"] for r in read_metrics(two, "train")] == list(range(1, 9))
