"""Estimator study: one binary ResNet on Fashion-MNIST, trained with every sign estimator on both
weights and activations (plus BBC's official split: MLP on weights, ApproxSign on activations),
three seeds each, equal budgets. Reports final test top-1 (mean, std, per seed), test-accuracy
curves and, for the learnable estimators, the learned slope at 0 over training.

    python -m bench.estimator_study                    # the short study (12 rows x 3 seeds, 200 steps of 64)
    python -m bench.estimator_study --budget           # the real budget (GPU): 10 epochs, batch 256, full width
    python -m bench.estimator_study --budget --throughput 1,3 --rows ste,mlp_pos,split_pos   # measure first
    python -m bench.estimator_study --quick --out /tmp/q.json   # CI smoke test

The seeds of a row train together as one compiled program (``mlpbnn.study``: the trainer's step
vmapped over the copies; each seed's initialisation and input order are those of
``mlpbnn.train.run`` with that seed). Writes ``bench/results/estimator_study.json`` and ``.png``
(or ``--out``); ``--throughput`` instead writes the images/s of the rows' programs at K copies and
extrapolates the study's wall time from them.

Short setup (the defaults): ``bireal_resnet18`` with ``small_inputs``, ``width`` 16 and
``stage_sizes`` (1, 1, 1) on the 28x28 images: three stages, because four stride-2 stages do not
fit 28x28 inputs (the last stage's 7 -> 4 conv output cannot be added to its 7 -> 3 AvgPool
shortcut); 200 steps of batch 64 (0.21 epochs), test top-1 every 50 steps, Adam 2.5e-3 with
linear decay to 0, the estimator's own Adam 1e-3 (constant), no augmentation.

``--budget``: the full-width network (width 64, stages (2, 2, 2, 2): bireal_resnet18 with
``small_inputs``) on the images zero-padded to 32x32 (``--pad 2``, the normalised value of a black
pixel, as torchvision's Pad before Normalize), 10 epochs (2,344 steps) of batch 256, test top-1
every 235 steps (about an epoch). Batch 256 is four times the short setup's, so both learning rates
are scaled by sqrt(4) = 2 (Adam 5e-3, estimator Adam 2e-3): the square-root rule for adaptive
optimizers (Malladi et al., arXiv 2205.10287). BBC's ImageNet recipe uses 2.5e-3 at batch 256.

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
import json
import math
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from bench.common import RESULTS, machine
from mlpbnn import data, estimators
from mlpbnn.data.base import Batch, ClassificationDataset
from mlpbnn.data.small import FASHION_MEAN, FASHION_STD
from mlpbnn.study import Copy, Study
from mlpbnn.train import base_config

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
TRAIN_SIZE, TEST_SIZE = 60_000, 10_000
BLACK = -FASHION_MEAN / FASHION_STD   # a black pixel after the dataset's normalisation
# --budget: (option, value); the learning rates by the square-root rule from batch 64 to 256.
QUICK = {"rows": ",".join(QUICK_ROWS), "seeds": "0", "steps": 20, "epochs": 0.0, "eval_every": 10, "log_every": 10,
         "batch": 64, "width": 8, "stages": "1"}
BUDGET = {"epochs": 10.0, "batch": 256, "lr": 5e-3, "estimator_lr": 2e-3, "width": 64, "stages": "2,2,2,2",
          "pad": 2, "eval_every": 235, "log_every": 47}


def with_backward(spec: str, backward: str) -> str:
    """``spec`` with ``backward=...`` added when it is ``mlp`` or ``linear`` (the forms of their
    backward, ``mlpbnn.estimators.mlp_backward``) and ``backward`` is not ``auto``."""
    est = estimators.parse(spec)
    if backward == "auto" or est is None or est.name not in ("mlp", "linear"):
        return spec
    name, _, rest = spec.partition("(")
    inner = rest.rstrip(")").strip()
    return f"{name}({inner + ', ' if inner else ''}backward={backward!r})"


def make_config(weights: str, activations: str, seed: int, args: argparse.Namespace) -> Any:
    weights, activations = with_backward(weights, args.backward), with_backward(activations, args.backward)
    c = base_config()
    c.seed = seed
    c.model.name = "bireal_resnet18"
    c.model.small_inputs = True
    c.model.width = args.width
    c.model.stage_sizes = tuple(args.stages)
    c.estimator.weights = weights
    c.estimator.activations = activations
    c.estimator.share = True
    c.data.name = args.dataset
    if args.dataset == "fashion_mnist":
        c.data.dir = args.data_dir
    c.data.augment = "none"
    c.batch_size = args.batch
    c.eval_batch_size = args.eval_batch
    c.num_train_steps = args.steps
    c.eval_every_steps = args.eval_every
    c.log_every_steps = args.log_every
    c.checkpoint_every_steps = args.log_every   # unused by the study; validated by the trainer's rules
    c.best_metric = ""
    c.progress_bar = False
    c.num_devices = 1
    c.optimizer.learning_rate = args.lr
    c.optimizer.schedule = "linear"
    c.optimizer.estimator.learning_rate = args.estimator_lr
    return c


class Padded(ClassificationDataset):
    """A classification dataset with its images padded by ``pad`` pixels of ``value`` on each side."""

    def __init__(self, inner: ClassificationDataset, pad: int, value: float):
        self.inner, self.pad, self.value = inner, pad, value
        h, w, c = inner.image_shape
        self.image_shape = (h + 2 * pad, w + 2 * pad, c)
        self.train_size, self.eval_size, self.num_classes = inner.train_size, inner.eval_size, inner.num_classes

    def _images(self, batch: Batch) -> Batch:
        p = self.pad
        return {**batch, "images": np.pad(batch["images"], ((0, 0), (p, p), (p, p), (0, 0)),
                                          constant_values=np.float32(self.value))}

    def train_batches(self, position: int, global_batch: int, process_index: int = 0,
                      process_count: int = 1) -> Iterator[tuple[Batch, int]]:
        for batch, pos in self.inner.train_batches(position, global_batch, process_index, process_count):
            yield self._images(batch), pos

    def eval_batches(self, global_batch: int, process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
        for batch in self.inner.eval_batches(global_batch, process_index, process_count):
            yield self._images(batch)


def datasets(config: Any, seeds: list[int], pad: int) -> list[ClassificationDataset]:
    """One Fashion-MNIST per seed (its input order), padded when ``pad`` > 0."""
    out = [data.create(config.data, s) for s in seeds]
    return [Padded(d, pad, BLACK) for d in out] if pad else out


def slope0(est: estimators.Estimator, theta: dict[str, Any]) -> float:
    """The estimator's backward slope at x = 0: ``slope_at_zero`` for mlp (its activation) and
    linear ("identity"); for classifier the backward derivative at 0, 2 (f_0'(0) + f_1'(0))."""
    theta = {k: jnp.asarray(v) for k, v in theta.items()}
    if est.name == "mlp":
        return float(estimators.slope_at_zero(theta, est.kwargs["activation"]))
    if est.name == "linear":
        return float(estimators.slope_at_zero(theta, "identity"))
    return float(est.derivative(theta, jnp.zeros((), jnp.float32)))


def forward_sign(est: estimators.Estimator, theta: dict[str, Any]) -> float:
    """The forward's value just right of 0: +1 for every estimator but ``classifier``, whose
    forward is +-sign(x) depending on theta (argmax of f_1 - f_0)."""
    theta = {k: jnp.asarray(v) for k, v in theta.items()}
    return float(est(theta, jnp.asarray(1e-3, jnp.float32)))


def learnable_sides(config: Any) -> dict[str, estimators.Estimator]:
    sides = {side: estimators.parse(config.estimator[side]) for side in THETA_NAMES}
    return {s: e for s, e in sides.items() if e is not None and e.learnable}


def run_row(row: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The row's seeds as one vmapped program; one result per seed."""
    weights, activations = ROW_SPECS[row]
    config = make_config(weights, activations, args.seeds[0], args)
    study = Study(config, [Copy(s) for s in args.seeds], datasets(config, args.seeds, args.pad))
    t0 = time.perf_counter()
    result = study.run(log=None if args.silent else (lambda msg: print(f"  [{row}] {msg}", flush=True)))
    seconds = time.perf_counter() - t0
    sides = learnable_sides(config)
    runs = []
    for i, seed in enumerate(args.seeds):
        thetas = result.estimator[i]
        final = result.eval[i][-1]
        runs.append({
            "row": row, "seed": seed, "weights": weights, "activations": activations,
            "final_top1": final["top1"], "final_loss": final["loss"],
            "seconds": round(seconds, 2), "compile_seconds": round(result.compile_seconds, 2),
            "train_seconds": round(result.train_seconds, 2), "eval_seconds": round(result.eval_seconds, 2),
            "diverged_at": result.diverged_at[i],
            "eval_curve": [[r["step"], r["top1"], r["loss"]] for r in result.eval[i]],
            "train_curve": [[r["step"], r["top1"], r["loss"]] for r in result.train[i]],
            "slope_at_zero": {side: [[step, slope0(est, tree[THETA_NAMES[side]])] for step, tree in thetas]
                              for side, est in sides.items()},
            "forward_sign": {side: [[step, forward_sign(est, tree[THETA_NAMES[side]])] for step, tree in thetas]
                             for side, est in sides.items()},
        })
    return runs


def throughput(args: argparse.Namespace, ks: list[int]) -> dict[str, Any]:
    """Images/s of each row's vmapped step at K copies (seeds 0..K-1), and the study's wall time
    extrapolated from them (training steps only, at K = the number of seeds when measured)."""
    out: dict[str, Any] = {}
    for row in args.rows:
        config = make_config(*ROW_SPECS[row], 0, args)
        for k in ks:
            seeds = list(range(k))
            r = Study(config, [Copy(s) for s in seeds], datasets(config, seeds, args.pad)).benchmark(
                steps=args.throughput_steps, warmup=args.throughput_warmup)
            out.setdefault(row, {})[k] = r
            print(f"{row:<12} K={k:<3} {r['examples_per_sec']:10,.1f} images/s ({r['seconds_per_step'] * 1e3:.1f} ms "
                  f"per step of {k} x {args.batch}; compiled in {r['compile_seconds']:.1f} s)", flush=True)
    k = len(args.seeds)
    if all(k in v for v in out.values()):
        train = sum(args.steps / (v[k]["examples_per_sec"] / (k * args.batch)) for v in out.values())
        compile_s = sum(v[k]["compile_seconds"] for v in out.values())
        print(f"estimate for --rows {','.join(args.rows)} with {k} seeds: {train / 60:.1f} min of training steps "
              f"+ {compile_s / 60:.1f} min compiling (evaluation not included)")
    return out


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
    p.add_argument("--seeds", default="0,1,2", help="trained together, one vmapped program per row")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--epochs", type=float, default=0.0, help="if > 0: steps = ceil(epochs * 60,000 / batch)")
    p.add_argument("--eval_every", type=int, default=50, help="also at the last step")
    p.add_argument("--log_every", type=int, default=25)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--eval_batch", type=int, default=1000)
    p.add_argument("--lr", type=float, default=2.5e-3, help="Adam, linear decay to 0")
    p.add_argument("--estimator_lr", type=float, default=1e-3, help="the estimator's Adam, constant")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--stages", default="1,1,1", help="blocks per stage (4 stages need --pad 2)")
    p.add_argument("--pad", type=int, default=0, help="pad the 28x28 images by this many black pixels per side")
    p.add_argument("--backward", default="auto", choices=("auto", "matmul", "reduce", "autodiff", "pallas"),
                   help="the backward form of mlp and linear (speed only)")
    p.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "digits"),
                   help="digits (embedded, 8x8: --pad 12 gives the padded Fashion-MNIST's 32x32) serves "
                        "--throughput where Fashion-MNIST is not installed (bench/gpu_session.sh)")
    p.add_argument("--data_dir", default="", help="Fashion-MNIST IDX files (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--budget", action="store_true",
                   help="the real budget: " + ", ".join(f"--{k} {v}" for k, v in BUDGET.items())
                   + " (options given explicitly win)")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke test: " + ", ".join(f"--{k} {v}" for k, v in QUICK.items())
                   + " (options given explicitly win)")
    p.add_argument("--throughput", default="", help="comma-separated K: measure images/s of each row's program "
                   "with K copies instead of training (and extrapolate the study's time)")
    p.add_argument("--throughput_steps", type=int, default=10)
    p.add_argument("--throughput_warmup", type=int, default=2)
    p.add_argument("--out", default="", help="JSON path; the PNG goes beside it (default bench/results/"
                   "estimator_study[_budget][_throughput].json)")
    p.add_argument("--append", action="store_true", help="keep the other rows already in --out (same setup) and "
                   "add or replace these: a long study in several commands")
    p.add_argument("--silent", action="store_true", help="hide the per-row progress lines")
    p.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON at --out")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    given = {a.split("=")[0][2:] for a in argv if a.startswith("--")}
    for preset, values in (("budget", BUDGET), ("quick", QUICK)):
        if getattr(args, preset):
            for k, v in values.items():
                if k not in given:
                    setattr(args, k, v)
    if args.epochs > 0:
        args.steps = math.ceil(args.epochs * TRAIN_SIZE / args.batch)
    if not args.out:
        name = "estimator_study" + ("_budget" if args.budget else "") + ("_throughput" if args.throughput else "")
        args.out = str(RESULTS / f"{name}.json")
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in args.rows if r not in ROW_SPECS]
    if bad:
        p.error(f"unknown row(s) {bad}; valid: {', '.join(ROW_SPECS)}")
    if args.dataset != "fashion_mnist" and not args.throughput:
        p.error("--dataset digits serves --throughput only; the study itself trains on Fashion-MNIST")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.stages = [int(s) for s in args.stages.split(",")]
    if TEST_SIZE % args.eval_batch:
        p.error("--eval_batch must divide the 10,000 test images")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.out)
    if args.replot:
        payload = json.loads(out.read_text())
        plot(payload["summary"], payload["runs"], out.with_suffix(".png"), plot_title(payload["setup"]))
        return payload
    command = "python -m bench.estimator_study " + " ".join(sys.argv[1:] if argv is None else argv)
    size = (28 if args.dataset == "fashion_mnist" else 8) + 2 * args.pad
    what = "fashion_mnist (60k train / 10k test" if args.dataset == "fashion_mnist" else "digits (throughput only"
    setup = {"model": "bireal_resnet18", "small_inputs": True, "width": args.width, "stage_sizes": args.stages,
             "data": f"{what}, no augmentation, {size}x{size}"
                     + (f": padded by {args.pad} black pixels" if args.pad else "") + ")",
             "batch_size": args.batch, "steps": args.steps, "epochs": round(args.steps * args.batch / TRAIN_SIZE, 3),
             "eval_every_steps": args.eval_every, "optimizer": f"adam {args.lr:g}, linear decay to 0",
             "estimator_optimizer": f"adam {args.estimator_lr:g}, constant", "estimator_share": True,
             "mlp_backward": args.backward,
             "seeds": args.seeds, "program": "the seeds of a row as one vmapped program (mlpbnn.study); a run's "
                                             "seconds are its row's",
             "thetas": "share=True: one theta for all weight binarizers, a separate one for all activation "
                       "binarizers", "std": "sample standard deviation over seeds (ddof=1)"}
    if args.throughput:
        ks = [int(k) for k in args.throughput.split(",")]
        results = throughput(args, ks)
        payload = {"machine": machine(), "command": command, "setup": setup, "throughput": results}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {out}")
        return payload
    runs: list[dict[str, Any]] = []
    prior_wall, commands = 0.0, [command]
    if args.append and out.is_file():
        # Rows of an earlier invocation with the same setup are kept (a long study split into
        # several commands, e.g. under a per-command time limit); the rows run now replace theirs.
        prior = json.loads(out.read_text())
        if prior["setup"] != setup:
            changed = sorted(k for k in setup if prior["setup"].get(k) != setup[k])
            raise SystemExit(f"--append: {out} has a different setup ({', '.join(changed)}); use another --out")
        runs = [r for r in prior["runs"] if r["row"] not in args.rows]
        prior_wall, commands = prior["wall_seconds"], [*prior.get("commands", [prior["command"]]), command]
    rows = list(dict.fromkeys([r["row"] for r in runs] + args.rows))
    t0 = time.perf_counter()
    for row in args.rows:
        for r in run_row(row, args):
            runs.append(r)
            print(f"{row} seed {r['seed']}: top-1 {r['final_top1']:.2%} (row: {r['seconds']:.0f} s, elapsed "
                  f"{time.perf_counter() - t0:.0f} s)", flush=True)
        write_results(out, rows, commands, setup, runs, prior_wall + time.perf_counter() - t0, complete=False)
    wall = time.perf_counter() - t0
    payload = write_results(out, rows, commands, setup, runs, prior_wall + wall, complete=True)
    print("\n" + table(payload["summary"]))
    print("\nslope at 0 (step:value) of the learnable estimators' thetas:\n" + slope_text(runs))
    print(f"\n{command}\nwall time {wall:.0f} s ({wall / 60:.1f} min) for {len(args.rows) * len(args.seeds)} runs"
          + (f" ({payload['wall_seconds'] / 60:.1f} min for all {len(runs)} in {out})" if prior_wall else "")
          + f"; wrote {out} and {out.with_suffix('.png')}")
    return payload


def write_results(out: Path, rows: list[str], commands: list[str], setup: dict[str, Any],
                  runs: list[dict[str, Any]], wall: float, complete: bool) -> dict[str, Any]:
    summary = summarise(runs, rows)
    payload = {"machine": machine(), "command": commands[-1], "commands": commands, "wall_seconds": round(wall, 1),
               "complete": complete, "setup": setup,
               "rows": {r: {"weights": ROW_SPECS[r][0], "activations": ROW_SPECS[r][1]} for r in rows},
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
            f"{setup['steps']} steps of {setup['batch_size']} ({setup['epochs']:g} epochs), {len(setup['seeds'])} "
            f"seed(s)")


if __name__ == "__main__":
    main()
