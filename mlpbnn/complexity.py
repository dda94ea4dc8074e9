"""Operation counts, parameters by bit width and model size, counted from the model itself.

The model is traced once (``jax.eval_shape`` of ``init`` on one image) with every layer call
intercepted, so the counts follow whatever the module does, not a hand-written table.

Conventions (Bi-Real, ReActNet and the BBC paper; ReActNet#19/#23):
- FLOPs: multiply-accumulates of real-valued convolutions and dense layers; a transposed
  convolution counts its true MACs, C_in C_out k^2 per *input* pixel (every input pixel scatters
  one k x k x C_out kernel; HRNet-pt's ``get_model_summary`` multiplies by the output size and
  counts SimpleBaseline's stride-2 deconvolutions 4x);
- BOPs: MACs of binary layers, those whose inputs *and* weights are binarized;
  a layer with only one binary operand cannot use XNOR-popcount and counts as FLOPs;
- OPs = FLOPs + BOPs / 64.
Norms, activations and pooling are not counted unless ``count_elementwise=True`` (then BN 2 ops
per output element, PReLU and learnable biases 1, RPReLU 3, pooling one per window element).
Parameters are split by bit width: binarized kernels are 1-bit, everything else 32-bit; BN
running statistics are buffers, not parameters (as in torchvision's counts). Model size counts
1-bit parameters at 1 bit. The learnable estimator's theta is needed only for training and is
reported apart.

    python -m mlpbnn.complexity bireal_resnet18 [--image-size 224 | --input 256x192] [--elementwise]
    python -m mlpbnn.complexity simple_baseline_resnet50 sbpn_resnet18 sbpn_resnet18:head=real --input 256x192
    python -m mlpbnn.complexity hrnet_w32 bhrnet_w32 bhrnet_w32:binary_fuse=True --input 256x192

A model is ``NAME`` or ``NAME:key=value,...`` (options of ``models.create``; a value may be a
tuple, ``hrnet_w32:width=8,stage_modules=(1,1,1)``); several models print one Markdown row of
totals each (``--markdown`` does so for one).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import re
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlpbnn import layers as L

ELEMENTWISE_OPS = {L.PReLU: 1, L.LearnableBias: 1, L.RPReLU: 3, L.BatchNorm: 2, nn.BatchNorm: 2}


@dataclasses.dataclass
class Layer:
    path: str
    kind: str
    input_bits: int
    output_shape: tuple[int, ...]
    params_1bit: int = 0
    params_32bit: int = 0
    binary_macs: int = 0
    real_macs: int = 0
    elementwise: int = 0


@dataclasses.dataclass
class Report:
    model: str
    input_shape: tuple[int, ...]
    layers: list[Layer]
    training_only_params: int
    count_elementwise: bool

    @property
    def flops(self) -> int:
        return sum(x.real_macs for x in self.layers) + (self.elementwise if self.count_elementwise else 0)

    @property
    def elementwise(self) -> int:
        return sum(x.elementwise for x in self.layers)

    @property
    def bops(self) -> int:
        return sum(x.binary_macs for x in self.layers)

    @property
    def ops(self) -> float:
        return self.flops + self.bops / 64

    @property
    def params_1bit(self) -> int:
        return sum(x.params_1bit for x in self.layers)

    @property
    def params_32bit(self) -> int:
        return sum(x.params_32bit for x in self.layers)

    @property
    def params(self) -> int:
        return self.params_1bit + self.params_32bit

    @property
    def size_bytes(self) -> float:
        return self.params_1bit / 8 + self.params_32bit * 4

    def totals(self) -> dict[str, Any]:
        macs = self.bops + sum(x.real_macs for x in self.layers)
        return {"model": self.model, "input_shape": list(self.input_shape), "flops": self.flops,
                "bops": self.bops, "ops": self.ops, "params": self.params, "params_1bit": self.params_1bit,
                "params_32bit": self.params_32bit, "training_only_params": self.training_only_params,
                "size_bytes": self.size_bytes, "fp32_size_bytes": self.params * 4,
                "compression": self.params * 4 / self.size_bytes,
                "binarized_mac_ratio": self.bops / macs if macs else 0.0,
                "count_elementwise": self.count_elementwise}

    def table(self) -> str:
        head = (f"{'layer':<34} {'kind':<13} {'in bits':>7} {'output':>15} {'1-bit par':>10} "
                f"{'32-bit par':>10} {'kB':>9} {'binary MACs':>12} {'real MACs':>12}")
        rows = [head, "-" * len(head)]
        for x in self.layers:
            kb = (x.params_1bit / 8 + x.params_32bit * 4) / 1024
            rows.append(f"{x.path:<34} {x.kind:<13} {x.input_bits:>7} {'x'.join(map(str, x.output_shape)):>15} "
                        f"{x.params_1bit:>10,} {x.params_32bit:>10,} {kb:>9.1f} {x.binary_macs:>12,} "
                        f"{x.real_macs:>12,}")
        t = self.totals()
        rows += ["-" * len(head),
                 f"input {'x'.join(map(str, self.input_shape))}; totals per image:",
                 f"  FLOPs (real MACs{' + elementwise' if self.count_elementwise else ''}) {t['flops']:.4g}",
                 f"  BOPs (binary MACs)                 {t['bops']:.4g}",
                 f"  OPs = FLOPs + BOPs/64              {t['ops']:.4g}",
                 f"  params {t['params']:,} (1-bit {t['params_1bit']:,}, 32-bit {t['params_32bit']:,}); "
                 f"training-only estimator params {t['training_only_params']:,}",
                 f"  model size {t['size_bytes'] / 2**20:.2f} MiB (float32: {t['fp32_size_bytes'] / 2**20:.2f} MiB, "
                 f"{t['compression']:.1f}x); binarized MACs {t['binarized_mac_ratio']:.1%}"]
        return "\n".join(rows)


def _size(tree: Any) -> int:
    return sum(math.prod(a.shape) for a in jax.tree.leaves(tree))


_CONVS = (L.BinaryConv, L.BinaryConvTranspose, L.BinaryDense, nn.Conv, nn.ConvTranspose, nn.Dense)
_TRANSPOSED = (L.BinaryConvTranspose, nn.ConvTranspose)
_COUNTED = (*_CONVS, L.MaxPool, L.AvgPool, L.GlobalAvgPool,
            *ELEMENTWISE_OPS)


def _record(module: nn.Module, x: Any, y: Any) -> Layer | None:
    if not isinstance(module, _COUNTED):  # containers (blocks, backbones, heads) return other things
        return None
    path = "/".join(module.path) if module.path else type(module).__name__
    out = tuple(y.shape[1:])
    n_out = math.prod(out)
    params = module.variables.get("params", {})
    if isinstance(module, _CONVS):
        kernel = params["kernel"]
        if isinstance(module, _TRANSPOSED):  # per input pixel: the whole (kh, kw, C_in, C_out) kernel
            macs = math.prod(x.shape[1:-1]) * kernel.size
        else:  # per output pixel: (kh, kw, C_in)
            macs = n_out * math.prod(kernel.shape[:-1])
        spec = getattr(module, "spec", None)  # a binary layer's BinarySpec; nn.Conv's have none
        binary_weights = spec is not None and spec.weights is not None
        binary_inputs = spec is not None and spec.inputs is not None
        other = _size(params) - kernel.size
        layer = Layer(path, type(module).__name__, 1 if binary_inputs else 32, out,
                      params_1bit=kernel.size if binary_weights else 0,
                      params_32bit=other + (0 if binary_weights else kernel.size))
        if binary_weights and binary_inputs:
            layer.binary_macs = macs
        else:
            layer.real_macs = macs
        return layer
    for cls, ops in ELEMENTWISE_OPS.items():
        if isinstance(module, cls):
            return Layer(path, type(module).__name__, 32, out, params_32bit=_size(params), elementwise=ops * n_out)
    if isinstance(module, L.MaxPool | L.AvgPool):
        return Layer(path, type(module).__name__, 32, out, elementwise=module.window ** 2 * n_out)
    if isinstance(module, L.GlobalAvgPool):
        return Layer(path, "GlobalAvgPool", 32, out, elementwise=math.prod(x.shape[1:]))
    return None


def count(model: nn.Module, input_shape: tuple[int, ...], *, name: str = "",
          count_elementwise: bool = False) -> Report:
    """Counts ``model`` on one input of ``input_shape`` (H, W, C), by tracing its ``init``."""
    layers: list[Layer] = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and args:
            layer = _record(context.module, args[0], out)
            # A layer that ``mlpbnn.binarize`` replaced is called as its binary twin at the same
            # path, which finishes first: keep that record, not the replaced layer's.
            if layer is not None and all(other.path != layer.path for other in layers):
                layers.append(layer)
        return out

    with nn.intercept_methods(interceptor):
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *input_shape)), train=False))
    return Report(name or type(model).__name__, tuple(input_shape), layers,
                  _size(variables.get(L.ESTIMATOR_COLLECTION, {})), count_elementwise)


def parse_model(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME:key=value,...`` -> (name, options); values are Python literals or strings."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, re.split(r",(?![^()\[\]]*[)\]])", rest)):  # not the commas inside (...) or [...]
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"model option {item!r} in {spec!r} is not key=value")
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()
    return name, options


def parse_input(text: str) -> tuple[int, int]:
    """``HxW`` (height first, as the configs' (256, 192)) or one size for a square."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"input must be HEIGHTxWIDTH (e.g. 256x192) or one size, got {text!r}")
    return (int(parts[0]), int(parts[-1]))


def markdown(reports: list[tuple[str, Report]]) -> str:
    """One row of totals per model: params, FLOPs, BOPs, OPs, size at 1-bit binary weights."""
    rows = ["| model | input | params | 1-bit params | FLOPs | BOPs | OPs = FLOPs + BOPs/64 | size (MiB) |",
            "|---|---|---|---|---|---|---|---|"]
    for label, r in reports:
        t = r.totals()
        rows.append(f"| {label} | {r.input_shape[0]}x{r.input_shape[1]} | {t['params']:,} | {t['params_1bit']:,} "
                    f"| {t['flops'] / 1e9:.3f} G | {t['bops'] / 1e9:.3f} G | {t['ops'] / 1e9:.3f} G "
                    f"| {t['size_bytes'] / 2**20:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    from mlpbnn import models

    parser = argparse.ArgumentParser(description="Per-layer complexity summary of mlpbnn models.")
    parser.add_argument("model", nargs="+",
                        help=f"NAME or NAME:key=value,...; NAME one of: {', '.join(models.names())}")
    parser.add_argument("--image-size", type=int, default=224, help="square input size")
    parser.add_argument("--input", default=None, help="HEIGHTxWIDTH, e.g. 256x192 (overrides --image-size)")
    parser.add_argument("--num-classes", type=int, default=None, help="classifiers (default 1000)")
    parser.add_argument("--num-joints", type=int, default=None, help="heatmap models (default 17)")
    parser.add_argument("--small-inputs", action="store_true", help="3x3 stride-1 stem, no max-pool")
    parser.add_argument("--elementwise", action="store_true", help="also count norms, activations, pooling")
    parser.add_argument("--json", action="store_true", help="print the totals as JSON instead of the table")
    parser.add_argument("--markdown", action="store_true", help="one Markdown row of totals per model")
    args = parser.parse_args(argv)
    reports = []
    try:
        height, width = parse_input(args.input) if args.input else (args.image_size, args.image_size)
        for spec in args.model:
            name, options = parse_model(spec)
            head = {k: v for k, v in (("num_classes", args.num_classes), ("num_joints", args.num_joints))
                    if v is not None}
            model = models.create(name, **head, **options, **({"small_inputs": True} if args.small_inputs else {}))
            reports.append((spec, count(model, (height, width, 3), name=spec, count_elementwise=args.elementwise)))
    except ValueError as e:
        sys.exit(f"error: {e}")
    if args.json:
        totals = [r.totals() for _, r in reports]
        print(json.dumps(totals[0] if len(totals) == 1 else totals, indent=2))
    elif args.markdown or len(reports) > 1:
        print(markdown(reports))
    else:
        print(reports[0][1].table())


if __name__ == "__main__":
    main()
