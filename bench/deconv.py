"""Transposed convolutions on the CPU: lax's input-dilated form against ``mlpbnn.conv.conv_transpose``.

    python -m bench.deconv [--rounds 3] [--batch 8] [--no-step]

Layer: one SimpleBaseline deconvolution as SBPN-ResNet-18 runs its second one at 256x192: 256 -> 256
channels, 4x4, stride 2, padding 1 (PyTorch's ConvTranspose2d(256, 256, 4, 2, 1)), 32x24 -> 64x48,
batch ``--batch``, float32; its forward, input gradient (VJP in x) and kernel gradient (VJP in the
kernel), each jitted on its own. ``old`` is ``conv_transpose(..., impl='xla')``: the stride-1
convolution of the 2-dilated input with the flipped kernel (``lax.conv_general_dilated`` with
``lhs_dilation``, autodiff gradients), which is what ``layers.conv_transpose_nhwc`` computed before;
``new`` is ``impl='im2col'``, the CPU default (phase forward, strided-conv input gradient, im2col
kernel gradient; see ``mlpbnn/conv.py``). The largest difference of each result, relative to the
largest magnitude, is recorded.

Step: ``sbpn_resnet18``'s training step at 256x192, batch ``--batch`` (``bench.input_pipeline.sbpn_step``:
``make_train_step``, keypoints task, the trainer's partitioned Adam, binary head, MLP weight
estimator, ApproxSign), ``old`` traced with ``layers.conv_transpose_nhwc`` replaced by lax's form
(the backbone's convolutions use ``mlpbnn.conv``'s CPU path in both), ``new`` as the project runs
it. Both start from the same state and batch, so the first step's losses agree up to rounding.

All candidates run in this one process, in interleaved rounds (``bench.common.interleaved_times``,
medians), after one untimed call each (compilation; its results are the ones compared). The load
averages before and after say how busy the shared machine was. Writes bench/results/deconv.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import block, interleaved_times, write_json
from mlpbnn import conv, layers

IMPLS = {"old": "xla", "new": "im2col"}


def lax_conv_transpose_nhwc(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                            padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """The previous ``layers.conv_transpose_nhwc``: lax's input-dilated convolution."""
    return conv.conv_transpose(x, kernel, strides, padding, impl="xla")


def layer_fns(batch: int, impl: str) -> dict[str, Callable[[], Any]]:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, 32, 24, 256)).astype(np.float32))
    k = jnp.asarray(rng.normal(0, 0.05, size=(4, 4, 256, 256)).astype(np.float32))
    g = jnp.asarray(rng.normal(size=(batch, 64, 48, 256)).astype(np.float32))

    def f(x, k):
        return conv.conv_transpose(x, k, 2, 1, impl=impl)

    forward = jax.jit(f)
    input_grad = jax.jit(lambda x, k, g: jax.vjp(lambda xx: f(xx, k), x)[1](g)[0])
    kernel_grad = jax.jit(lambda x, k, g: jax.vjp(lambda kk: f(x, kk), k)[1](g)[0])
    return {"forward": lambda: forward(x, k), "input_grad": lambda: input_grad(x, k, g),
            "kernel_grad": lambda: kernel_grad(x, k, g)}


def rel_diff(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def first_calls(fns: dict[str, Callable[[], Any]]) -> tuple[dict[str, Any], dict[str, float]]:
    """One untimed call of each (compilation included): results and seconds."""
    out, seconds = {}, {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        out[name] = block(fn())
        seconds[name] = round(time.perf_counter() - t0, 2)
        print(f"  first call {name:<22} {seconds[name]:8.2f} s", flush=True)
    return out, seconds


def summarize(times: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    return {k: {"median_s": round(statistics.median(v), 4), "rounds_s": [round(t, 4) for t in v]}
            for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--no-step", action="store_true", help="time the layer only")
    args = parser.parse_args(argv)
    if jax.default_backend() != "cpu":
        print(f"note: backend {jax.default_backend()}: 'new' is forced to the CPU path here; the project's "
              "default there ('auto') is lax's form, i.e. 'old'", flush=True)
    load_before = os.getloadavg()
    print(f"load average {load_before[0]:.2f} on {os.cpu_count()} cores", flush=True)

    fns: dict[str, Callable[[], Any]] = {}
    for label, impl in IMPLS.items():
        for part, fn in layer_fns(args.batch, impl).items():
            fns[f"deconv_{part}_{label}"] = fn
    if not args.no_step:
        from bench.input_pipeline import sbpn_step
        with mock.patch.object(layers, "conv_transpose_nhwc", lax_conv_transpose_nhwc):
            fns["step_old"] = sbpn_step(256, 192, args.batch)
        fns["step_new"] = sbpn_step(256, 192, args.batch)
    results, first_s = first_calls(fns)
    times = interleaved_times(fns, args.rounds, warmup=0)
    load_after = os.getloadavg()
    summary = summarize(times)

    parts = ["forward", "input_grad", "kernel_grad"] + ([] if args.no_step else ["step"])
    table = {}
    print(f"\n{'':<14}{'old s':>10}{'new s':>10}{'speedup':>9}{'rel diff':>11}")
    for part in parts:
        old_key, new_key = (f"step_{x}" if part == "step" else f"deconv_{part}_{x}" for x in ("old", "new"))
        old, new = summary[old_key]["median_s"], summary[new_key]["median_s"]
        diff = rel_diff(results[new_key], results[old_key])
        table[part] = {"old_s": old, "new_s": new, "speedup": round(old / new, 2), "rel_diff": diff}
        print(f"{part:<14}{old:10.3f}{new:10.3f}{old / new:9.1f}{diff:11.2e}")
    print(f"load average {load_after[0]:.2f} after; rounds {args.rounds}")

    path = write_json("deconv", {
        "what": "seconds (medians of interleaved rounds) of one 256->256 4x4 stride-2 padding-1 transposed "
                f"convolution, 32x24 -> 64x48, batch {args.batch}, float32 (forward, input gradient, kernel "
                "gradient, each jitted alone) and of sbpn_resnet18's training step at 256x192 "
                f"batch {args.batch} (bench.input_pipeline.sbpn_step); old: lax.conv_general_dilated with "
                "lhs_dilation and autodiff (conv_transpose impl='xla', the previous layers.conv_transpose_nhwc), "
                "new: mlpbnn.conv.conv_transpose's CPU path (impl='im2col': phase forward, strided-conv input "
                "gradient, im2col kernel gradient); rel_diff: max |new - old| / max |old| of the results "
                "(the step: its loss)",
        "command": "python -m bench.deconv " + " ".join(sys.argv[1:] if argv is None else argv),
        "batch": args.batch, "rounds": args.rounds,
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        "table": table, "first_call_s": first_s, "times": summary,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
