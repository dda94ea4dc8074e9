"""The MPII recipe (configs/sbpn_mpii.py) through train.py on generated data in MPII's exact layout
(tests/utils_mpii.py), a small crop and a narrow, shallow network (quick to compile): it trains
and evaluates PCKh (HRNet's nine numbers, pred.mat, the picture), and two processes x 4 devices
give one process's numbers (to float rounding). (SIGKILL + resume equal to the bit for the
keypoints task, the same trainer and loader code: tests/test_train_pose.py on the COCO sample.)"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.io import loadmat

from mlpbnn.pose.pckh import PCKH_NAMES
from mlpbnn.train.metrics import read_metrics
from tests.test_train_pose import _final
from tests.utils_mpii import write_mpii
from tests.utils_train import cli, train

pytestmark = pytest.mark.slow
CONFIG = "configs/sbpn_mpii.py"


def flags(root) -> tuple[str, ...]:
    return (f"--config.data.dir={root}", "--config.data.image_size=(64,64)", "--config.data.workers=0",
            "--config.model.width=8", "--config.model.stage_sizes=(1,1,1,1)", "--config.model.deconv_features=16",
            "--config.model.small_inputs=True", "--config.model.num_deconvs=1",  # stride 8, one deconv
            "--config.batch_size=8", "--config.eval_batch_size=8", "--config.num_train_steps=6",
            "--config.log_every_steps=1", "--config.checkpoint_every_steps=2", "--config.eval_every_steps=3",
            "--config.eval.samples=2")


def test_sbpn_mpii_recipe_trains_evaluates_pckh_and_runs_on_two_processes(tmp_path):
    root = tmp_path / "mpii"
    write_mpii(root, num_train=12, num_val=10)
    whole = tmp_path / "whole"
    out = cli(whole, *flags(root), config=CONFIG)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ev = _final(whole)["eval"]
    assert ev["count"] == 10 and ev["PCKh"] == ev["Mean"]  # every validation person once (10 in batches of 8)
    assert all(0 <= ev[k] <= 100 for k in ("PCKh", "Mean", "Mean@0.1"))
    assert "eval PCKh" in out.stdout + out.stderr and "on 10 persons" in out.stdout + out.stderr
    assert [r["step"] for r in read_metrics(whole, "eval")] == [3, 6]
    assert loadmat(whole / "pred.mat")["preds"].shape == (10, 16, 2) and (whole / "eval_samples.png").is_file()
    train_log = read_metrics(whole, "train")
    assert all(np.isfinite(r["loss"]) for r in train_log)

    two = tmp_path / "two"
    log = train(CONFIG, two, *flags(root), processes=2)
    assert "on 8 device(s), 2 process(es)" in log
    np.testing.assert_allclose([r["loss"] for r in read_metrics(two, "train")],
                               [r["loss"] for r in train_log], rtol=1e-5, atol=1e-7)
    b = _final(two)["eval"]
    assert b["count"] == 10
    for key in ("PCKh", *PCKH_NAMES):
        assert b[key] == pytest.approx(ev[key], abs=1e-6), key
