"""The accelerator session's benches on the CPU: ``bench/imagenet_step.py``'s recipe and PyTorch AMP
pieces, and ``bench/gpu_session.sh --tiny`` end to end (every part runs, its JSON lands, the
summary reports it; the ImageNet step's rows for both frameworks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_summary, imagenet_step, torch_models
from configs import bireal18_imagenet

ROOT = Path(__file__).resolve().parents[1]


def test_recipe_is_the_imagenet_config_with_the_row_swapped_in():
    base = bireal18_imagenet.get_config()
    c = imagenet_step.recipe("bireal18_ste", "bfloat16", None, 64)
    assert (c.model.name, c.model.stage_sizes, c.estimator.weights, c.dtype) == (
        "bireal_resnet18", (4, 4, 4, 4), "ste", "bfloat16")
    assert c.optimizer.to_dict() == base.optimizer.to_dict() and c.teacher.alpha == base.teacher.alpha == 0.9
    c34 = imagenet_step.recipe("bireal34_mlp", "float32", None, 64, backward="pallas")
    assert (c34.model.name, c34.model.stage_sizes, c34.estimator.weights) == (
        "bireal_resnet34", (6, 8, 12, 6), "mlp(backward='pallas')")
    assert imagenet_step.recipe("resnet18", "bfloat16", (1, 1, 1, 1), 8).model.width == 8


def test_shares_pair_each_mlp_row_with_its_ste_row():
    rows = [{"framework": "mlpbnn", "network": "bireal18_mlp", "batch": 4, "step_s": 4.0},
            {"framework": "mlpbnn", "network": "bireal18_ste", "batch": 4, "step_s": 1.0},
            {"framework": "pytorch", "network": "bireal18_mlp", "batch": 4, "step_s": 2.0},
            {"framework": "mlpbnn", "network": "bireal34_mlp", "batch": 4, "step_s": 3.0}]  # no STE row: no share
    assert imagenet_step.shares(rows) == {"mlpbnn/bireal18_mlp/4": 0.75}


def test_torch_estimator_stays_float32_under_autocast():
    """Under bf16 autocast the binary convs run in bf16, but the estimator MLP in float32, as mlpbnn's."""
    model = torch_models.bireal_resnet((1, 1, 1, 1), 10, 8, small_inputs=True)
    seen = []
    model.meta_net.module.network.Linear0.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    convs = []
    model.layer1[0].register_forward_hook(lambda m, i, o: convs.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 16, 16))
    out.float().sum().backward()
    assert seen and set(seen) == {torch.float32}
    assert convs == [torch.bfloat16]
    assert model.meta_net.module.network.Linear0.weight.grad.dtype == torch.float32


def test_summary_reports_a_missing_session_and_refuses_no_folder(tmp_path):
    text = gpu_summary.summary(tmp_path)
    assert "parts.txt missing" in text and "## " not in text  # nothing is filled in
    r = subprocess.run([sys.executable, "-m", "bench.gpu_summary", str(tmp_path / "nope")], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "usage" in r.stderr


@pytest.mark.slow
def test_gpu_session_tiny_runs_every_part_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("XLA_FLAGS", None)  # one CPU device, as on the GPU machine
    r = subprocess.run(["bash", "bench/gpu_session.sh", "--tiny", str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    parts = (tmp_path / "parts.txt").read_text().splitlines()
    assert [p.split()[0] for p in parts] == ["tests", "estimator", "step_reduce", "imagenet", "study"]
    assert all(" rc=0 " in p for p in parts), parts
    assert "passed" in (tmp_path / "tests.log").read_text()
    im = json.loads((tmp_path / "imagenet.json").read_text())
    assert {(r["framework"], r["network"]) for r in im["rows"]} == {
        (f, n) for f in ("mlpbnn", "pytorch") for n in ("bireal18_mlp", "bireal18_ste")}
    assert all(r["img_s"] > 0 and r["compile_s"] > 0 and r["batch"] == 2 for r in im["rows"])
    assert set(im["estimator_share"]) == {"mlpbnn/bireal18_mlp/2", "pytorch/bireal18_mlp/2"}
    assert (im["dtype"], im["teacher"]) == ("bfloat16", "resnet18")
    step = json.loads((tmp_path / "step_reduce.json").read_text())
    assert step["mlp_backward"] == "reduce" and "32x32_batch1" in step["mlp_share"]
    assert json.loads((tmp_path / "estimator.json").read_text())["estimator_alone"]["ms"]
    assert set(json.loads((tmp_path / "study.json").read_text())["throughput"]["ste"]) == {"1", "2"}
    summary = (tmp_path / "summary.md").read_text()
    for section in ("Estimator backward alone", "Train step", "ImageNet recipe step", "Vmapped study"):
        assert section in summary
