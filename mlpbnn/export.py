"""Export a trained binary network as a bit-packed inference program.

    python -m mlpbnn.export VARIABLES_DIR OUT_DIR [--dataset NAME] [--image-size N] [--overwrite]

reads a variables checkpoint (a run's ``workdir/variables`` or ``python -m mlpbnn.convert``'s
output) and writes OUT_DIR with

- ``weights.npz``: the arrays: binary weights as uint32 words (32 input channels per word, bit 1
  for -1: ``mlpbnn.packed.pack_weight_signs``), per-channel float32 scale and bias of each binary
  conv (its weight scale alpha and the following BatchNorm folded together), and the real layers
  (stem, shortcuts, classifier, folded BatchNorms, PReLU slopes, LearnableBias shifts) in float32;
- ``model.json``: the program (``mlpbnn.packed``'s ops), the input spec (image size, channels,
  normalisation, resizing) and the sizes.

The directory is written beside OUT_DIR under a temporary name and renamed into place, so a
reader sees either the old export or the complete new one.

What is exported, per binary conv (XNOR-Net, Rastegari et al., arXiv 1603.05279; Bi-Real Net,
Liu et al., arXiv 1808.00278; BBC, He et al., arXiv 2205.07433): the +-1 weights exactly as the
float model computes them (``mlpbnn.layers.weight_signs``: the layer's weight normalisation and its
estimator's forward, sign(0) included), alpha from the layer's ``weight_norm``/``weight_scale``,
and y = acc * (alpha * gamma / sqrt(var + eps)) + (beta - mean * gamma / sqrt(var + eps)) for the
integer acc = conv(sign(x), sign(w)). The learnable estimators are training-time objects and are
not exported: their forward is ``sign``. An estimator whose forward is not a sign (the argmax
``classifier``) is refused, as are real-valued binary-layer inputs or weights (stage one of
two-stage training) and sign(0) = 0 on activations (no one-bit code). Thresholds instead of
affines are not possible here: in Bi-Real blocks the BatchNorm output is added to a real shortcut
before the next sign.

Supported models: the binary ResNets of ``mlpbnn.models`` (variants 'bireal' and 'reactnet', any
stage sizes and width, ImageNet or small-input stem) with the classifier head.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mlpbnn import data, estimators, layers, models, packed
from mlpbnn.conv import explicit_padding

FORMAT = "mlpbnn-packed"
VERSION = 1
PROGRAM = "model.json"
ARRAYS = "weights.npz"
BN_EPSILON = 1e-5  # mlpbnn.models' BatchNorm epsilon (PyTorch's), used when a module does not say


class ExportError(ValueError):
    """The model or checkpoint cannot be exported; the message says why."""


# ------------------------------------------------------------------------------------------- input spec


def input_datasets() -> list[str]:
    """The registered datasets with an input preprocessing for export (``--dataset`` presets)."""
    return [n for n in data.names() if data.DATASETS.get(n).input_spec is not None]


def input_spec(dataset: str, image_size: int | None = None, eval_resize: int = 256,
               resize_method: str = "bilinear") -> dict[str, Any]:
    """How images are turned into the network's input, as the training data was:
    ``x = (pixel / 255 - mean) / std`` per channel after resizing, from the dataset's
    registration (``mlpbnn.data``: its ``input_spec``), e.g. digits' 8x8 grayscale with 0..16 ->
    v / 8 - 1, ImageNet's shorter side to ``round(image_size * eval_resize / 224)`` and a centre
    crop. ``image_size``, ``eval_resize`` and ``resize_method`` set those fields of the dataset's
    section where it has them."""
    if dataset not in input_datasets():
        raise ExportError(f"unknown dataset {dataset!r}; valid: {', '.join(input_datasets())}")
    entry = data.DATASETS.get(dataset)
    fields = {f.name for f in dataclasses.fields(entry.config)}
    given = {"image_size": image_size, "eval_resize": eval_resize, "resize_method": resize_method}
    section = entry.config(**{k: v for k, v in given.items() if k in fields and v is not None})
    return entry.input_spec(section)


def spec_from_workdir(variables_dir: str | Path) -> dict[str, Any] | None:
    """The input spec of the run whose ``workdir/variables`` this is, from ``workdir/config.json``;
    None when there is no such file (e.g. a converted checkpoint)."""
    config = Path(variables_dir).absolute().parent / "config.json"
    if not config.is_file():
        return None
    section = json.loads(config.read_text()).get("data", {})
    name = section.get("name")
    if name not in data.names() or data.DATASETS.get(name).input_spec is None:
        return None
    return input_spec(name, section.get("image_size") or None, section.get("eval_resize") or 256,
                      section.get("resize_method") or "bilinear")


# ------------------------------------------------------------------------------------------- tracing


@dataclasses.dataclass
class _Call:
    path: str
    module: nn.Module
    children: list[_Call]


def _trace(model: nn.Module, variables: Mapping[str, Any], x: Any) -> list[_Call]:
    """The module calls of ``model.apply(variables, x)`` in order, nested by path (no computation)."""
    done: list[_Call] = []  # in the order the calls finish: children before their parent

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        path = "/".join(context.module.path)
        if (context.method_name == "__call__" and path and not isinstance(context.module, layers.EstimatorParams)
                and all(c.path != path for c in done)):
            done.append(_Call(path, context.module, []))
        return out

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda v, a: model.apply(v, a), variables, x)
    by_path = {c.path: c for c in done}
    top = []
    for call in done:  # a parent's children keep their call order
        parent = call.path.rsplit("/", 1)[0] if "/" in call.path else None
        (by_path[parent].children if parent in by_path else top).append(call)
    return top


# ------------------------------------------------------------------------------------------- building


class _Builder:
    def __init__(self, variables: Mapping[str, Any], signs: Mapping[str, np.ndarray], dtype: Any):
        self.dtype = dtype
        self.params = variables["params"]
        self.stats = variables.get("batch_stats", {})
        self.signs = signs
        self.ops: list[dict[str, Any]] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.binary_bits = 0

    def leaf(self, tree: Mapping[str, Any], path: str, name: str) -> np.ndarray:
        node = tree
        for part in path.split("/"):
            node = node[part]
        return np.asarray(node[name], np.float64)

    def put(self, name: str, value: np.ndarray, dtype: Any = None) -> str:
        self.arrays[name] = np.ascontiguousarray(np.asarray(value).astype(dtype or self.dtype))
        return name

    def bn_fold(self, call: _Call) -> tuple[np.ndarray, np.ndarray]:
        m = call.module
        if not isinstance(m, (layers.BatchNorm, nn.BatchNorm)):
            raise ExportError(f"{call.path}: expected a BatchNorm, got {type(m).__name__}")
        eps = float(getattr(m, "epsilon", BN_EPSILON))
        mean, var = self.leaf(self.stats, call.path, "mean"), self.leaf(self.stats, call.path, "var")
        gamma = self.leaf(self.params, call.path, "scale") if getattr(m, "use_scale", True) else np.ones_like(mean)
        beta = self.leaf(self.params, call.path, "bias") if getattr(m, "use_bias", True) else np.zeros_like(mean)
        mul = gamma / np.sqrt(var + eps)
        return mul, beta - mean * mul

    def emit(self, op: str, src: Any, dst: str, **fields: Any) -> None:
        self.ops.append({"op": op, "src": src, "dst": dst, **fields})

    def conv(self, call: _Call, src: str, dst: str) -> None:
        m = call.module
        if not isinstance(m, nn.Conv):
            raise ExportError(f"{call.path}: expected a Conv, got {type(m).__name__}")
        kernel = self.leaf(self.params, call.path, "kernel")
        dil = tuple(np.broadcast_to(m.kernel_dilation or 1, 2)) + tuple(np.broadcast_to(m.input_dilation or 1, 2))
        if m.feature_group_count != 1 or any(d != 1 for d in dil) or kernel.ndim != 4:
            raise ExportError(f"{call.path}: only ungrouped, undilated 2-D convolutions are exported")
        strides = [int(s) for s in np.broadcast_to(m.strides or 1, 2)]
        pad = [list(p) for p in explicit_padding(m.padding, f"{call.path}.padding")]
        self.emit("conv", src, dst, kernel=self.put(f"{call.path}/kernel", kernel), strides=strides, padding=pad)
        if m.use_bias:
            self.emit("bias", dst, dst, bias=self.put(f"{call.path}/bias", self.leaf(self.params, call.path, "bias")))

    def affine(self, call: _Call, src: str, dst: str) -> None:
        mul, shift = self.bn_fold(call)
        self.emit("affine", src, dst, scale=self.put(f"{call.path}/scale", mul),
                  bias=self.put(f"{call.path}/bias", shift))

    def prelu(self, call: _Call, src: str, dst: str) -> None:
        self.emit("prelu", src, dst, slope=self.put(f"{call.path}/slope", self.leaf(self.params, call.path, "slope")))

    def shift(self, call: _Call, src: str, dst: str) -> None:
        self.emit("bias", src, dst, bias=self.put(f"{call.path}/bias", self.leaf(self.params, call.path, "bias")))

    def binary_conv(self, call: _Call, bn: _Call | None, src: str, dst: str) -> None:
        m = call.module
        sign_zero = check_binary_layer(call.path, m)
        kernel = self.leaf(self.params, call.path, "kernel")
        signs = np.asarray(self.signs[call.path], np.float64)
        if signs.shape != kernel.shape:
            raise ExportError(f"{call.path}: weight signs {signs.shape} do not match the kernel {kernel.shape}")
        zeros = int(np.sum(signs == 0))
        if zeros:
            raise ExportError(f"{call.path}: {zeros} weight(s) have sign 0 (weight estimator zero=0 and weights equal "
                              "to their channel mean); they have no one-bit code")
        alpha = weight_scale(kernel, m.spec.weight_norm, m.spec.weight_scale)
        mul, shift = self.bn_fold(bn) if bn is not None else (np.ones_like(alpha), np.zeros_like(alpha))
        if m.use_bias:
            shift = shift + self.leaf(self.params, call.path, "bias") * mul
        kh, kw, cin, _ = kernel.shape
        strides = [int(s) for s in np.broadcast_to(m.strides, 2)]
        pad = [list(p) for p in explicit_padding(m.padding, f"{call.path}.padding")]
        pad_value = float(m.spec.pad_value)
        fields: dict[str, Any] = {
            "bits": self.put(f"{call.path}/bits", packed.pack_weight_signs(signs), np.uint32),
            "in_channels": int(cin), "kernel_size": [int(kh), int(kw)], "strides": strides, "padding": pad,
            "pad_value": pad_value, "sign_zero": sign_zero,
            "scale": self.put(f"{call.path}/scale", alpha * mul), "bias": self.put(f"{call.path}/bias", shift)}
        self.binary_bits += signs.size
        self.emit("binary_conv", src, dst, **fields)


def check_binary_layer(path: str, m: nn.Module) -> float:
    """Raises ``ExportError`` unless the binary layer ``m`` can be bit-packed; returns its sign(0)."""
    est_in, est_w = m.spec.inputs, m.spec.weights
    if m.spec.input_bias:
        raise ExportError(f"{path}: an input bias inside the binary layer (BinarySpec.input_bias) is not exported yet")
    if est_in is None or est_w is None:
        which = "inputs" if est_in is None else "weights"
        raise ExportError(f"{path}: real-valued {which} (stage one of two-stage training?); only layers "
                          "with binary inputs and weights can be bit-packed")
    for what, est in (("activation", est_in), ("weight", est_w)):
        if not est.spec.sign_forward:
            exportable = [n for n in estimators.names() if estimators.REGISTRY[n].sign_forward]
            raise ExportError(f"{path}: the {what} estimator {est.name!r} does not compute sign(x) in its "
                              f"forward pass, so its +-1 values cannot be reproduced by XNOR-popcount; "
                              f"exportable estimators: {', '.join(exportable)}")
    sign_zero = float(est_in.kwargs.get("zero", 1.0))
    if sign_zero == 0.0:
        raise ExportError(f"{path}: the activation estimator has zero=0 (sign(0) = 0), which has no "
                          "one-bit code; export a model trained with zero=1 (the default) or zero=-1")
    return sign_zero


def weight_scale(kernel: np.ndarray, weight_norm: str, scale: str) -> np.ndarray:
    """alpha per output channel (last axis), as ``mlpbnn.layers.BinaryConv`` computes it: mean |W'| of
    the normalised weights W' (centred, or centred and divided by the unbiased std), 2^round(log2)
    of that for 'pow2', 1 for 'none'. Float64."""
    axes = tuple(range(kernel.ndim - 1))
    w = np.asarray(kernel, np.float64)
    if weight_norm in ("center", "standardize"):
        w = w - w.mean(axes, keepdims=True)
    if weight_norm == "standardize":
        w = w / (w.std(axes, ddof=1, keepdims=True) + 1e-12)
    elif weight_norm not in ("none", "center"):
        raise ExportError(f"unknown weight_norm {weight_norm!r}")
    if scale == "none":
        return np.ones(w.shape[-1])
    alpha = np.abs(w).mean(axes)
    if scale == "pow2":
        return 2.0 ** np.round(np.log2(alpha))
    if scale != "mean":
        raise ExportError(f"unknown weight_scale {scale!r}")
    return alpha


def _walk(calls: Sequence[_Call]) -> Iterator[_Call]:
    for c in calls:
        yield c
        yield from _walk(c.children)


def _names(calls: Sequence[_Call]) -> list[str]:
    return [c.path.rsplit("/", 1)[-1] for c in calls]


def _block(b: _Builder, block: _Call, variant: str) -> None:
    """A Bi-Real/ReActNet block (``mlpbnn.models.resnet.BinaryBlock``), register x in and out:
    h = BN(BinConv(sign(shift0(x)))); r = BN(Conv1x1(AvgPool(x))) or x; out = act(h + r)."""
    c = {name: call for name, call in zip(_names(block.children), block.children, strict=True)}
    expected = {"bireal": {"binary_conv", "bn1", "nonlinear"},
                "reactnet": {"move0", "binary_conv", "bn1", "move1", "prelu", "move2"}}[variant]
    shortcut = {"downsample_0", "downsample_1", "downsample_2"}
    if not expected <= set(c) or set(c) - expected - shortcut:
        raise ExportError(f"{block.path}: unexpected block structure {_names(block.children)}; the exporter knows "
                          f"the {variant} block ({sorted(expected)} and an optional shortcut {sorted(shortcut)})")
    src = "x"
    if variant == "reactnet":
        b.shift(c["move0"], "x", "h")
        src = "h"
    b.binary_conv(c["binary_conv"], c["bn1"], src, "h")
    r = "x"
    if "downsample_1" in c:
        r = "r"
        if "downsample_0" in c:
            pool = c["downsample_0"].module
            if not isinstance(pool, layers.AvgPool):
                raise ExportError(f"{block.path}/downsample_0: expected an AvgPool, got {type(pool).__name__}")
            b.emit("avgpool", "x", r, window=int(pool.window), strides=int(pool.strides))
            b.conv(c["downsample_1"], r, r)
        else:
            b.conv(c["downsample_1"], "x", r)
        b.affine(c["downsample_2"], r, r)
    b.emit("add", ["h", r], "x")
    if variant == "bireal":
        b.prelu(c["nonlinear"], "x", "x")
    else:
        b.shift(c["move1"], "x", "x")
        b.prelu(c["prelu"], "x", "x")
        b.shift(c["move2"], "x", "x")


def build(variables: Mapping[str, Any], model_name: str, model_kwargs: Mapping[str, Any],
          spec: Mapping[str, Any], dtype: Any = np.float32) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(program, arrays) of the packed network; raises ``ExportError`` saying why a model cannot be
    exported. ``spec``: ``input_spec(...)`` (its height, width and the stem's input channels
    make the example input the model is traced with). ``dtype``: of the real arrays (float32 in
    exports; float64 for exactness tests, the folding itself is computed in float64)."""
    info = models.info(model_name)
    if not info.binary:
        raise ExportError(f"{model_name!r} is a full-precision model: there is nothing to bit-pack")
    kwargs = {k: v for k, v in model_kwargs.items() if k != "dtype"}
    model = models.create(model_name, **kwargs)
    backbone = getattr(model, "backbone", None)
    variant = getattr(backbone, "variant", None)
    if variant not in ("bireal", "reactnet"):
        raise ExportError(f"{model_name!r}: only the binary ResNets (variants bireal, reactnet) with a classifier "
                          "head are exported so far")
    variables = jax.tree.map(lambda a: np.asarray(a, np.float32) if np.issubdtype(np.asarray(a).dtype, np.floating)
                             else np.asarray(a), dict(variables))
    cin = int(np.asarray(variables["params"]["conv1"]["kernel"]).shape[2])
    x = jnp.zeros((1, int(spec["height"]), int(spec["width"]), cin), jnp.float32)
    if cin != int(spec["channels"]):
        raise ExportError(f"the input spec has {spec['channels']} channel(s) but the stem takes {cin}")
    calls = _trace(model, variables, x)
    for call in _walk(calls):  # refuse before computing anything
        if isinstance(call.module, layers.BinaryConv):
            check_binary_layer(call.path, call.module)
    signs = jax.jit(lambda v: layers.weight_signs(model, v, x))(variables)
    b = _Builder(variables, {k: np.asarray(v) for k, v in signs.items()}, dtype)
    top = {c.path: c for c in calls}
    names = _names(calls)
    # The stem: conv1, bn1, the stem's activation (bireal: PReLU 'nonlinear'), max-pool (ImageNet stem).
    b.conv(top["conv1"], "input", "x")
    b.affine(top["bn1"], "x", "x")
    blocks = [c for c in calls if c.path.startswith("layer")]
    for name in names[names.index("bn1") + 1:]:
        call = top[name]
        if isinstance(call.module, layers.PReLU):
            b.prelu(call, "x", "x")
        elif isinstance(call.module, layers.MaxPool):
            m = call.module
            b.emit("maxpool", "x", "x", window=int(m.window), strides=int(m.strides), padding=int(m.padding))
        else:
            break
    for block in blocks:
        _block(b, block, variant)
    if "avgpool" not in top or "fc" not in top:
        raise ExportError(f"{model_name!r}: expected the classifier head (avgpool, fc), got modules {names}")
    b.emit("global_avg_pool", "x", "x")
    fc = top["fc"].module
    bias = b.leaf(b.params, "fc", "bias") if fc.use_bias else np.zeros(fc.features)
    b.emit("dense", "x", "output", kernel=b.put("fc/kernel", b.leaf(b.params, "fc", "kernel")),
           bias=b.put("fc/bias", bias))
    known = {"conv1", "bn1", "avgpool", "fc", *(c.path for c in blocks)}
    stem = {n for n in names if isinstance(top[n].module, (layers.PReLU, layers.MaxPool))}
    unknown = sorted(set(names) - known - stem - {"backbone"})
    if unknown:
        raise ExportError(f"{model_name!r}: modules the exporter does not know: {unknown}")
    real = sum(a.size for a in b.arrays.values() if np.issubdtype(a.dtype, np.floating))
    program = {"format": FORMAT, "version": VERSION, "input": "input", "output": "output", "ops": b.ops,
               "num_outputs": int(fc.features), "binary_weights": int(b.binary_bits), "real_values": int(real)}
    packed.check_program(program, b.arrays)
    return program, b.arrays


# ------------------------------------------------------------------------------------------- files


def float32_size(variables: Mapping[str, Any]) -> int:
    """Bytes of the model's float32 params and BatchNorm statistics (the estimator excluded)."""
    keep = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    return int(sum(np.asarray(a).size * 4 for a in jax.tree.leaves(keep)))


def save(out_dir: str | Path, program: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
         meta: Mapping[str, Any], overwrite: bool = False) -> dict[str, int]:
    """Writes ``weights.npz`` and ``model.json`` into a fresh sibling directory, then renames it to
    ``out_dir`` (replacing an existing export only with ``overwrite``). Returns the sizes in bytes."""
    out = Path(out_dir).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with open(tmp / ARRAYS, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        binary = sum(a.nbytes for a in arrays.values() if a.dtype == np.uint32)
        sizes = {"weights_file": (tmp / ARRAYS).stat().st_size, "binary_weight_bytes": int(binary),
                 "real_bytes": int(sum(a.nbytes for a in arrays.values() if a.dtype == np.float32))}
        doc = {**program, **meta, "sizes": {**sizes, **meta.get("sizes", {})}}
        with open(tmp / PROGRAM, "w") as f:
            f.write(json.dumps(doc, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        sizes["total"] = sizes["weights_file"] + (tmp / PROGRAM).stat().st_size
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sizes


def load(out_dir: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(model.json as a dict, arrays) of an export."""
    d = Path(out_dir)
    if not (d / PROGRAM).is_file() or not (d / ARRAYS).is_file():
        raise FileNotFoundError(f"{d} is not a packed export (expected {PROGRAM} and {ARRAYS}); "
                                "create one with: python -m mlpbnn.export VARIABLES_DIR OUT_DIR")
    doc = json.loads((d / PROGRAM).read_text())
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ValueError(f"{d / PROGRAM}: format {doc.get('format')!r} version {doc.get('version')!r}, "
                         f"expected {FORMAT!r} version {VERSION}")
    with np.load(d / ARRAYS) as z:
        arrays = {k: z[k] for k in z.files}
    packed.check_program(doc, arrays)
    return doc, arrays


def export(variables_dir: str | Path, out_dir: str | Path, *, dataset: str | None = None,
           image_size: int | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Reads a variables checkpoint, builds and writes the packed export; returns a summary."""
    from mlpbnn.variables_io import load_variables

    variables, meta = load_variables(variables_dir)
    if dataset is not None:
        spec = input_spec(dataset, image_size)
    else:
        spec = spec_from_workdir(variables_dir)
        if spec is None:
            raise ExportError(f"no input spec: {Path(variables_dir).absolute().parent}/config.json not found or "
                              f"without a known data.name; pass --dataset ({', '.join(input_datasets())})")
        if image_size:
            spec = input_spec(spec["dataset"], image_size)
    program, arrays = build(variables, meta["model"], meta["model_kwargs"], spec)
    f32 = float32_size(variables)
    info = {"source": {"variables": str(Path(variables_dir).absolute()), "model": meta["model"],
                       "model_kwargs": meta["model_kwargs"]},
            "input_spec": spec, "sizes": {"float32_variables": f32}}
    sizes = save(out_dir, program, arrays, info, overwrite)
    return {"out_dir": str(Path(out_dir).absolute()), **sizes, "float32_variables": f32,
            "compression": f32 / sizes["total"], "binary_weights": program["binary_weights"],
            "ops": len(program["ops"]), "input_spec": spec}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlpbnn.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("variables_dir", help="variables checkpoint (a run's workdir/variables)")
    parser.add_argument("out_dir", help="the export directory to write")
    parser.add_argument("--dataset", choices=input_datasets(),
                        help="input spec preset (default: from workdir/config.json)")
    parser.add_argument("--image-size", type=int, default=None, help="input size (imagenet; default 224)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    args = parser.parse_args(argv)
    try:
        s = export(args.variables_dir, args.out_dir, dataset=args.dataset, image_size=args.image_size,
                   overwrite=args.overwrite)
    except (ExportError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    spec = s["input_spec"]
    print(f"wrote {s['out_dir']}: {s['total']:,} bytes ({s['total'] / 2**20:.2f} MiB) on disk; float32 variables "
          f"{s['float32_variables']:,} bytes ({s['float32_variables'] / 2**20:.2f} MiB), {s['compression']:.1f}x "
          f"smaller; {s['binary_weights']:,} binary weights in {s['binary_weight_bytes']:,} bytes, real "
          f"values {s['real_bytes']:,} bytes")
    print(f"input: {spec['height']}x{spec['width']}x{spec['channels']} ({spec['dataset']}), "
          f"x = (pixel/255 - {spec['mean']}) / {spec['std']}, resize {spec['resize']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
