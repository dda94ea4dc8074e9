"""Training-step time of the pose networks on this machine: BHRNet-W32 beside SBPN (ResNet-18) and its
full-precision twin HRNet-W32, as images/s, in one run.

    python -m bench.pose_step [--batch 4] [--rounds 3] [--models sbpn_resnet18,hrnet_w32,bhrnet_w32]
                              [--height 256] [--width 192]

Each model's step is the project's real keypoints training step (``bench.common.heatmap_step``:
``mlpbnn.train.step.make_train_step`` with the Keypoints task and ``mlpbnn.train.optim``'s partitioned
Adam at ``keypoints_config``'s values, jitted with the state donated) on a fixed random batch of
``--height`` x ``--width`` crops (HRNet's 256x192) with quarter-size heatmap targets. Binary models get
BBC's estimators (MLP on weights, ApproxSign on activations); ``sbpn_resnet18`` its binary head; HRNet
and BHRNet their registry defaults. All steps are compiled first (the compile column: lowering plus
XLA compilation, after init), then timed in interleaved rounds (``bench.common.interleaved_medians``'
order: one untimed call each, then round-robin), so that noise on a shared machine hits every model
alike. Prints a table and writes bench/results/pose_step.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

import jax

from bench.common import estimator_options, heatmap_step, interleaved_times, write_json

MODELS = ("sbpn_resnet18", "hrnet_w32", "bhrnet_w32")
REFERENCE = "hrnet_w32"  # the ratio column: images/s relative to the full-precision HRNet
OPTIONS: dict[str, dict[str, Any]] = {"sbpn_resnet18": {"head": "binary"}}  # SBPN's binary SimpleBaseline head


def model_list(text: str) -> list[str]:
    from mlpbnn import models

    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in models.names() or models.info(n).head != "heatmap"]
    if not names or bad:
        heatmap = [n for n in models.names() if models.info(n).head == "heatmap"]
        raise argparse.ArgumentTypeError(f"heatmap model names expected (one of {', '.join(heatmap)}), got {text!r}")
    return names


def cpu_facts() -> dict[str, Any]:
    """The CPU as lscpu names it (model, CPUs, threads per core, hypervisor), else ``platform``'s."""
    facts: dict[str, Any] = {"processor": platform.processor() or platform.machine()}
    if shutil.which("lscpu"):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        wanted = {"Model name": "model", "CPU(s)": "cpus", "Thread(s) per core": "threads_per_core",
                  "Hypervisor vendor": "hypervisor", "Vendor ID": "vendor"}
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in wanted:
                facts[wanted[key.strip()]] = value.strip()
    return facts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (median; interleaved)")
    parser.add_argument("--models", type=model_list, default=list(MODELS), help="comma-separated heatmap models")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=192)
    args = parser.parse_args(argv)
    if args.batch < 1 or args.rounds < 1:
        parser.error("--batch and --rounds must be >= 1")

    t_start = time.perf_counter()
    load_before = os.getloadavg()
    cores = os.cpu_count()
    print(f"{jax.default_backend()} backend, {cores} cores, load average {load_before[0]:.2f}; "
          f"{args.height}x{args.width}, batch {args.batch}, {args.rounds} rounds", flush=True)
    steps, builds = {}, {}
    for name in args.models:
        steps[name], builds[name] = heatmap_step(name, args.height, args.width, args.batch, **OPTIONS.get(name, {}))
        print(f"  {name}: init {builds[name]['init_s']:.1f} s, compile {builds[name]['compile_s']:.1f} s",
              flush=True)
    times = interleaved_times(steps, args.rounds, warmup=1)  # interleaved_medians' order, keeping the rounds
    load_after = os.getloadavg()
    median = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: args.batch / s for k, s in median.items()}

    print(f"\n{'model':<15}{'s/step':>8}  {'rounds (s)':<24}{'images/s':>9}{'vs ' + REFERENCE:>14}{'compile s':>11}")
    for name in args.models:
        rounds = " ".join(f"{t:.2f}" for t in times[name])
        ratio = f"{rate[name] / rate[REFERENCE]:.2f}x" if REFERENCE in rate else "-"
        print(f"{name:<15}{median[name]:8.2f}  {rounds:<24}{rate[name]:9.2f}{ratio:>14}"
              f"{builds[name]['compile_s']:11.1f}")
    wall = time.perf_counter() - t_start
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; {cores} cores; "
          f"wall {wall:.0f} s", flush=True)

    path = write_json("pose_step", {
        "what": "seconds per training step (medians of interleaved rounds) of heatmap models on one machine: the "
                "project's keypoints train step (bench.common.heatmap_step: make_train_step, Keypoints task, "
                "optim.make partitioned Adam at keypoints_config), float32, random fixed batch; images/s = batch / "
                f"median; ratio: images/s relative to {REFERENCE}; compile: lower + XLA compile after init",
        "command": " ".join(["python -m bench.pose_step", *(sys.argv[1:] if argv is None else argv)]),
        "image_size": [args.height, args.width], "heatmap_size": [args.height // 4, args.width // 4],
        "batch": args.batch, "rounds": args.rounds,
        "model_options": {n: {**estimator_options(n), **OPTIONS.get(n, {})} for n in args.models},
        "cpu": cpu_facts(), "cores": cores, "jax_version": jax.__version__,
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "seconds_per_step": {n: round(median[n], 3) for n in args.models},
        "rounds_seconds": {n: [round(t, 3) for t in times[n]] for n in args.models},
        "images_per_s": {n: round(rate[n], 3) for n in args.models},
        f"ratio_to_{REFERENCE}": {n: round(rate[n] / rate[REFERENCE], 3) for n in args.models}
        if REFERENCE in rate else None,
        "init_seconds": {n: round(builds[n]["init_s"], 1) for n in args.models},
        "compile_seconds": {n: round(builds[n]["compile_s"], 1) for n in args.models},
        "wall_seconds": round(wall, 1),
        "note": "shared 2-core machine: the load averages say how much else ran; interleaved rounds spread that "
                "noise over all models",
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
