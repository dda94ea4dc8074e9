"""Inference latency of bit-packed XNOR-popcount networks against float XLA and PyTorch, on this CPU.

    python -m bench.latency [--rounds 3] [--models bireal_resnet18,bireal_resnet34] [--batches 1,32]
                            [--size 224] [--quick]

Writes ``bench/results/latency.json`` and ``bench/results/latency.png``.

1. Per layer: the binary 3x3 convolutions of ``bireal_resnet18`` at ``--size`` (layer1..4, the
   stride-2 first conv of layers 2..4 included), and its real 7x7 stem for scale:
   - ``xla_float``: XLA's float32 convolution of the same shape (``lax.conv_general_dilated``,
     zero padding), the input already +-1;
   - ``packed``: the whole packed layer from a real input to the folded float output: sign and
     bit-packing, the XNOR-popcount convolution, the zero-padding border correction, the affine
     (``mlpbnn.packed.binary_conv``, layout 'direct');
   - ``packed_pad1``: the same for a layer trained with ``pad_value=+1`` (no correction);
   - ``packed_blocked``: layout 'blocked' (output channels in blocks of 64, outermost);
   - ``packed_kernel``: the XNOR-popcount convolution alone, packed padded input to int32;
   - ``im2col_words``: the alternative layout tried, im2col patches of words and a reduction over
     them (batch 1 only: it is slow);
   - ``torch_1t`` / ``torch_all``: PyTorch's float32 ``conv2d`` (oneDNN) with 1 thread / all cores.
2. End to end, ``bireal_resnet18``/``34`` at ``--size`` (random weights, random BN statistics):
   - ``packed``: the exported program (``mlpbnn.export.build``), jit'd end to end;
   - ``packed_pad1``: the same network trained with ``pad_value=+1``;
   - ``xla_float``: the same exported program with its binary convs as float convs of sign(x) and
     the +-1 weights (``PackedNetwork(binary='float')``): the network as a float model would run
     it, weights prepared once;
   - ``xla_model``: the training model's own eval forward (``model.apply``; it also recomputes
     the weight signs and scales from the latent weights on every call), batch 1 only;
   - ``torch_1t`` / ``torch_all``: the same program in PyTorch float32 (weights prepared once).
   Model size: the export on disk against the float32 variables.

All candidates of one table are timed in interleaved rounds in one process (medians over rounds;
minima in the JSON too), so machine noise (a shared 2-core box) hits them alike: compare the
ratios, not the absolute times. At batch 1 a sample is the mean of a burst of back-to-back calls
(20 per layer, 5 per network): warm latency.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from jax import lax

from bench.common import RESULTS, interleaved_times, write_json
from mlpbnn import complexity, export, models, packed

CPU_OPTIONS = {"xla_cpu_prefer_vector_width": 512} if jax.default_backend() == "cpu" else None
# (input size, in channels, out channels, stride) of bireal_resnet18's binary convs at 224 (scaled with --size)
LAYERS = [("layer1", 56, 64, 64, 1), ("layer2_0", 56, 64, 128, 2), ("layer2", 28, 128, 128, 1),
          ("layer3_0", 28, 128, 256, 2), ("layer3", 14, 256, 256, 1), ("layer4_0", 14, 256, 512, 2),
          ("layer4", 7, 512, 512, 1)]
ALL_THREADS = os.cpu_count() or 1


PAUSE_S = 0.05  # between timed bursts: lets the other framework's spinning worker threads go idle
BURST_B1 = 20  # back-to-back calls per sample for the batch-1 layers (5 for whole networks)


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1,
                burst: int = 1) -> dict[str, list[float]]:
    """``bench.common.interleaved_times`` with a pause before each burst: XLA's and PyTorch's
    thread pools spin for a while after their work, and on two cores a spinning pool starves the
    next candidate's second thread (measured: PyTorch with 2 threads 10x slower right after an XLA
    call without the pause). A burst's mean is warm latency, without the wake-up of sleeping
    thread pools that a single call after a pause measures."""
    return interleaved_times(fns, rounds, warmup, burst, pause=PAUSE_S)


def _stats(times: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(medians in seconds, {'ms': medians, 'ms_min': minima} in milliseconds)."""
    med = {k: statistics.median(v) for k, v in times.items()}
    return med, {"ms": {k: v * 1e3 for k, v in med.items()}, "ms_min": {k: min(v) * 1e3 for k, v in times.items()}}


def _jit(fn: Callable) -> Callable:
    return jax.jit(fn, compiler_options=CPU_OPTIONS)


def _torch(fn: Callable[[], Any], threads: int) -> Callable[[], Any]:
    def run():
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            return fn()
    return run


def im2col_words(xbits: jax.Array, wbits: jax.Array, n_bits: int, stride: int) -> jax.Array:
    """The alternative layout: (N, Ho, Wo, 9 * Cw) patches of words against (9 * Cw, O) weights,
    XOR, popcount and a reduction over the words axis."""
    n, h, w, cw = xbits.shape
    ho, wo = (h - 3) // stride + 1, (w - 3) // stride + 1
    pat = jnp.concatenate([xbits[:, dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride]
                           for dy in range(3) for dx in range(3)], axis=-1)
    pc = lax.population_count(pat[..., :, None] ^ wbits.reshape(-1, wbits.shape[-1]))
    return n_bits - 2 * jnp.sum(pc.astype(jnp.int32), axis=-2)


def bench_layers(size: int, batches: list[int], rounds: int) -> list[dict[str, Any]]:
    rows = []
    scale = size / 224
    rng = np.random.default_rng(0)
    specs = [("stem", 224, 3, 64, 2)] + LAYERS
    for batch in batches:
        for name, h0, cin, cout, stride in specs:
            h = max(1, round(h0 * scale))
            stem = name == "stem"
            k, pad = (7, 3) if stem else (3, 1)
            x = rng.standard_normal((batch, h, h, cin)).astype(np.float32)
            xs = np.where(x >= 0, 1.0, -1.0).astype(np.float32)
            w = np.where(rng.standard_normal((k, k, cin, cout)) >= 0, 1.0, -1.0).astype(np.float32)
            if stem:
                xs, w = x, rng.standard_normal((k, k, cin, cout)).astype(np.float32)
            padding = ((pad, pad), (pad, pad))
            fconv = _jit(lambda a, b, s=stride, p=padding: lax.conv_general_dilated(
                a, b, (s, s), p, dimension_numbers=("NHWC", "HWIO", "NHWC")))
            xs_j, w_j = jnp.asarray(xs), jnp.asarray(w)
            xt = torch.from_numpy(np.ascontiguousarray(xs.transpose(0, 3, 1, 2))).contiguous(
                memory_format=torch.channels_last)
            wt = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
            fns: dict[str, Callable[[], Any]] = {"xla_float": lambda f=fconv, a=xs_j, b=w_j: f(a, b)}
            if not stem:
                bits = jnp.asarray(packed.pack_weight_signs(w))
                wsum = w.sum(axis=2)
                sc, bi = jnp.asarray(rng.random(cout).astype(np.float32)), jnp.zeros(cout, jnp.float32)
                xj = jnp.asarray(x)

                def layer(a, bt, s_, b_, pad_value, layout, cin=cin, stride=stride, wsum=wsum):
                    acc = packed.binary_conv(a, bt, cin, (3, 3), (stride, stride), ((1, 1), (1, 1)), pad_value,
                                             1.0, wsum, layout)
                    return acc.astype(jnp.float32) * s_ + b_

                for label, pv, layout in (("packed", 0.0, "direct"), ("packed_pad1", 1.0, "direct"),
                                          ("packed_blocked", 0.0, "blocked")):
                    f = _jit(functools.partial(layer, pad_value=pv, layout=layout))
                    fns[label] = lambda f=f, a=xj, bt=bits, s_=sc, b_=bi: f(a, bt, s_, b_)
                xb = packed.pack_signs(jnp.pad(jnp.asarray(xs), ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=1.0))
                kern = _jit(lambda a, bt, stride=stride, cin=cin: packed.xnor_conv(a, bt, 9 * cin, (3, 3),
                                                                                 (stride, stride)))
                fns["packed_kernel"] = lambda f=kern, a=xb, bt=bits: f(a, bt)
                ones = jnp.pad(xs_j, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=1.0)
                ref = lax.conv_general_dilated(ones, w_j, (stride, stride), "VALID",
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
                if not np.array_equal(np.asarray(kern(xb, bits)), np.asarray(ref)):
                    raise AssertionError(f"{name}: the packed kernel differs from the float convolution")
                if batch == 1:
                    im = _jit(lambda a, bt, stride=stride, cin=cin: im2col_words(a, bt, 9 * cin, stride))
                    fns["im2col_words"] = lambda f=im, a=xb, bt=bits: f(a, bt)
            for threads, label in ((1, "torch_1t"), (ALL_THREADS, "torch_all")):
                fns[label] = _torch(lambda a=xt, b=wt, s=stride, p=pad: F.conv2d(a, b, None, s, p), threads)
            t, ms = _stats(interleaved(fns, rounds, burst=BURST_B1 if batch == 1 else 1))
            row = {"layer": name, "batch": batch, "input": [h, h, cin], "out_channels": cout, "stride": stride,
                   "kernel": k, **ms}
            if not stem:
                row["speedup_vs_xla_float"] = {key: t["xla_float"] / t[key] for key in t if key.startswith(("packed",
                                                                                                         "im2col"))}
                row["speedup_vs_torch_all"] = {key: t["torch_all"] / t[key] for key in t if key.startswith("packed")}
            rows.append(row)
            print(f"b={batch:<3} {name:<9} " + "  ".join(f"{key} {v * 1e3:.3f}" for key, v in t.items())
                  + (f"   packed {t['xla_float'] / t['packed']:.1f}x xla_float" if not stem else ""), flush=True)
    return rows


# ------------------------------------------------------------------------------------------- end to end


def _random_variables(model: Any, size: int, seed: int = 0) -> dict[str, Any]:
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    v = jax.jit(model.init)(jax.random.key(seed), x)
    rng = np.random.default_rng(seed + 1)

    def draw(path, a):
        a = np.asarray(a)
        key = jax.tree_util.keystr(path)
        if "'var'" in key:
            return (0.5 + rng.random(a.shape)).astype(a.dtype)
        if "'mean'" in key:
            return (0.1 * rng.standard_normal(a.shape)).astype(a.dtype)
        return a

    return jax.tree_util.tree_map_with_path(draw, v)


class TorchProgram(torch.nn.Module):
    """A packed program in PyTorch float32 (NCHW, channels-last memory): binary convs as float
    convs of sign(x) with the +-1 weights, their scale and bias folded, weights prepared once."""

    def __init__(self, program: dict[str, Any], arrays: dict[str, np.ndarray]):
        super().__init__()
        self.ops = program["ops"]
        t: dict[str, torch.Tensor] = {}
        for op in self.ops:
            if op["op"] in ("conv", "binary_conv"):
                k = arrays[op["kernel"]] if op["op"] == "conv" else packed.unpack_weight_signs(
                    arrays[op["bits"]], op["kernel_size"], op["in_channels"])
                t[op.get("kernel", op.get("bits"))] = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))
            for f in ("scale", "bias", "slope"):
                if f in op:
                    a = arrays[op[f]]
                    t[op[f]] = torch.from_numpy(a.reshape(1, -1, 1, 1) if op["op"] != "dense" else a)
            if op["op"] == "dense":
                t[op["kernel"]] = torch.from_numpy(arrays[op["kernel"]])  # (in, out): x @ W
        self.t = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        regs = {"input": x}
        t = self.t
        for op in self.ops:
            src = [regs[s] for s in op["src"]] if isinstance(op["src"], list) else regs[op["src"]]
            kind = op["op"]
            if kind == "conv":
                (pt, _), (pl, _) = op["padding"]
                y = F.conv2d(src, t[op["kernel"]], None, op["strides"], (pt, pl))
            elif kind == "binary_conv":
                (pt, pb), (pl, pr) = op["padding"]
                s = torch.where(src >= 0, 1.0, -1.0) if op["sign_zero"] == 1.0 else torch.where(src > 0, 1.0, -1.0)
                s = F.pad(s, (pl, pr, pt, pb), value=op["pad_value"])
                y = F.conv2d(s, t[op["bits"]], None, op["strides"]) * t[op["scale"]] + t[op["bias"]]
            elif kind == "affine":
                y = src * t[op["scale"]] + t[op["bias"]]
            elif kind == "bias":
                y = src + t[op["bias"]]
            elif kind == "prelu":
                y = torch.where(src > 0, src, t[op["slope"]] * src)
            elif kind == "maxpool":
                y = F.max_pool2d(src, op["window"], op["strides"], op["padding"])
            elif kind == "avgpool":
                y = F.avg_pool2d(src, op["window"], op["strides"])
            elif kind == "global_avg_pool":
                y = src.mean(dim=(2, 3))
            elif kind == "add":
                y = src[0] + src[1]
            elif kind == "dense":
                y = src @ t[op["kernel"]] + t[op["bias"]]
            else:
                raise ValueError(kind)
            regs[op["dst"]] = y
        return regs["output"]


def bench_models(names: list[str], size: int, batches: list[int], rounds: int) -> list[dict[str, Any]]:
    rows = []
    spec = {"height": size, "width": size, "channels": 3}
    for name in names:
        kw = {"num_classes": 1000}
        model = models.create(name, **kw)
        v = _random_variables(model, size)
        program, arrays = export.build(v, name, kw, spec)
        program1, arrays1 = export.build(v, name, {**kw, "pad_value": 1.0}, spec)
        with tempfile.TemporaryDirectory() as d:
            sizes = export.save(Path(d) / "packed", program, arrays, {"input_spec": spec})
        report = complexity.count(model, (size, size, 3), name=name).totals()
        nets = {"packed": packed.PackedNetwork(program, arrays), "packed_pad1": packed.PackedNetwork(program1, arrays1),
                "xla_float": packed.PackedNetwork(program, arrays, binary="float")}
        tprog = TorchProgram(program, arrays).eval()
        apply = jax.jit(model.apply)
        for batch in batches:
            x = np.random.default_rng(batch).standard_normal((batch, size, size, 3)).astype(np.float32)
            xj = jnp.asarray(x)
            xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).contiguous(
                memory_format=torch.channels_last)
            fns: dict[str, Callable[[], Any]] = {k: (lambda n=n, a=xj: n(a)) for k, n in nets.items()}
            if batch == 1:
                fns["xla_model"] = lambda f=apply, v=v, a=xj: f(v, a)
            for threads, label in ((1, "torch_1t"), (ALL_THREADS, "torch_all")):
                fns[label] = _torch(lambda m=tprog, a=xt: m(a), threads)
            outs = {k: np.asarray(f()) for k, f in fns.items()}
            agree = {k: float(np.mean(o.argmax(-1) == outs["packed"].argmax(-1))) for k, o in outs.items()}
            diff = {k: float(np.abs(o - outs["xla_float"]).max()) for k, o in outs.items() if k != "packed_pad1"}
            t0 = time.perf_counter()
            t, ms = _stats(interleaved(fns, rounds, warmup=0, burst=5 if batch == 1 else 1))
            row = {"model": name, "batch": batch, "size": size, **ms,
                   "speedup_of_packed": {k: s / t["packed"] for k, s in t.items()},
                   "top1_agreement_with_packed": agree, "max_abs_logit_diff_vs_xla_float": diff,
                   "export_bytes": sizes["total"], "float32_bytes": export.float32_size(v),
                   "flops": report["flops"], "bops": report["bops"], "ops": report["ops"]}
            rows.append(row)
            print(f"{name} b={batch}: " + "  ".join(f"{k} {s * 1e3:.1f} ms" for k, s in t.items())
                  + f"   ({time.perf_counter() - t0:.0f} s)", flush=True)
            print(f"   packed is {t['xla_float'] / t['packed']:.1f}x float XLA, {t['torch_all'] / t['packed']:.1f}x "
                  f"PyTorch ({ALL_THREADS} threads), {t['torch_1t'] / t['packed']:.1f}x PyTorch (1 thread); pad +1 "
                  f"{t['packed'] / t['packed_pad1']:.2f}x the zero-padded; logit diff vs float {diff['packed']:.2e}",
                  flush=True)
        print(f"{name}: export {sizes['total']:,} bytes ({sizes['total'] / 2**20:.2f} MiB), float32 "
              f"{export.float32_size(v):,} bytes ({export.float32_size(v) / 2**20:.2f} MiB)", flush=True)
    return rows


def plot(layers: list[dict[str, Any]], nets: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    ax = axes[0]
    binary = [r for r in layers if r["layer"] != "stem"]
    names = list(dict.fromkeys(r["layer"] for r in binary))
    batches = sorted({r["batch"] for r in binary})
    width = 0.8 / (2 * len(batches))
    for i, b in enumerate(batches):
        rs = {r["layer"]: r for r in binary if r["batch"] == b}
        for j, (keys, label) in enumerate(((("xla_float",), "XLA float"), (("torch_1t", "torch_all"), "PyTorch"))):
            vals = [min(rs[n]["ms"][k] for k in keys) / rs[n]["ms"]["packed"] for n in names]
            ax.bar(np.arange(len(names)) + (2 * i + j - len(batches) + 0.5) * width, vals, width,
                   label=f"vs {label}, batch {b}")
    ax.axhline(5, color="k", ls="--", lw=0.8)
    ax.set_xticks(np.arange(len(names)), names, rotation=30)
    ax.set_ylabel("speedup of the packed layer (x, medians)")
    ax.set_title("binary 3x3 conv layers of bireal_resnet18 (PyTorch: its faster thread count)")
    ax.legend(fontsize=8)
    ax = axes[1]
    markers = {"packed": "o", "packed_pad1": "s", "xla_float": "^", "torch_all": "v", "torch_1t": "<"}
    for r in nets:
        if r["batch"] != 1:
            continue
        for key, m in markers.items():
            ax.scatter(r["ops"] / 1e8 if key.startswith("packed") else (r["flops"] + r["bops"]) / 1e8,
                       r["ms"][key], marker=m, label=f"{r['model']} {key}")
    ax.set_yscale("log")
    ax.set_xlabel("operations per image (x1e8): FLOPs + BOPs/64 when packed, FLOPs + BOPs in float")
    ax.set_ylabel("latency, batch 1 (ms)")
    ax.set_title("end to end, medians (log scale)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--layer-rounds", type=int, default=7)
    p.add_argument("--models", default="bireal_resnet18,bireal_resnet34")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--quick", action="store_true", help="64x64, batch 1, ResNet-18, 2 rounds (a smoke test)")
    p.add_argument("--out", default="latency")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batches, args.models, args.rounds, args.layer_rounds = 64, "1", "bireal_resnet18", 2, 2
    batches = [int(b) for b in args.batches.split(",")]
    t0 = time.perf_counter()
    layers = bench_layers(args.size, batches, args.layer_rounds)
    nets = bench_models(args.models.split(","), args.size, batches, args.rounds)
    load = os.getloadavg()
    out = write_json(args.out, {"args": vars(args), "torch": torch.__version__, "threads_all": ALL_THREADS,
                                "load_average_at_end": load, "seconds": time.perf_counter() - t0,
                                "layers": layers, "models": nets})
    plot(layers, nets, RESULTS / f"{args.out}.png")
    print(f"wrote {out} and {RESULTS / (args.out + '.png')} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
