"""ReActNet-A-small on digits: the weight estimator and optimizer rows of the estimator study on
the ReActNet-A backbone (arXiv 2003.03488), three seeds each, one vmapped program per row
(``mlpbnn.study``).

    python -m bench.reactnet_a_study [--seeds 0,1,2] [--steps 200] [--width 8] [--rows adam_ste,adam_mlp_pos,bop]

Setup: ``reactnet_a`` with ``small_inputs`` (stride-1 stem, halving at stages 2 and 3 only: 8x8 ->
4x4 -> 2x2) at ``--width`` (channels width..32*width, the full 13 blocks), ApproxSign on the
activations, scikit-learn's digits (1,437 train / 360 test 8x8 images, crop and flip), batch 64,
Adam 2.5e-3 with linear decay to 0 for everything but what the row changes:

- ``adam_ste``: ReActNet's weights (the clipped STE, alpha = mean |W| in the forward);
- ``adam_mlp_pos``: the BBC MLP on the weights (``mlp(init='positive')``), its own Adam 1e-3,
  on ReActNet's raw latent weights (no centring, the scale out of the backward);
- ``adam_mlp_pos_bbc``: the same in the BBC layer (weights centred per output channel, the
  gradient scaled by alpha), as configs/reactnet_a_bbc_imagenet.py;
- ``adam_mlp_pos_bbc_xavier``: that BBC layer with BBC's latent init (xavier uniform, where
  ReActNet's is U(0, 1e-3): all positive);
- ``adam_mlp_pos_lr1e-4``, ``adam_mlp_pos_bbc_lr1e-4``: ``adam_mlp_pos`` and ``adam_mlp_pos_bbc``
  with the MLP's Adam at 1e-4;
- ``bop``: the binary kernels by Bop (Helwegen et al., arXiv 1906.02107; larq's defaults gamma
  1e-4, threshold 1e-8, constant), its gradients through the STE; the rest Adam.

Writes ``bench/results/reactnet_a_study.json`` (final test top-1 per seed, mean and sample std).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from bench.common import RESULTS, machine
from mlpbnn.study import Copy, Study
from mlpbnn.train import base_config

BBC_LAYER = {"weight_norm": "center", "scale_in_backward": True}
# row -> (weight estimator, binary-kernel optimizer ('': the main Adam), model overrides, estimator lr)
ROWS: dict[str, tuple[str, str, dict[str, Any], float]] = {
    "adam_ste": ("ste", "", {}, 1e-3),
    "adam_mlp_pos": ("mlp(init='positive')", "", {}, 1e-3),
    "adam_mlp_pos_bbc": ("mlp(init='positive')", "", BBC_LAYER, 1e-3),
    "adam_mlp_pos_bbc_xavier": ("mlp(init='positive')", "", {**BBC_LAYER, "binary_init": "xavier"}, 1e-3),
    "adam_mlp_pos_lr1e-4": ("mlp(init='positive')", "", {}, 1e-4),
    "adam_mlp_pos_bbc_lr1e-4": ("mlp(init='positive')", "", BBC_LAYER, 1e-4),
    "bop": ("ste", "bop", {}, 1e-3),
}


def make_config(row: str, args: argparse.Namespace) -> Any:
    weights, optimizer, overrides, estimator_lr = ROWS[row]
    c = base_config()
    c.model.name = "reactnet_a"
    c.model.small_inputs = True
    c.model.width = args.width
    c.estimator.weights = weights
    c.estimator.activations = "approx_sign"
    c.data.augment = "crop_flip"
    c.batch_size = 64
    c.num_train_steps = args.steps
    c.log_every_steps = args.steps // 4
    c.eval_every_steps = args.steps // 4
    c.checkpoint_every_steps = args.steps // 4
    c.best_metric = ""
    c.progress_bar = False
    c.optimizer.learning_rate = 2.5e-3
    c.optimizer.schedule = "linear"
    c.optimizer.estimator.learning_rate = estimator_lr
    c.optimizer.partitions.binary_kernel.name = optimizer
    c.model.update(overrides)
    return c


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--out", default=str(RESULTS / "reactnet_a_study.json"))
    p.add_argument("--append", action="store_true", help="keep the other rows already in --out")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    rows = args.rows.split(",")
    bad = [r for r in rows if r not in ROWS]
    if bad:
        p.error(f"unknown row(s) {bad}; valid: {', '.join(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    results, t0 = {}, time.perf_counter()
    for row in rows:
        t = time.perf_counter()
        result = Study(make_config(row, args), [Copy(s) for s in seeds]).run(
            log=lambda msg, row=row: print(f"  [{row}] {msg}", flush=True))
        top1 = [float(e[-1]["top1"]) for e in result.eval]
        results[row] = {"weights": ROWS[row][0], "binary_kernel_optimizer": ROWS[row][1] or "adam",
                        "model_overrides": ROWS[row][2], "estimator_lr": ROWS[row][3],
                        "top1": top1, "mean": statistics.mean(top1),
                        "std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                        "diverged_at": result.diverged_at, "seconds": time.perf_counter() - t,
                        "compile_seconds": result.compile_seconds}
        print(f"{row}: top-1 {statistics.mean(top1):.2%} ± {results[row]['std']:.2%} "
              f"({', '.join(f'{v:.2%}' for v in top1)}), {time.perf_counter() - t:.0f} s", flush=True)
    payload = {"command": "python -m bench.reactnet_a_study " + " ".join(argv), "machine": machine(),
               "setup": {"model": "reactnet_a", "small_inputs": True, "width": args.width, "steps": args.steps,
                         "batch_size": 64, "data": "digits (crop_flip)", "seeds": seeds,
                         "activations": "approx_sign", "optimizer": "adam 2.5e-3, linear decay to 0",
                         "bop": "gamma 1e-4, threshold 1e-8 (larq's defaults), constant"},
               "rows": results, "wall_seconds": time.perf_counter() - t0}
    if args.append:
        with open(args.out) as f:
            prior = json.load(f)
        payload["rows"] = {**{k: v for k, v in prior["rows"].items() if k not in results}, **results}
        payload["command"] = [*([prior["command"]] if isinstance(prior["command"], str) else prior["command"]),
                              payload["command"]]
        payload["wall_seconds"] += prior["wall_seconds"]
    with open(args.out, "w") as f:
        json.dump(payload, f, indent=1)
    print(f"wrote {args.out} in {payload['wall_seconds']:.0f} s")
    return payload


if __name__ == "__main__":
    main()
