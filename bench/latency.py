"""Inference latency of bit-packed XNOR-popcount networks against float XLA, PyTorch and LCE, on this CPU.

    python -m bench.latency [--rounds 3] [--models bireal_resnet18,bireal_resnet34] [--batches 1,32]
                            [--size 224] [--skip-layers] [--skip-models] [--no-pose] [--pose-only]
                            [--pose-models sbpn_resnet18,bhrnet_w32,bhrnet_w32_fuse] [--pose-batches 1,8]
                            [--pose-input 256x192] [--pose-rounds 5] [--pose-layouts direct,blocked]
                            [--lce-rounds 2] [--wait-quiet 900] [--quick] [--markdown]

Writes ``bench/results/latency.json`` (keys ``layers``, ``models``, ``pose`` and ``pose_run``; a
section not run keeps its rows from the file, a rerun replaces the rows it measures again),
``bench/results/latency.png`` (sections 1 and 2) and ``bench/results/latency_ops.png`` (latency at
batch 1 against operations per image, every classifier and pose model). ``--quick`` is a smoke
test at 64x64 written to ``latency_quick.*``; ``--markdown`` prints the JSON's tables (the
README's) and runs nothing.

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
   - ``torch_1t`` / ``torch_all``: the same program in PyTorch float32 (``TorchProgram``).
   Model size: the export on disk against the float32 variables.
3. Pose models end to end at ``--pose-input`` (H x W, default 256x192), batches ``--pose-batches``:
   ``sbpn_resnet18`` (binary ResNet-18 and three binary 4x4 stride-2 deconvolutions),
   ``bhrnet_w32`` and ``bhrnet_w32_fuse`` (``binary_fuse=True``), random weights and BN statistics:
   - ``packed`` / ``packed_blocked``: the exported program, layouts 'direct' / 'blocked';
   - ``xla_float``: the same folded program, binary ops as float convs (``binary='float'``);
   - ``torch_1t`` / ``torch_2t``: ``TorchProgram`` with 1 and 2 threads;
   - ``lce``: Larq Compute Engine's x86-64 interpreter, 1 thread, where ``.venv-lce`` exists
     (``python -m mlpbnn.lce convert`` of the saved export, then ``bench``). It runs in its own
     process: one ``bench`` subprocess (its own warm-up, ``--lce-rounds`` timed calls) between
     each round of the in-process candidates. Without the environment the column is skipped and
     the reason recorded (``pose_run.lce``).
   Per row: medians and minima, OPs (``mlpbnn.complexity``: FLOPs, BOPs, FLOPs + BOPs/64), the
   export's bytes on disk and the float32 variables', the compile seconds per backend (XLA
   ahead-of-time lower + compile; PyTorch: weight preparation and its first call; LCE: the
   conversion subprocess, TensorFlow's import included), the load average before and after, and
   each output's max abs difference from ``xla_float`` (and the heatmap peaks' agreement).

``TorchProgram`` runs every op of the IR (``mlpbnn.lowering``) in PyTorch float32 (NCHW tensors
in channels-last memory): binary ops as ``conv2d`` / ``conv_transpose2d`` / matmul of sign(x)
with the unpacked +-1 weights, their scale folded into the weights and their bias into the op's
bias; asymmetric padding by ``F.pad`` (-inf for max pooling), transposed convs cropped as
PyTorch crops, ``flatten`` in NHWC order; it returns NHWC.

All candidates of one table are timed in interleaved rounds in one process (medians over rounds;
minima in the JSON too), so machine noise (a shared 2-core box) hits them alike: compare the
ratios, not the absolute times. At batch 1 a sample is the mean of a burst of back-to-back calls
(20 per layer, 5 per classifier, 2 per pose model): warm latency. Before timing the run waits
(``--wait-quiet`` seconds at most) for a 1-minute load average under 0.8 and records the load
and the busiest processes it found.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
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

from bench.common import RESULTS, block, interleaved_times, write_json
from mlpbnn import complexity, export, lowering, models, packed

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


def _random_variables(model: Any, size: int | tuple[int, int], seed: int = 0) -> dict[str, Any]:
    """Initial variables (an rbg key: threefry's makes a big model's init compile minutes) with
    random BatchNorm statistics, so that folding them is not the identity."""
    h, w = (size, size) if isinstance(size, int) else size
    x = jnp.zeros((1, h, w, 3), jnp.float32)
    init = jax.jit(functools.partial(model.init, **lowering.eval_kwargs(model)))
    v = init(jax.random.key(seed, impl="unsafe_rbg"), x)
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


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def _pads(v: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """An op's padding: an int (symmetric) or ((top, bottom), (left, right))."""
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v)), (int(v), int(v))
    return (int(v[0][0]), int(v[0][1])), (int(v[1][0]), int(v[1][1]))


class TorchProgram(torch.nn.Module):
    """A packed program (every op of the IR, ``mlpbnn.lowering``) in PyTorch float32: NCHW tensors
    in channels-last memory, binary ops as float ``conv2d`` / ``conv_transpose2d`` / matmul of
    sign(x) with the unpacked +-1 weights, their per-channel scale folded into the weights and
    their bias into the op's bias; weights prepared once. Asymmetric padding by ``F.pad`` (-inf
    for max pooling, the pad value for binary convs), PyTorch's crop for transposed convs,
    ``flatten`` in the program's NHWC order."""

    def __init__(self, program: dict[str, Any], arrays: dict[str, np.ndarray]):
        super().__init__()
        self.ops = program["ops"]
        self.input, self.output = program.get("input", "input"), program.get("output", "output")
        packed.check_program(program, arrays)

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.array(a, np.float32, order="C"))  # a writable copy

        t: dict[str, torch.Tensor] = {}
        for i, op in enumerate(self.ops):
            kind = op["op"]
            if kind in packed.BINARY_OPS:
                w = packed.unpack_weight_signs(arrays[op["bits"]], op.get("kernel_size", (1, 1)), op["in_channels"])
                w = w * np.asarray(arrays[op["scale"]], np.float32).reshape(-1)  # scale folded (per output channel)
                if kind == "binary_conv":
                    t[f"{i}.w"] = tensor(w.transpose(3, 2, 0, 1))  # HWIO -> OIHW
                elif kind == "binary_conv_transpose":
                    t[f"{i}.w"] = tensor(w.transpose(2, 3, 0, 1))  # scatter form (kh, kw, I, O) -> (I, O, kh, kw)
                else:
                    t[f"{i}.w"] = tensor(w[0, 0])  # (in, out): x @ W
                t[f"{i}.b"] = tensor(np.broadcast_to(arrays[op["bias"]], w.shape[-1:]))
            elif kind == "conv":
                t[f"{i}.w"] = tensor(arrays[op["kernel"]].transpose(3, 2, 0, 1))
            elif kind == "conv_transpose":
                t[f"{i}.w"] = tensor(arrays[op["kernel"]].transpose(2, 3, 0, 1))
            elif kind == "dense":
                t[f"{i}.w"], t[f"{i}.b"] = tensor(arrays[op["kernel"]]), tensor(arrays[op["bias"]])
            else:
                for f in ("scale", "bias", "slope"):
                    if f in op:
                        t[f"{i}.{f}"] = tensor(arrays[op[f]])
        self.t = t

    @staticmethod
    def _vec(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A per-channel (last axis, NHWC) array broadcast against ``like`` (NCHW, or (N, C))."""
        if like.ndim != 4:
            return a
        if a.ndim <= 1:
            return a.reshape(-1, 1, 1)
        return a.reshape((1,) * (4 - a.ndim) + tuple(a.shape)).permute(0, 3, 1, 2)

    @staticmethod
    def _sign(x: torch.Tensor, sign_zero: float) -> torch.Tensor:
        return torch.where(x >= 0 if sign_zero == 1.0 else x > 0, 1.0, -1.0)

    @staticmethod
    def _pad(x: torch.Tensor, padding: Any, value: float) -> torch.Tensor:
        (pt, pb), (pl, pr) = _pads(padding)
        return F.pad(x, (pl, pr, pt, pb), value=value) if any((pt, pb, pl, pr)) else x

    @staticmethod
    def _crop(y: torch.Tensor, padding: Any) -> torch.Tensor:
        (pt, pb), (pl, pr) = _pads(padding)
        return y[:, :, pt:y.shape[2] - pb, pl:y.shape[3] - pr]

    def _conv(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, strides: Any, padding: Any,
              value: float = 0.0) -> torch.Tensor:
        (pt, pb), (pl, pr) = _pads(padding)
        if value == 0.0 and (pt, pl) == (pb, pr):  # symmetric zero padding: conv2d's own
            return F.conv2d(x, w, b, tuple(strides), (pt, pl))
        return F.conv2d(self._pad(x, padding, value), w, b, tuple(strides))

    def _conv_transpose(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, strides: Any,
                        padding: Any) -> torch.Tensor:
        (pt, pb), (pl, pr) = _pads(padding)
        if (pt, pl) == (pb, pr):
            return F.conv_transpose2d(x, w, b, tuple(strides), (pt, pl))
        return self._crop(F.conv_transpose2d(x, w, b, tuple(strides)), padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        regs = {self.input: x}
        t = self.t
        cl = torch.channels_last
        for i, op in enumerate(self.ops):
            src = [regs[s] for s in op["src"]] if isinstance(op["src"], list) else regs[op["src"]]
            kind = op["op"]
            if kind == "conv":
                y = self._conv(src, t[f"{i}.w"], None, op["strides"], op["padding"])
            elif kind == "conv_transpose":
                y = self._conv_transpose(src, t[f"{i}.w"], None, op["strides"], op["padding"])
            elif kind == "binary_conv":
                y = self._conv(self._sign(src, op["sign_zero"]), t[f"{i}.w"], t[f"{i}.b"], op["strides"],
                               op["padding"], op["pad_value"])
            elif kind == "binary_conv_transpose":
                y = self._conv_transpose(self._sign(src, op["sign_zero"]), t[f"{i}.w"], t[f"{i}.b"], op["strides"],
                                         op["padding"])
            elif kind == "binary_dense":
                y = torch.addmm(t[f"{i}.b"], self._sign(src, op["sign_zero"]), t[f"{i}.w"])
            elif kind == "dense":
                y = torch.addmm(t[f"{i}.b"], src, t[f"{i}.w"])
            elif kind == "affine":
                y = src * self._vec(t[f"{i}.scale"], src) + self._vec(t[f"{i}.bias"], src)
            elif kind == "bias":
                y = src + self._vec(t[f"{i}.bias"], src)
            elif kind == "prelu":
                y = torch.where(src > 0, src, self._vec(t[f"{i}.slope"], src) * src)
            elif kind == "relu":
                y = F.relu(src)
            elif kind in ("maxpool", "avgpool"):
                window, strides = _pair(op["window"]), _pair(op["strides"])
                if kind == "maxpool":
                    y = F.max_pool2d(self._pad(src, op.get("padding", 0), -float("inf")), window, strides)
                else:  # zeros counted, as the program's
                    y = F.avg_pool2d(self._pad(src, op.get("padding", 0), 0.0), window, strides)
            elif kind == "global_avg_pool":
                y = src.mean(dim=(2, 3), keepdim=bool(op.get("keepdims", False)))
            elif kind == "add":
                y = src[0] + src[1]
            elif kind == "concat":
                y = torch.cat(src, dim=1)
            elif kind == "upsample":
                fh, fw = op["factors"]  # nearest: each pixel an fh x fw block (one copy, exact)
                n, c, h, w = src.shape
                y = src[:, :, :, None, :, None].expand(n, c, h, fh, w, fw).reshape(n, c, h * fh, w * fw)
            elif kind == "channel_mean":
                g = op["group"]
                n, c, h, w = src.shape
                y = src.reshape(n, c // g, g, h, w).mean(dim=2)
            elif kind == "channel_repeat":
                y = src.repeat_interleave(op["factor"], dim=1)
            elif kind == "flatten":  # the program's NHWC order
                y = (src.permute(0, 2, 3, 1) if src.ndim == 4 else src).reshape(src.shape[0], -1)
            else:
                raise ValueError(f"op {i}: {kind!r} has no PyTorch form here")
            if y.ndim == 4 and not y.is_contiguous(memory_format=cl):
                y = y.contiguous(memory_format=cl)
            regs[op["dst"]] = y
        y = regs[self.output]
        return y.permute(0, 2, 3, 1) if y.ndim == 4 else y  # NHWC, as the program's


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


# ------------------------------------------------------------------------------------------- pose models

ROOT = Path(__file__).resolve().parent.parent
LCE_PYTHON = ROOT / ".venv-lce" / "bin" / "python"
# label -> (zoo name, options)
POSE_MODELS = {"sbpn_resnet18": ("sbpn_resnet18", {}), "bhrnet_w32": ("bhrnet_w32", {"binary_fuse": False}),
               "bhrnet_w32_fuse": ("bhrnet_w32", {"binary_fuse": True})}
BURST_POSE_B1 = 2  # back-to-back calls per sample at batch 1


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def busy_processes(limit: int = 5) -> list[str]:
    """The top CPU users now (``ps``), this process and its children excluded."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,ppid,pcpu,etime,args", "--sort=-pcpu", "--no-headers"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    me = os.getpid()
    rows = []
    for line in out.splitlines():
        pid, ppid, pcpu, etime, args = (line.split(None, 4) + [""])[:5]
        if int(pid) in (me,) or int(ppid) == me or float(pcpu) < 5:
            continue
        rows.append(f"{pcpu}% {etime} {args[:100]}")
    return rows[:limit]


def wait_quiet(max_s: float, threshold: float = 0.8) -> dict[str, Any]:
    """Waits (up to ``max_s``) until the 1-minute load average is below ``threshold`` and no other
    process uses a core: nothing heavy (another pytest, a training run) shares the 2 cores."""
    t0 = time.perf_counter()
    while True:
        load, busy = load_average(), busy_processes()
        quiet = load[0] < threshold and not any(float(b.split("%")[0]) > 50 for b in busy)
        if quiet or time.perf_counter() - t0 >= max_s:
            return {"quiet": quiet, "waited_s": round(time.perf_counter() - t0, 1), "load_average": load,
                    "busy_processes": busy}
        print(f"waiting for a quiet machine: load {load}, busy: {busy[:2]}", flush=True)
        time.sleep(30)


def lce_status() -> tuple[bool, str]:
    """(usable, why): LCE's x86 interpreter through ``.venv-lce`` and ``python -m mlpbnn.lce bench``."""
    if not LCE_PYTHON.exists():
        return False, f"{LCE_PYTHON.relative_to(ROOT)} does not exist (make lce-env builds it)"
    if not (ROOT / "mlpbnn" / "lce.py").exists():
        return False, "mlpbnn/lce.py does not exist"
    for args in (["-m", "mlpbnn.lce", "bench", "--help"], ["-c", "import larq_compute_engine, tensorflow"]):
        try:
            r = subprocess.run([str(LCE_PYTHON), *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        except (OSError, subprocess.SubprocessError) as e:
            return False, f"{' '.join(args)}: {e}"
        if r.returncode:
            return False, f"`.venv-lce/bin/python {' '.join(args)}` failed: {(r.stderr or r.stdout).strip()[-300:]}"
    return True, "larq_compute_engine's Python interpreter (x86-64 build), in a subprocess"


def _lce(*args: str, timeout: float = 1800) -> dict[str, Any]:
    """``.venv-lce/bin/python -m mlpbnn.lce ARGS``: its JSON line (stdout's last), or an error."""
    r = subprocess.run([str(LCE_PYTHON), "-m", "mlpbnn.lce", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode or not lines:
        raise RuntimeError(f"mlpbnn.lce {args[0]} failed (rc {r.returncode}): {(r.stderr or r.stdout).strip()[-500:]}")
    return json.loads(lines[-1])


def _compile(net: packed.PackedNetwork, x: jax.Array) -> tuple[Callable[[], Any], float]:
    """(a zero-argument call of the network's compiled program on ``x``, seconds to trace and
    compile it): ahead of time, so the compile is measured apart from the first run."""
    t0 = time.perf_counter()
    compiled = net._fn.lower(net.arrays, x).compile()
    return (lambda c=compiled, a=net.arrays: c(a, x)), time.perf_counter() - t0


def bench_pose(labels: list[str], hw: tuple[int, int], batches: list[int], rounds: int, layouts: list[str],
               lce_rounds: int, workdir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pose models end to end (random weights, random BN statistics), as ``bench_models``: the
    candidates in interleaved rounds in this process, LCE's interpreter (its own process) between
    the rounds; returns (rows, LCE's status)."""
    h, w = hw
    spec = {"height": h, "width": w, "channels": 3}
    lce_ok, lce_why = lce_status()
    print(f"lce: {'yes' if lce_ok else 'skipped'}: {lce_why}", flush=True)
    rows = []
    for label in labels:
        name, kw = POSE_MODELS[label]
        model = models.create(name, **kw)
        t0 = time.perf_counter()
        v = _random_variables(model, (h, w))
        t1 = time.perf_counter()
        program, arrays = export.build(v, name, kw, spec)
        t2 = time.perf_counter()
        export_dir = workdir / label
        if export_dir.exists():
            shutil.rmtree(export_dir)
        sizes = export.save(export_dir, program, arrays, {"input_spec": spec})
        report = complexity.count(model, (h, w, 3), name=label).totals()
        f32 = export.float32_size(v)
        kinds: dict[str, int] = {}
        for op in program["ops"]:
            kinds[op["op"]] = kinds.get(op["op"], 0) + 1
        print(f"{label}: init {t1 - t0:.1f} s, export.build {t2 - t1:.1f} s; {len(program['ops'])} ops {kinds}; "
              f"{report['ops'] / 1e9:.3f} G OPs ({report['flops'] / 1e9:.3f} G FLOPs + {report['bops'] / 1e9:.3f} G "
              f"BOPs / 64); export {sizes['total'] / 2**20:.2f} MiB, float32 {f32 / 2**20:.2f} MiB", flush=True)
        nets = {("packed" if lay == "direct" else f"packed_{lay}"): packed.PackedNetwork(program, arrays, layout=lay)
                for lay in layouts}
        nets["xla_float"] = packed.PackedNetwork(program, arrays, binary="float")
        t3 = time.perf_counter()
        tprog = TorchProgram(program, arrays).eval()
        torch_setup = time.perf_counter() - t3
        for batch in batches:
            x = np.random.default_rng(batch).standard_normal((batch, h, w, 3)).astype(np.float32)
            xj = jnp.asarray(x)
            xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).contiguous(
                memory_format=torch.channels_last)
            fns: dict[str, Callable[[], Any]] = {}
            compile_s: dict[str, float] = {}
            for k, net in nets.items():
                fns[k], compile_s[k] = _compile(net, xj)
                print(f"   b={batch} compiled {k} in {compile_s[k]:.1f} s", flush=True)
            for threads, key in ((1, "torch_1t"), (2, "torch_2t")):
                fns[key] = _torch(lambda m=tprog, a=xt: m(a), threads)
            first_s = {}
            outs = {}
            for k, f in fns.items():
                t = time.perf_counter()
                outs[k] = np.asarray(block(f()))
                first_s[k] = time.perf_counter() - t
            compile_s["torch"] = torch_setup + first_s["torch_1t"]
            lce_call = None
            lce_info: dict[str, Any] = {}
            if lce_ok:
                tfl = workdir / f"{label}_b{batch}.tflite"
                try:
                    t = time.perf_counter()
                    conv = _lce("convert", str(export_dir), str(tfl), "--batch", str(batch))
                    compile_s["lce_convert"] = time.perf_counter() - t
                    np.save(workdir / "x.npy", x)
                    _lce("run", str(tfl), str(workdir / "x.npy"), str(workdir / "y.npy"))
                    outs["lce"] = np.load(workdir / "y.npy")
                    lce_info = {"tflite_bytes": conv.get("bytes"), "lce_ops": conv.get("lce_ops"),
                                "runtime": None}
                    print(f"   b={batch} LCE: converted in {compile_s['lce_convert']:.1f} s (subprocess, TensorFlow "
                          f"import included), {conv.get('bytes', 0) / 2**20:.2f} MiB, {conv.get('lce_ops')}",
                          flush=True)

                    def lce_call(tfl=tfl, batch=batch, info=lce_info) -> list[float]:
                        r = _lce("bench", str(tfl), "--batch", str(batch), "--threads", "1", "--rounds",
                                 str(lce_rounds), "--warmup", "1")
                        info["runtime"] = r.get("runtime")
                        return list(r["times_s"])
                except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                    lce_info = {"error": str(e)[-500:]}
                    print(f"   b={batch} LCE failed: {str(e)[-300:]}", flush=True)
            ref = outs["xla_float"]
            diff = {k: float(np.abs(o - ref).max()) for k, o in outs.items()}
            rel = {k: d / float(np.abs(ref).max()) for k, d in diff.items()}
            # The heatmaps' peaks (argmax per joint) as a coarse agreement.
            peaks = {k: float(np.mean(o.reshape(batch, -1, o.shape[-1]).argmax(1)
                                      == ref.reshape(batch, -1, ref.shape[-1]).argmax(1))) for k, o in outs.items()}
            load0 = load_average()
            t0 = time.perf_counter()
            times, lce_times = timed_rounds(fns, rounds, BURST_POSE_B1 if batch == 1 else 1, lce_call)
            if lce_times:
                times["lce"] = lce_times
            t, ms = _stats(times)
            row = {"model": label, "zoo_name": name, "options": kw, "batch": batch, "input": [h, w, 3],
                   "output_shape": list(ref.shape[1:]), **ms,
                   "speedup_of_packed": {k: s / t["packed"] for k, s in t.items()},
                   "speedup_over_xla_float": {k: t["xla_float"] / s for k, s in t.items()},
                   "max_abs_diff_vs_xla_float": diff, "max_abs_diff_rel_vs_xla_float": rel,
                   "peak_agreement_with_xla_float": peaks, "compile_s": compile_s, "first_call_s": first_s,
                   "samples": {k: len(v) for k, v in times.items()},
                   "export_bytes": sizes["total"], "float32_bytes": f32,
                   "flops": report["flops"], "bops": report["bops"], "ops": report["ops"], "program_ops": kinds,
                   "load_average_before": load0, "load_average_after": load_average(),
                   "seconds": time.perf_counter() - t0}
            if lce_ok:
                row["lce"] = lce_info
            rows.append(row)
            print(f"{label} b={batch}: " + "  ".join(f"{k} {s * 1e3:.1f} ms" for k, s in t.items())
                  + f"   ({time.perf_counter() - t0:.0f} s; load {load0} -> {row['load_average_after']})", flush=True)
            print(f"   packed is {t['xla_float'] / t['packed']:.2f}x float XLA, {t['torch_1t'] / t['packed']:.2f}x "
                  f"PyTorch 1 thread, {t['torch_2t'] / t['packed']:.2f}x PyTorch 2 threads"
                  + (f", {t['lce'] / t['packed']:.2f}x LCE" if "lce" in t else "")
                  + "; max |diff| vs float XLA: " + ", ".join(f"{k} {d:.1e}" for k, d in diff.items()), flush=True)
    return rows, {"available": lce_ok, "reason": lce_why}


def timed_rounds(fns: dict[str, Callable[[], Any]], rounds: int, burst: int,
                 other: Callable[[], list[float]] | None = None) -> tuple[dict[str, list[float]], list[float]]:
    """``interleaved`` one round at a time, with ``other`` (LCE's subprocess: its own warm-up and
    calls, the samples it returns) between the rounds, so slow drifts of the machine's load hit
    both alike."""
    for f in fns.values():
        block(f())
    times: dict[str, list[float]] = {k: [] for k in fns}
    extra: list[float] = []
    for _ in range(rounds):
        for k, v in interleaved(fns, 1, warmup=0, burst=burst).items():
            times[k] += v
        if other is not None:
            time.sleep(PAUSE_S)
            extra += other()
    return times, extra


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


def plot_ops(nets: list[dict[str, Any]], pose: list[dict[str, Any]], path: Path) -> None:
    """Latency at batch 1 against operations per image, every model end to end: packed against
    FLOPs + BOPs/64 (filled), the same program's float XLA against FLOPs + BOPs (hollow), joined."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{r['model']} {r['size']}x{r['size']}", r) for r in nets if r["batch"] == 1]
    rows += [(f"{r['model']} {r['input'][0]}x{r['input'][1]}", r) for r in pose if r["batch"] == 1]
    fig, ax = plt.subplots(figsize=(8.5, 5.8))
    placed: list[tuple[float, float]] = []  # labels' (log x, log y + offset): stagger close ones
    for i, (label, r) in enumerate(sorted(rows, key=lambda lr: lr[1]["ms"]["packed"])):
        color = f"C{i % 10}"
        xp, yp = r["ops"] / 1e9, r["ms"]["packed"]
        xf, yf = (r["flops"] + r["bops"]) / 1e9, r["ms"]["xla_float"]
        ax.plot([xp, xf], [yp, yf], color=color, lw=0.7, ls=":")
        ax.scatter([xp], [yp], color=color, marker="o", s=40, zorder=3)
        ax.scatter([xf], [yf], facecolors="none", edgecolors=color, marker="o", s=40, zorder=3)
        lx, ly, dy = np.log10(xp), np.log10(yp), -8.0
        while any(abs(lx - px) < 0.3 and abs(ly + dy / 200 - py) < 0.08 for px, py in placed):
            dy += 12.0
        placed.append((lx, ly + dy / 200))
        ax.annotate(f"{label}: {yp:.1f} ms ({yf / yp:.1f}x float)", (xp, yp), textcoords="offset points",
                    xytext=(7, dy), fontsize=7.5, color=color)
    ax.scatter([], [], color="gray", marker="o", label="packed (XNOR-popcount): x = FLOPs + BOPs/64")
    ax.scatter([], [], facecolors="none", edgecolors="gray", marker="o",
               label="same program, float XLA: x = FLOPs + BOPs")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks([0.1, 0.2, 0.5, 1, 2, 5, 10])
    ax.set_yticks([5, 10, 20, 50, 100, 200])
    ax.set_xlabel("operations per image (G)")
    ax.set_ylabel("latency, batch 1 (ms, median)")
    ax.set_title("end to end at batch 1 on this CPU: classifiers and pose models")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(data: dict[str, Any]) -> str:
    """The pose table (and the classifiers' batch-1 rows) of a ``latency.json`` as markdown."""
    def ms(r: dict[str, Any], k: str) -> str:
        v = r["ms"].get(k)
        return "-" if v is None else (f"{v:.1f}" if v < 100 else f"{v:.0f}")

    def ratio(r: dict[str, Any], k: str) -> str:
        return f"{r['ms'][k] / r['ms']['packed']:.1f}x" if k in r["ms"] else "-"

    head = ("| model | input | batch | OPs (G) | packed ms | xla_float ms | torch 1t / 2t ms | lce ms | packed vs "
            "xla_float / torch 1t / torch 2t / lce | export MiB / float32 MiB |\n" + "|---" * 10 + "|")
    lines = [head]
    for r in data.get("pose", []):
        lines.append(f"| {r['model']} | {r['input'][0]}x{r['input'][1]} | {r['batch']} | {r['ops'] / 1e9:.3f} | "
                     f"{ms(r, 'packed')} | {ms(r, 'xla_float')} | {ms(r, 'torch_1t')} / {ms(r, 'torch_2t')} | "
                     f"{ms(r, 'lce')} | {ratio(r, 'xla_float')} / {ratio(r, 'torch_1t')} / {ratio(r, 'torch_2t')} / "
                     f"{ratio(r, 'lce')} | {r['export_bytes'] / 2**20:.2f} / {r['float32_bytes'] / 2**20:.1f} |")
    for r in data.get("models", []):
        if r["batch"] == 1:
            lines.append(f"| {r['model']} | {r['size']}x{r['size']} | 1 | {r['ops'] / 1e9:.3f} | {ms(r, 'packed')} | "
                         f"{ms(r, 'xla_float')} | {ms(r, 'torch_1t')} / {ms(r, 'torch_all')} | - | "
                         f"{ratio(r, 'xla_float')} / {ratio(r, 'torch_1t')} / {ratio(r, 'torch_all')} / - | "
                         f"{r['export_bytes'] / 2**20:.2f} / {r['float32_bytes'] / 2**20:.1f} |")
    comp = ["", "| model | batch | packed | packed_blocked | xla_float | torch (setup + first call) | lce convert |",
            "|---|---|---|---|---|---|---|"]
    for r in data.get("pose", []):
        c = r.get("compile_s", {})
        comp.append(f"| {r['model']} | {r['batch']} | " + " | ".join(
            f"{c[k]:.1f} s" if k in c else "-" for k in ("packed", "packed_blocked", "xla_float", "torch",
                                                          "lce_convert")) + " |")
    return "\n".join(lines + comp) + "\n"


def _merge(old: list[dict[str, Any]], new: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """``old`` rows with those that ``new`` measures again replaced (same ``keys``), new ones added."""
    ident = {tuple(str(r.get(k)) for k in keys) for r in new}
    return [r for r in old if tuple(str(r.get(k)) for k in keys) not in ident] + new


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--layer-rounds", type=int, default=7)
    p.add_argument("--models", default="bireal_resnet18,bireal_resnet34")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--quick", action="store_true",
                   help="64x64, batch 1, ResNet-18, pose at 64x64, 2 rounds (a smoke test; writes latency_quick.*)")
    p.add_argument("--skip-layers", action="store_true", help="no per-layer table (the JSON keeps the last one)")
    p.add_argument("--skip-models", action="store_true", help="no classifier table (the JSON keeps the last one)")
    p.add_argument("--pose-only", action="store_true", help="the pose section alone (= --skip-layers --skip-models)")
    p.add_argument("--no-pose", action="store_true", help="no pose section (the JSON keeps the last one)")
    p.add_argument("--pose-models", default=",".join(POSE_MODELS), help=f"of {', '.join(POSE_MODELS)}")
    p.add_argument("--pose-batches", default="1,8")
    p.add_argument("--pose-input", default="256x192", help="H x W")
    p.add_argument("--pose-rounds", type=int, default=5)
    p.add_argument("--pose-layouts", default="direct,blocked", help="packed layouts timed ('direct' is 'packed')")
    p.add_argument("--lce-rounds", type=int, default=2, help="LCE calls timed per round (one subprocess per round)")
    p.add_argument("--wait-quiet", type=float, default=900, help="seconds to wait for a quiet machine first")
    p.add_argument("--out", default="latency")
    p.add_argument("--markdown", action="store_true", help="print the tables of the JSON as markdown; run nothing")
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads((RESULTS / f"{args.out}.json").read_text())), end="")
        return
    if args.quick:
        args.out = "latency_quick" if args.out == "latency" else args.out  # never over the real results
        args.size, args.batches, args.models, args.rounds, args.layer_rounds = 64, "1", "bireal_resnet18", 2, 2
        args.pose_input, args.pose_batches, args.pose_rounds, args.lce_rounds = "64x64", "1", 2, 1
    if args.pose_only:
        args.skip_layers = args.skip_models = True
    batches = [int(b) for b in args.batches.split(",")]
    path = RESULTS / f"{args.out}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    t0 = time.perf_counter()
    quiet = wait_quiet(args.wait_quiet)
    print(f"machine: load {quiet['load_average']}, quiet {quiet['quiet']} (waited {quiet['waited_s']} s); "
          f"busy: {quiet['busy_processes']}", flush=True)
    layers = old.get("layers", []) if args.skip_layers else bench_layers(args.size, batches, args.layer_rounds)
    nets = old.get("models", [])
    if not args.skip_models:
        nets = _merge(nets, bench_models(args.models.split(","), args.size, batches, args.rounds),
                      ("model", "batch", "size"))
    pose, pose_meta = old.get("pose", []), old.get("pose_run", {})
    if not args.no_pose:
        h, w = (int(s) for s in args.pose_input.lower().split("x"))
        load0 = load_average()
        tp = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            rows, lce = bench_pose(args.pose_models.split(","), (h, w), [int(b) for b in args.pose_batches.split(",")],
                                   args.pose_rounds, args.pose_layouts.split(","), args.lce_rounds, Path(d))
        pose = _merge(pose, rows, ("model", "batch", "input"))
        pose_meta = {"command": "python -m bench.latency " + " ".join(argv if argv is not None else sys.argv[1:]),
                     "lce": lce, "lce_note": "LCE is timed in its own process (python -m mlpbnn.lce bench, 1 thread), "
                     "one subprocess between each round of the in-process candidates",
                     "load_average_before": load0, "load_average_after": load_average(),
                     "quiet_check": quiet, "seconds": time.perf_counter() - tp,
                     "torch_threads": [1, 2], "burst_batch1": BURST_POSE_B1}
    load = os.getloadavg()
    out = write_json(args.out, {**{k: v for k, v in old.items() if k != "machine"},
                                "args": vars(args), "torch": torch.__version__, "threads_all": ALL_THREADS,
                                "load_average_at_end": load, "seconds": time.perf_counter() - t0,
                                "layers": layers, "models": nets, "pose": pose, "pose_run": pose_meta})
    if layers and nets:
        plot(layers, nets, RESULTS / f"{args.out}.png")
    plot_ops(nets, pose, RESULTS / f"{args.out}_ops.png")
    print(f"wrote {out}, {RESULTS / (args.out + '.png')} and {RESULTS / (args.out + '_ops.png')} in "
          f"{time.perf_counter() - t0:.0f} s; load average at the end {[round(v, 2) for v in load]}")


if __name__ == "__main__":
    main()
