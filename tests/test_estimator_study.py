"""bench/estimator_study.py: the --quick study end to end (JSON structure, curves, slopes, PNG), and
the step-0 estimator theta it reconstructs equals the one the model initialises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import estimator_study as study
from mlpbnn import models
from mlpbnn.data.small import FASHION_MNIST_DIR, FASHION_MNIST_FILES
from mlpbnn.train.config import model_kwargs


def test_initial_theta_matches_model_init():
    args = study.parse_args(["--width", "4", "--stages", "1"])
    config = study.make_config("mlp(hidden=8)", "linear(hidden=8)", 7, args)
    model = models.create(config.model.name, 10, **model_kwargs(config))
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)
    full = model.init(key, jnp.zeros((1, 8, 8, 1)), train=False)["estimator"]
    ours = study.initial_estimator_theta(config)
    assert jax.tree.structure(dict(full)) == jax.tree.structure(ours)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, dict(full), ours)))


@pytest.mark.skipif(not all((Path(FASHION_MNIST_DIR) / f).is_file() for f in FASHION_MNIST_FILES),
                    reason="Fashion-MNIST not installed")
def test_quick_study(tmp_path):
    out = tmp_path / "study.json"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "bench.estimator_study", "--quick", "--silent", "--out", str(out)],
                          cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wall time" in proc.stdout
    result = json.loads(out.read_text())
    assert result["complete"] and result["command"].endswith(f"--quick --silent --out {out}")
    assert result["wall_seconds"] > 0
    assert set(result["summary"]) == set(study.QUICK_ROWS)
    assert len(result["runs"]) == len(study.QUICK_ROWS)
    for row, s in result["summary"].items():
        assert s["weights"] == study.ROW_SPECS[row][0] and s["activations"] == study.ROW_SPECS[row][1]
        assert 0.0 <= s["mean"] <= 1.0 and s["std"] == 0.0 and len(s["final_top1"]) == 1
        assert s["curve_steps"] == [10, 20] and len(s["curve_mean"]) == 2
    for run in result["runs"]:
        assert [c[0] for c in run["eval_curve"]] == [10, 20]
        assert run["eval_curve"][-1][1] == pytest.approx(run["final_top1"])
        assert [c[0] for c in run["train_curve"]] == [10, 20]
        learnable = run["row"] == "mlp_pos"
        assert set(run["slope_at_zero"]) == ({"weights", "activations"} if learnable else set())
        assert set(run["forward_sign"]) == set(run["slope_at_zero"])
        assert all(v == 1.0 for curve in run["forward_sign"].values() for _, v in curve)  # mlp: sign(x)
        for curve in run["slope_at_zero"].values():
            assert [c[0] for c in curve] == [0, 10, 20]
            assert curve[0][1] > 0  # init='positive'
            assert all(np.isfinite(v) for _, v in curve)
    png = out.with_suffix(".png")
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
