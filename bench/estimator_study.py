"""Estimator study: one small binary ResNet on Fashion-MNIST, trained with every sign estimator
on both weights and activations (plus BBC's official split: MLP on weights, ApproxSign on
activations), three seeds each, equal budgets. Reports final test top-1 (mean, std, per seed),
test-accuracy curves and, for the learnable estimators, the learned slope at 0 over training.

    python -m bench.estimator_study                    # the full study (36 runs, ~36 min on 2 busy CPU cores)
    python -m bench.estimator_study --quick --out /tmp/q.json   # CI smoke test (< 1 min)

Every run goes through ``mlpbnn.train.run(config, workdir)`` in-process, in a temporary
directory (``--workdir`` to choose one, ``--keep`` to keep it). The slope curves are read back
from the run's checkpoints (one per evaluation) plus the initial theta, which is recomputed
exactly as the trainer initialises it. Writes ``bench/results/estimator_study.json`` and
``.png`` (or ``--out``).

Setup (fixed for all rows): ``bireal_resnet18`` with ``small_inputs``, ``width`` 16 and
``stage_sizes`` (1, 1, 1): three stages, because four stride-2 stages do not fit 28x28 inputs
(the last stage's 7 -> 4 conv output cannot be added to its 7 -> 3 AvgPool shortcut); 200 steps
of batch 64 (0.21 epochs; 36 runs took 36 minutes on 2 CPU cores shared with other jobs, the
MLP on activations costing about 4x the step of the others), test top-1 every 50 steps, Adam
2.5e-3 with linear decay to 0, the estimator's own Adam 1e-3 (constant), no augmentation.
``estimator.share=True`` as the model does it: one theta for all weight binarizers
(``weight_estimator``) and a separate one for all activation binarizers (``input_estimator``),
so an estimator "on both" has two independent thetas.

Learnable estimators keep their official initialisation (``init='torch'``, PyTorch's
nn.Linear default, as BBC's code). With it the MLP's slope at 0 has a random sign, and a negative
slope reverses the gradient through every binarizer; the ``*_pos`` rows repeat ``mlp``,
``linear`` and the split with ``init='positive'`` (W1 negated where that makes the slope positive).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bench.common import RESULTS, machine
from mlpbnn import estimators
from mlpbnn import layers as L
from mlpbnn.train import base_config, run
from mlpbnn.train.metrics import read_metrics

# (row id, weights estimator, activations estimator)
ROWS: list[tuple[str, str, str]] = [
    ("ste", "ste", "ste"),
    ("approx_sign", "approx_sign", "approx_sign"),
    ("swish_sign", "swish_sign", "swish_sign"),
    ("ede", "ede", "ede"),
    ("reste", "reste", "reste"),
    ("mlp", "mlp", "mlp"),
    ("linear", "linear", "linear"),
    ("classifier", "classifier", "classifier"),
    ("split", "mlp", "approx_sign"),
    ("mlp_pos", "mlp(init='positive')", "mlp(init='positive')"),
    ("linear_pos", "linear(init='positive')", "linear(init='positive')"),
    ("split_pos", "mlp(init='positive')", "approx_sign"),
]
ROW_SPECS = {r[0]: r[1:] for r in ROWS}
QUICK_ROWS = ("ste", "mlp_pos")
THETA_NAMES = {"weights": "weight_estimator", "activations": "input_estimator"}


def make_config(weights: str, activations: str, seed: int, args: argparse.Namespace) -> Any:
    c = base_config()
    c.seed = seed
    c.model.name = "bireal_resnet18"
    c.model.small_inputs = True
    c.model.width = args.width
    c.model.stage_sizes = tuple(args.stages)
    c.estimator.weights = weights
    c.estimator.activations = activations
    c.estimator.share = True
    c.data.name = "fashion_mnist"
    c.data.dir = args.data_dir
    c.data.augment = "none"
    c.batch_size = args.batch
    c.eval_batch_size = args.eval_batch
    c.num_train_steps = args.steps
    c.eval_every_steps = args.eval_every
    c.checkpoint_every_steps = args.eval_every   # one checkpoint per evaluation: the slope curve
    c.log_every_steps = args.log_every
    c.keep_checkpoints = 10_000
    c.best_metric = ""
    c.progress_bar = False
    c.num_devices = 1
    c.optimizer.learning_rate = 2.5e-3
    c.optimizer.schedule = "linear"
    c.optimizer.estimator.learning_rate = 1e-3
    return c


def slope0(est: estimators.Estimator, theta: dict[str, Any]) -> float:
    """The estimator's backward slope at x = 0: ``slope_at_zero`` for mlp (its activation) and
    linear ("identity"); for classifier the backward derivative at 0, 2 (f_0'(0) + f_1'(0))."""
    theta = {k: jnp.asarray(v) for k, v in theta.items()}
    if est.name == "mlp":
        return float(estimators.slope_at_zero(theta, est.kwargs["activation"]))
    if est.name == "linear":
        return float(estimators.slope_at_zero(theta, "identity"))
    return float(est.derivative(theta, jnp.zeros((), jnp.float32)))


class _Thetas(nn.Module):
    """Only the network's shared estimator-theta modules, under the names the model gives them."""

    weights: estimators.Estimator | None
    activations: estimators.Estimator | None

    @nn.compact
    def __call__(self) -> None:
        L.EstimatorParams(self.activations, name=THETA_NAMES["activations"])()
        L.EstimatorParams(self.weights, name=THETA_NAMES["weights"])()


def initial_estimator_theta(config: Any) -> dict[str, Any]:
    """The estimator collection at step 0, as the trainer initialises it (key fold_in(seed, 0)).

    Flax derives a module's RNG from the root key and the module's name path, so initialising
    just the two ``EstimatorParams`` modules under their model names gives the model's exact
    theta (tests/test_estimator_study.py checks this against a full ``model.init``) without
    building the network."""
    module = _Thetas(estimators.parse(config.estimator.weights), estimators.parse(config.estimator.activations))
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)
    return jax.device_get(dict(module.init(key)).get("estimator", {}))


def checkpoint_thetas(workdir: Path) -> dict[int, dict[str, Any]]:
    """{step: estimator collection} of every checkpoint the run kept (restored without template)."""
    import orbax.checkpoint as ocp

    out = {}
    ckpt = ocp.StandardCheckpointer()
    for d in sorted((workdir / "checkpoints").iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1):
        if d.name.isdigit() and (d / "state").is_dir():
            state = ckpt.restore(d / "state")
            out[int(d.name)] = jax.device_get(state.get("estimator", {}))
    ckpt.close()
    return out


def forward_sign(est: estimators.Estimator, theta: dict[str, Any]) -> float:
    """The forward's value just right of 0: +1 for every estimator but ``classifier``, whose
    forward is +-sign(x) depending on theta (argmax of f_1 - f_0)."""
    theta = {k: jnp.asarray(v) for k, v in theta.items()}
    return float(est(theta, jnp.asarray(1e-3, jnp.float32)))


def slope_curves(config: Any, workdir: Path) -> tuple[dict[str, list[list[float]]], dict[str, list[list[float]]]]:
    """({'weights' | 'activations': [[step, slope at 0], ...]}, the same with the forward's sign
    just right of 0 instead of the slope) for each learnable side. The gradient through a
    binarizer points the right way when slope x forward sign > 0."""
    sides = {side: estimators.parse(config.estimator[side]) for side in THETA_NAMES}
    sides = {s: e for s, e in sides.items() if e is not None and e.learnable}
    if not sides:
        return {}, {}
    thetas = sorted({0: initial_estimator_theta(config), **checkpoint_thetas(workdir)}.items())
    slopes = {side: [[step, slope0(est, tree[THETA_NAMES[side]])] for step, tree in thetas]
              for side, est in sides.items()}
    signs = {side: [[step, forward_sign(est, tree[THETA_NAMES[side]])] for step, tree in thetas]
             for side, est in sides.items()}
    return slopes, signs


def run_one(row: str, seed: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    weights, activations = ROW_SPECS[row]
    config = make_config(weights, activations, seed, args)
    workdir = root / f"{row}_seed{seed}"
    if workdir.exists():
        shutil.rmtree(workdir)  # the trainer would resume from it; every run starts fresh
    t0 = time.perf_counter()
    log = io.StringIO()
    with contextlib.redirect_stdout(log) if args.silent else contextlib.nullcontext():
        final = run(config, workdir)
    seconds = time.perf_counter() - t0
    slopes, signs = slope_curves(config, workdir)
    evals = read_metrics(workdir, "eval")
    trains = read_metrics(workdir, "train")
    result = {
        "row": row, "seed": seed, "weights": weights, "activations": activations,
        "final_top1": final["top1"], "final_loss": final["loss"], "seconds": round(seconds, 2),
        "eval_curve": [[r["step"], r["top1"], r["loss"]] for r in evals],
        "train_curve": [[r["step"], r["top1"], r["loss"]] for r in trains],
        "slope_at_zero": slopes,
        "forward_sign": signs,
    }
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def summarise(runs: list[dict[str, Any]], rows: list[str]) -> dict[str, Any]:
    out = {}
    for row in rows:
        rr = [r for r in runs if r["row"] == row]
        if not rr:
            continue
        finals = [r["final_top1"] for r in rr]
        steps = [s for s, _, _ in rr[0]["eval_curve"]]
        curves = np.array([[t for _, t, _ in r["eval_curve"]] for r in rr])
        out[row] = {
            "weights": rr[0]["weights"], "activations": rr[0]["activations"],
            "seeds": [r["seed"] for r in rr], "final_top1": finals,
            "mean": statistics.fmean(finals), "std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "min": min(finals), "max": max(finals),
            "curve_steps": steps, "curve_mean": curves.mean(0).tolist(),
            "curve_min": curves.min(0).tolist(), "curve_max": curves.max(0).tolist(),
        }
    return out


def table(summary: dict[str, Any]) -> str:
    lines = [f"{'row':<12} {'weights':<24} {'activations':<24} {'top-1 mean ± std':>18}  per seed",
             "-" * 100]
    for row, s in summary.items():
        seeds = ", ".join(f"{v:.2%}" for v in s["final_top1"])
        lines.append(f"{row:<12} {s['weights']:<24} {s['activations']:<24} "
                     f"{s['mean']:>8.2%} ± {s['std']:>6.2%}  [{seeds}]")
    return "\n".join(lines)


def slope_text(runs: list[dict[str, Any]]) -> str:
    lines = []
    for r in runs:
        for side, curve in r["slope_at_zero"].items():
            signs = dict(map(tuple, r.get("forward_sign", {}).get(side, [])))
            vals = " ".join(f"{step}:{v:+.3f}" + (" (forward -sign)" if signs.get(step, 1.0) < 0 else "")
                            for step, v in curve)
            lines.append(f"{r['row']:<12} seed {r['seed']} {side:<11} {vals}")
    return "\n".join(lines)


def plot(summary: dict[str, Any], runs: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw={"width_ratios": [3, 2]})
    cmap = plt.get_cmap("tab20")  # dark shades first, then the light ones
    colors = {row: cmap((2 * i) % 20 + (2 * i) // 20) for i, row in enumerate(summary)}
    for row, s in summary.items():
        ax.plot(s["curve_steps"], s["curve_mean"], label=f"{row} ({s['mean']:.1%})", color=colors[row])
        ax.fill_between(s["curve_steps"], s["curve_min"], s["curve_max"], color=colors[row], alpha=0.15)
    ax.set_xlabel("training step")
    ax.set_ylabel("test top-1 (mean over seeds, shaded min-max)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncol=3)
    for r in runs:
        for side, curve in r["slope_at_zero"].items():
            steps, vals = zip(*curve, strict=True)
            bx.plot(steps, vals, color=colors[r["row"]], ls="-" if side == "weights" else "--", lw=1,
                    label=f"{r['row']} {side}" if r["seed"] == summary[r["row"]]["seeds"][0] else None)
    bx.axhline(0, color="k", lw=0.5)
    bx.set_yscale("symlog", linthresh=1.0)
    bx.set_xlabel("training step")
    bx.set_ylabel("learned slope at 0 (every seed; solid weights, dashed activations)")
    bx.grid(alpha=0.3)
    if bx.lines[1:]:
        bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", default=",".join(r[0] for r in ROWS),
                   help=f"comma-separated rows; valid: {', '.join(ROW_SPECS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--eval_every", type=int, default=50)
    p.add_argument("--log_every", type=int, default=25)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--eval_batch", type=int, default=1000)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--stages", default="1,1,1", help="blocks per stage (at most 3 stages fit 28x28)")
    p.add_argument("--data_dir", default="", help="Fashion-MNIST IDX files (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--quick", action="store_true",
                   help=f"CI smoke test: rows {','.join(QUICK_ROWS)}, seed 0, width 8, one stage, 20 steps of 64")
    p.add_argument("--out", default=str(RESULTS / "estimator_study.json"), help="JSON path; the PNG goes beside it")
    p.add_argument("--workdir", default="", help="parent of the run directories (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the run directories")
    p.add_argument("--no_compile_cache", action="store_true",
                   help="do not share compiled steps between runs of one row (JAX persistent cache)")
    p.add_argument("--silent", action="store_true", help="hide the trainer's own output")
    p.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON at --out")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.seeds, args.steps, args.eval_every, args.log_every = ",".join(QUICK_ROWS), "0", 20, 10, 10
        args.batch, args.width, args.stages = 64, 8, "1"
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in args.rows if r not in ROW_SPECS]
    if bad:
        p.error(f"unknown row(s) {bad}; valid: {', '.join(ROW_SPECS)}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.stages = [int(s) for s in args.stages.split(",")]
    if args.steps % args.eval_every or args.eval_every % args.log_every:
        p.error("--steps must be a multiple of --eval_every, and --eval_every of --log_every")
    if 10_000 % args.eval_batch:
        p.error("--eval_batch must divide the 10,000 test images")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.replot:
        payload = json.loads(Path(args.out).read_text())
        plot(payload["summary"], payload["runs"], Path(args.out).with_suffix(".png"), plot_title(payload["setup"]))
        return payload
    command = "python -m bench.estimator_study " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="estimator_study_"))
    root.mkdir(parents=True, exist_ok=True)
    if not args.no_compile_cache:
        # Seeds change values, not programs: later seeds of a row load the compiled steps from disk.
        jax.config.update("jax_compilation_cache_dir", str(root / "jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    setup = {"model": "bireal_resnet18", "small_inputs": True, "width": args.width, "stage_sizes": args.stages,
             "data": "fashion_mnist (60k train / 10k test, no augmentation)", "batch_size": args.batch,
             "steps": args.steps, "epochs": round(args.steps * args.batch / 60_000, 3),
             "eval_every_steps": args.eval_every, "optimizer": "adam 2.5e-3, linear decay to 0",
             "estimator_optimizer": "adam 1e-3, constant", "estimator_share": True, "seeds": args.seeds,
             "thetas": "share=True: one theta for all weight binarizers, a separate one for all activation "
                       "binarizers", "std": "sample standard deviation over seeds (ddof=1)"}
    runs: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    total = len(args.rows) * len(args.seeds)
    try:
        for row in args.rows:
            for seed in args.seeds:
                r = run_one(row, seed, args, root)
                runs.append(r)
                print(f"[{len(runs)}/{total}] {row} seed {seed}: top-1 {r['final_top1']:.2%} in {r['seconds']:.0f} s "
                      f"(elapsed {time.perf_counter() - t0:.0f} s)", flush=True)
                write_results(out, args, command, setup, runs, time.perf_counter() - t0, complete=False)
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    wall = time.perf_counter() - t0
    payload = write_results(out, args, command, setup, runs, wall, complete=True)
    print("\n" + table(payload["summary"]))
    print("\nslope at 0 (step:value) of the learnable estimators' thetas:\n" + slope_text(runs))
    print(f"\n{command}\nwall time {wall:.0f} s ({wall / 60:.1f} min) for {len(runs)} runs; wrote {out} and "
          f"{out.with_suffix('.png')}")
    return payload


def write_results(out: Path, args: argparse.Namespace, command: str, setup: dict[str, Any],
                  runs: list[dict[str, Any]], wall: float, complete: bool) -> dict[str, Any]:
    summary = summarise(runs, args.rows)
    payload = {"machine": machine(), "command": command, "wall_seconds": round(wall, 1), "complete": complete,
               "setup": setup, "rows": {r: {"weights": ROW_SPECS[r][0], "activations": ROW_SPECS[r][1]}
                                        for r in args.rows},
               "summary": summary, "runs": runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(out)
    if complete and summary:
        plot(summary, runs, out.with_suffix(".png"), plot_title(setup))
    return payload


def plot_title(setup: dict[str, Any]) -> str:
    return (f"bireal_resnet18 width {setup['width']}, stages {tuple(setup['stage_sizes'])}, Fashion-MNIST, "
            f"{setup['steps']} steps of {setup['batch_size']}, {len(setup['seeds'])} seed(s)")


if __name__ == "__main__":
    main()
