"""bench/estimator_study.py: the --quick study end to end (JSON structure, curves, slopes, PNG); the
--budget preset; the padded Fashion-MNIST of the four-stage network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import estimator_study as study
from mlpbnn.data.small import FASHION_MNIST_DIR, FASHION_MNIST_FILES, digits

HAVE_FASHION = all((Path(FASHION_MNIST_DIR) / f).is_file() for f in FASHION_MNIST_FILES)


def test_budget_preset():
    args = study.parse_args(["--budget", "--rows", "ste", "--out", "/tmp/x.json"])
    assert (args.batch, args.width, args.stages, args.pad) == (256, 64, [2, 2, 2, 2], 2)
    assert args.steps == 2344 and args.steps * args.batch >= 10 * 60_000 > (args.steps - 1) * args.batch
    assert (args.lr, args.estimator_lr) == (2 * 2.5e-3, 2 * 1e-3)  # sqrt(256 / 64) times the short setup's
    assert study.parse_args(["--budget", "--epochs", "1", "--lr", "1e-3"]).steps == 235
    assert study.parse_args(["--budget", "--epochs", "1", "--lr", "1e-3"]).lr == 1e-3
    assert study.parse_args([]).out.endswith("estimator_study.json")
    assert study.parse_args(["--budget", "--throughput", "1,3"]).out.endswith("estimator_study_budget_throughput.json")
    quick = study.parse_args(["--quick", "--rows", "ste", "--seeds", "0,1"])
    assert (quick.rows, quick.seeds, quick.steps, quick.width, quick.stages) == (["ste"], [0, 1], 20, 8, [1])


def test_backward_option_reaches_only_mlp_and_linear():
    assert study.with_backward("mlp(init='positive')", "pallas") == "mlp(init='positive', backward='pallas')"
    assert study.with_backward("linear", "reduce") == "linear(backward='reduce')"
    assert study.with_backward("approx_sign", "pallas") == "approx_sign"
    assert study.with_backward("mlp", "auto") == "mlp"
    args = study.parse_args(["--backward", "pallas", "--out", "/tmp/x.json"])
    config = study.make_config(*study.ROW_SPECS["split_pos"], 0, args)
    assert (config.estimator.weights, config.estimator.activations) == ("mlp(init='positive', backward='pallas')",
                                                                        "approx_sign")


def test_padded_dataset_pads_with_the_value_and_keeps_the_rest():
    inner = digits(0)
    padded = study.Padded(inner, 2, -0.5)
    assert padded.image_shape == (12, 12, 1) and padded.num_classes == 10
    (a, pos_a), (b, pos_b) = next(inner.train_batches(5, 7)), next(padded.train_batches(5, 7))
    assert pos_a == pos_b == 12
    np.testing.assert_array_equal(b["images"][:, 2:-2, 2:-2], a["images"])
    np.testing.assert_array_equal(b["labels"], a["labels"])
    border = np.ones((12, 12), bool)
    border[2:-2, 2:-2] = False
    assert np.all(b["images"][:, border] == np.float32(-0.5))
    ea, eb = next(inner.eval_batches(400)), next(padded.eval_batches(400))
    np.testing.assert_array_equal(eb["mask"], ea["mask"])
    np.testing.assert_array_equal(eb["images"][:, 2:-2, 2:-2], ea["images"])
    assert np.isclose(study.BLACK, (0.0 - 0.2860) / 0.3530)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_FASHION, reason="Fashion-MNIST not installed")
def test_quick_study(tmp_path, capsys):
    # In two commands, the second appending its row to the first's file (a study split under a time limit).
    out = tmp_path / "study.json"
    commands = [["--quick", "--silent", "--rows", "mlp_pos", "--out", str(out)],
                ["--quick", "--silent", "--rows", "ste", "--append", "--out", str(out)]]
    walls = []
    for flags in commands:
        study.main(flags)
        assert "wall time" in capsys.readouterr().out
        walls.append(json.loads(out.read_text())["wall_seconds"])
    result = json.loads(out.read_text())
    assert result["complete"] and result["command"].endswith(f"--append --out {out}")
    assert [c.split("--rows ")[1].split()[0] for c in result["commands"]] == ["mlp_pos", "ste"]
    assert 0 < walls[0] < walls[1]
    assert list(result["summary"]) == ["mlp_pos", "ste"] and list(result["rows"]) == ["mlp_pos", "ste"]
    assert len(result["runs"]) == len(study.QUICK_ROWS)
    for row, s in result["summary"].items():
        assert s["weights"] == study.ROW_SPECS[row][0] and s["activations"] == study.ROW_SPECS[row][1]
        assert 0.0 <= s["mean"] <= 1.0 and s["std"] == 0.0 and len(s["final_top1"]) == 1
        assert s["curve_steps"] == [10, 20] and len(s["curve_mean"]) == 2
    for run in result["runs"]:
        assert [c[0] for c in run["eval_curve"]] == [10, 20]
        assert run["eval_curve"][-1][1] == pytest.approx(run["final_top1"])
        assert [c[0] for c in run["train_curve"]] == [10, 20]
        assert run["diverged_at"] is None and run["compile_seconds"] > 0
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
    # Another setup cannot be appended to this file.
    with pytest.raises(SystemExit, match=r"different setup \(width\)"):
        study.main(["--quick", "--rows", "ste", "--width", "4", "--append", "--out", str(out)])
