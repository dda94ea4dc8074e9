"""Lower any trained Flax model to a packed inference program, by tracing its eval-mode call.

``lower(model, variables, example)`` runs ``model.apply(variables, example)`` once under
``jax.make_jaxpr`` with ``flax.linen.intercept_methods`` and writes what it computes as the small
intermediate representation (IR) that ``mlpbnn.packed.run_program`` executes. It names no model
and no layer: the zoo's Bi-Real/ReActNet ResNets, SBPN, BHRNet and a user's model binarized by
``mlpbnn.binarize`` lower through the same code.

How. Layers with weights are *leaves*: each call of a binary layer (``layers.BinaryConv``,
``BinaryConvTranspose``, ``BinaryDense``), a Flax ``nn.Conv`` / ``nn.Dense`` /
``nn.ConvTranspose``, a BatchNorm (``layers.BatchNorm``, ``nn.BatchNorm``), ``PReLU``,
``RPReLU`` or ``LearnableBias`` is replaced in the trace by one opaque primitive (its real
computation still runs and is then dead code), and its op is built from the module's attributes
and variables. A binary layer's +-1 weights are what the layer itself computes
(``layers.weight_signs``: its weight normalisation and its estimator's forward, sign(0) included),
its alpha is its ``spec.weight_scale`` of the normalised weights, and the BatchNorm that alone
consumes its output is folded into its per-channel scale and bias. Everything between the
leaves (residual adds, ReLU, pooling, means, nearest upsampling by ``jnp.repeat``, channel
means, concatenation, flattening, arithmetic with constants) is read from the jaxpr's
primitives, inlining nested ``jit`` and ``custom_jvp`` calls. A primitive or pattern outside the
IR is refused with the primitive and the line of code that made it.

The IR (``program["ops"]``, each ``{"op", "src", "dst", ...}`` over named registers; arrays by
name; per-channel vectors on the last axis, NHWC):

- ``binary_conv``: y = conv(pad(sign(x), pad_value), W) * scale + bias with W in {-1, +1},
  ``bits`` the packed W (``packed.pack_weight_signs``), ``in_channels``, ``kernel_size``,
  ``strides``, ``padding`` ((top, bottom), (left, right)), ``pad_value`` (0: PyTorch's zero
  padding, exact through the border correction; or +-1), ``sign_zero`` (sign(0): +-1);
- ``binary_conv_transpose``: y = conv_transpose(sign(x), W) * scale + bias, PyTorch's
  ``conv_transpose2d`` with the scatter-form kernel and ``padding`` cropped per side;
- ``binary_dense``: y = sign(x) @ W * scale + bias (``bits`` of the (1, 1, in, out) kernel);
- real layers: ``conv`` (kernel HWIO, strides, padding), ``conv_transpose`` (scatter-form
  kernel, strides, crop padding), ``dense`` (kernel, bias), ``affine`` (scale, bias: a folded
  BatchNorm or a constant product), ``bias`` (LearnableBias, a constant sum), ``prelu`` (slope;
  PyTorch's ``x > 0`` test), ``relu``;
- pooling and shape: ``maxpool`` (window, strides, padding, -inf padded), ``avgpool`` (window,
  strides, padding; zeros counted), ``global_avg_pool`` (``keepdims``), ``upsample`` (nearest,
  ``factors`` (fh, fw)), ``channel_mean`` (``group``: mean of adjacent channels),
  ``channel_repeat`` (``factor``), ``flatten``, ``add`` (two registers, numpy broadcasting over
  H and W: a residual add of a 1x1 map to a 2x2 one, as PyTorch's and the models'), ``concat``
  (channels).

What cannot be bit-packed is refused with the layer's path: real-valued inputs or weights in a
binary layer (stage one of two-stage training), estimators whose forward is not a sign (the
argmax ``classifier``), sign(0) = 0 on activations, weights whose sign is 0, BatchNorm in
training mode. Sources: XNOR-Net (arXiv 1603.05279), Bi-Real Net (arXiv 1808.00278), BBC
(arXiv 2205.07433).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.linear import canonicalize_padding
from jax.extend import core as jex_core

from mlpbnn import estimators, layers, packed
from mlpbnn.conv import explicit_padding


class ExportError(ValueError):
    """The model or checkpoint cannot be exported; the message says why."""


# ------------------------------------------------------------------------------------------- the trace

# One opaque primitive stands for a leaf layer's call in the jaxpr; ``op_id`` indexes the leaves.
_leaf_p = jex_core.Primitive("mlpbnn_leaf")
_leaf_p.def_abstract_eval(lambda x, *, op_id, shape, dtype: jax.core.ShapedArray(shape, dtype))

_BINARY = (layers.BinaryConv, layers.BinaryConvTranspose, layers.BinaryDense)
_FLAX_LINEAR = (nn.Conv, nn.ConvTranspose, nn.Dense)  # a binarize twin may run inside their call
_TERMINAL = (*_BINARY, layers.BatchNorm, nn.BatchNorm, layers.PReLU, layers.RPReLU, layers.LearnableBias)


@dataclasses.dataclass
class _Leaf:
    module: nn.Module
    path: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kwargs: dict[str, Any]
    variables: Any


def eval_kwargs(model: nn.Module) -> dict[str, Any]:
    """The keywords of an evaluation call: ``train=False`` where the model's ``__call__`` takes it
    (the zoo's models, ``mlpbnn.binarize``'s wrapper, a Flax ResNet), as the trainer passes it."""
    import inspect

    params = inspect.signature(type(model).__call__).parameters
    takes = "train" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {"train": False} if takes else {}


def _trace(model: nn.Module, variables: Mapping[str, Any], x: np.ndarray) -> tuple[Any, list[_Leaf]]:
    leaves: list[_Leaf] = []
    inside = [0]  # > 0 inside a terminal leaf's own call (its estimators, its input bias)

    def interceptor(next_fun, args, kwargs, context):
        m = context.module
        if (context.method_name != "__call__" or inside[0] or not args
                or not isinstance(m, (*_TERMINAL, *_FLAX_LINEAR))):
            return next_fun(*args, **kwargs)
        if isinstance(m, (layers.BatchNorm, nn.BatchNorm)) and not kwargs.get("use_running_average",
                                                                             m.use_running_average):
            raise ExportError(f"{'/'.join(m.path)}: BatchNorm in training mode (batch statistics); export traces "
                              "the model's eval call (train=False)")
        terminal = isinstance(m, _TERMINAL)
        before = len(leaves)
        inside[0] += terminal
        try:
            out = next_fun(*args, **kwargs)
        finally:
            inside[0] -= terminal
        if len(leaves) > before:  # nn.Conv & co. run by mlpbnn.binarize as a binary twin: the twin is the op
            return out
        if not isinstance(out, jax.Array) or not hasattr(args[0], "shape"):
            raise ExportError(f"{'/'.join(m.path)}: a {type(m).__name__} call with no array input or output")
        leaves.append(_Leaf(m, "/".join(m.path), tuple(args[0].shape), tuple(out.shape), dict(kwargs),
                            m.variables))
        return _leaf_p.bind(args[0], op_id=len(leaves) - 1, shape=tuple(out.shape), dtype=np.dtype(out.dtype))

    with nn.intercept_methods(interceptor):
        closed = jax.make_jaxpr(lambda a: model.apply(variables, a, **eval_kwargs(model)))(x)
    return closed, leaves


# ------------------------------------------------------------------------------------------- values


@dataclasses.dataclass(frozen=True)
class _Reg:
    """A register of the program (a value that depends on the input)."""

    name: str
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class _Pending:
    """An intermediate of a glue pattern that only its next primitive completes: ``expand`` (a new
    axis after ``axis``, of size ``n``: half of ``jnp.repeat``), ``split`` (channels into groups of
    ``n``), ``group_sum`` (their sum), ``spatial_sum`` (a sum over H and W, ``keepdims`` after a
    broadcast), ``window_sum`` (a summed window: half of an average pool)."""

    kind: str
    src: _Reg
    shape: tuple[int, ...]
    n: int = 0
    axis: int = 0
    fields: tuple[tuple[str, Any], ...] = ()


def _where(eqn: Any) -> str:
    try:
        from jax._src import source_info_util

        return source_info_util.summarize(eqn.source_info)
    except Exception:  # noqa: BLE001 - only for the message
        return "?"


def weight_scale(kernel: np.ndarray, weight_norm: str, scale: str) -> np.ndarray:
    """alpha per output channel (last axis), as ``mlpbnn.layers.scale_weights`` computes it on
    ``normalize_weights(kernel, weight_norm)``, in float64."""
    w = _normalize64(kernel, weight_norm)
    if scale == "none":
        return np.ones(w.shape[-1])
    alpha = np.abs(w).mean(tuple(range(w.ndim - 1)))
    if scale == "pow2":
        return 2.0 ** np.round(np.log2(alpha))
    if scale != "mean":
        raise ExportError(f"unknown weight_scale {scale!r}")
    return alpha


def _normalize64(kernel: np.ndarray, weight_norm: str) -> np.ndarray:
    """``layers.normalize_weights`` in float64 numpy (the export folds in float64)."""
    axes = tuple(range(kernel.ndim - 1))
    w = np.asarray(kernel, np.float64)
    if weight_norm in ("center", "standardize"):
        w = w - w.mean(axes, keepdims=True)
    if weight_norm == "standardize":
        w = w / (w.std(axes, ddof=1, keepdims=True) + 1e-12)
    elif weight_norm not in ("none", "center"):
        raise ExportError(f"unknown weight_norm {weight_norm!r}")
    return w


def check_binary_layer(path: str, m: nn.Module) -> float:
    """Raises ``ExportError`` unless the binary layer ``m`` can be bit-packed; returns its sign(0)."""
    est_in, est_w = m.spec.inputs, m.spec.weights
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


def _pairs(v: Any) -> list[int]:
    return [int(s) for s in np.broadcast_to(np.asarray(v if v is not None else 1), 2)]


def _transpose_crop(kernel_size: Sequence[int], strides: Sequence[int], padding: Any, path: str) -> list[list[int]]:
    """A Flax ``nn.ConvTranspose``'s padding as PyTorch's crop of the scatter form (the flipped kernel)."""
    from mlpbnn.binary import _transpose_pads

    padding = canonicalize_padding(padding, 2)
    if padding in ("SAME", "VALID"):
        pads = [_transpose_pads(k, s, padding) for k, s in zip(kernel_size, strides, strict=True)]
    elif isinstance(padding, str):
        raise ExportError(f"{path}: padding {padding!r} is not exported (SAME, VALID or explicit)")
    else:
        pads = [tuple(p) for p in padding]
    return [[k - 1 - lo, k - 1 - hi] for k, (lo, hi) in zip(kernel_size, pads, strict=True)]


# ------------------------------------------------------------------------------------------- lowering


class _Lowering:
    def __init__(self, leaves: list[_Leaf], signs: Mapping[str, np.ndarray], dtype: Any):
        self.leaves, self.signs, self.dtype = leaves, signs, dtype
        self.ops: list[dict[str, Any]] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.binary_bits = 0
        self._n = 0

    # -- emission
    def reg(self, shape: Sequence[int]) -> _Reg:
        self._n += 1
        return _Reg(f"t{self._n}", tuple(int(s) for s in shape))

    def put(self, name: str, value: Any, dtype: Any = None) -> str:
        base, k = name, 1
        while name in self.arrays:  # a layer called twice (or two ops of one layer)
            k += 1
            name = f"{base}.{k}"
        self.arrays[name] = np.ascontiguousarray(np.asarray(value).astype(dtype or self.dtype))
        return name

    def emit(self, op: str, src: _Reg | list[_Reg], shape: Sequence[int], **fields: Any) -> _Reg:
        dst = self.reg(shape)
        names = [s.name for s in src] if isinstance(src, list) else src.name
        self.ops.append({"op": op, "src": names, "dst": dst.name, **fields})
        return dst

    # -- leaves
    def leaf(self, leaf: _Leaf, x: _Reg) -> _Reg:
        m, path = leaf.module, leaf.path
        params = leaf.variables.get("params", {})
        f64 = {k: np.asarray(v, np.float64) for k, v in params.items() if not isinstance(v, Mapping)}
        out = leaf.out_shape
        if isinstance(m, _BINARY):
            return self.binary(leaf, x)
        if isinstance(m, (layers.BatchNorm, nn.BatchNorm)):
            if isinstance(m, nn.BatchNorm) and m.axis not in (-1, len(leaf.in_shape) - 1):
                raise ExportError(f"{path}: BatchNorm over axis {m.axis}; only the channel (last) axis is exported")
            stats = leaf.variables["batch_stats"]
            mean, var = np.asarray(stats["mean"], np.float64), np.asarray(stats["var"], np.float64)
            gamma = f64["scale"] if m.use_scale else np.ones_like(mean)
            beta = f64["bias"] if m.use_bias else np.zeros_like(mean)
            mul = gamma / np.sqrt(var + float(m.epsilon))
            return self.emit("affine", x, out, scale=self.put(f"{path}/scale", mul),
                             bias=self.put(f"{path}/bias", beta - mean * mul))
        if isinstance(m, layers.PReLU):
            return self.emit("prelu", x, out, slope=self.put(f"{path}/slope", f64["slope"]))
        if isinstance(m, layers.RPReLU):
            y = self.emit("bias", x, out, bias=self.put(f"{path}/gamma", f64["gamma"]))
            y = self.emit("prelu", y, out, slope=self.put(f"{path}/slope", f64["slope"]))
            return self.emit("bias", y, out, bias=self.put(f"{path}/zeta", f64["zeta"]))
        if isinstance(m, layers.LearnableBias):
            return self.emit("bias", x, out, bias=self.put(f"{path}/bias", f64["bias"]))
        if isinstance(m, nn.Dense):
            return self.dense(path, x, out, f64["kernel"], f64.get("bias") if m.use_bias else None)
        if isinstance(m, nn.Conv):
            if m.mask is not None or m.feature_group_count != 1 or _pairs(m.kernel_dilation) != [1, 1] \
                    or _pairs(m.input_dilation) != [1, 1] or len(leaf.in_shape) != 4:
                raise ExportError(f"{path}: only ungrouped, undilated, unmasked 2-D convolutions of NHWC inputs "
                                  "are exported")
            kernel = f64["kernel"]
            strides = _pairs(m.strides)
            pad = canonicalize_padding(m.padding, 2)
            if pad in ("SAME", "VALID"):
                pad = jax.lax.padtype_to_pads(leaf.in_shape[1:3], kernel.shape[:2], strides, pad)
            elif isinstance(pad, str):
                raise ExportError(f"{path}: padding {pad!r} is not exported (SAME, VALID or explicit)")
            return self.conv(path, x, out, kernel, strides, [list(map(int, p)) for p in pad],
                             f64.get("bias") if m.use_bias else None)
        if isinstance(m, nn.ConvTranspose):
            if m.transpose_kernel or m.mask is not None or _pairs(m.kernel_dilation) != [1, 1]:
                raise ExportError(f"{path}: transpose_kernel, masks and dilation are not exported")
            kernel = f64["kernel"]
            strides = _pairs(m.strides)
            crop = _transpose_crop(kernel.shape[:2], strides, m.padding, path)
            return self.conv_transpose(path, x, out, kernel[::-1, ::-1], strides, crop,
                                       f64.get("bias") if m.use_bias else None)
        raise ExportError(f"{path}: no lowering for {type(m).__name__}")

    def dense(self, path: str, x: _Reg, out: Sequence[int], kernel: np.ndarray, bias: np.ndarray | None) -> _Reg:
        b = bias if bias is not None else np.zeros(kernel.shape[-1])
        return self.emit("dense", x, out, kernel=self.put(f"{path}/kernel", kernel), bias=self.put(f"{path}/bias", b))

    def conv(self, path: str, x: _Reg, out: Sequence[int], kernel: np.ndarray, strides: list[int],
             padding: list[list[int]], bias: np.ndarray | None) -> _Reg:
        y = self.emit("conv", x, out, kernel=self.put(f"{path}/kernel", kernel), strides=strides, padding=padding)
        if bias is not None:
            y = self.emit("bias", y, out, bias=self.put(f"{path}/bias", bias))
        return y

    def conv_transpose(self, path: str, x: _Reg, out: Sequence[int], kernel: np.ndarray, strides: list[int],
                       crop: list[list[int]], bias: np.ndarray | None) -> _Reg:
        y = self.emit("conv_transpose", x, out, kernel=self.put(f"{path}/kernel", kernel), strides=strides,
                      padding=crop)
        if bias is not None:
            y = self.emit("bias", y, out, bias=self.put(f"{path}/bias", bias))
        return y

    def binary(self, leaf: _Leaf, x: _Reg) -> _Reg:
        m, path, out = leaf.module, leaf.path, leaf.out_shape
        params = leaf.variables["params"]
        kernel = np.asarray(params["kernel"], np.float64)
        bias = np.asarray(params["bias"], np.float64) if m.use_bias else None
        spec = m.spec
        transpose = isinstance(m, layers.BinaryConvTranspose)
        if spec.weights is None and spec.inputs is None:  # a real layer written as a binary one (REAL)
            if isinstance(m, layers.BinaryDense):
                return self.dense(path, x, out, kernel, bias)
            strides = _pairs(m.strides)
            pad = [list(p) for p in explicit_padding(m.padding, f"{path}.padding")]
            if transpose:
                return self.conv_transpose(path, x, out, kernel[::-1, ::-1] if m.flip_kernel else kernel,
                                           strides, pad, bias)
            if spec.pad_value != 0.0:
                raise ExportError(f"{path}: a real convolution padded with {spec.pad_value} is not exported")
            return self.conv(path, x, out, kernel, strides, pad, bias)
        sign_zero = check_binary_layer(path, m)
        if spec.input_bias:
            shift = np.asarray(params["input_bias"]["bias"], np.float64)
            x = self.emit("bias", x, leaf.in_shape, bias=self.put(f"{path}/input_bias", shift))
        if path not in self.signs:
            raise ExportError(f"{path}: its +-1 weights were not seen (layers.weight_signs)")
        signs = np.asarray(self.signs[path], np.float64)
        if signs.shape != kernel.shape:
            raise ExportError(f"{path}: weight signs {signs.shape} do not match the kernel {kernel.shape}")
        zeros = int(np.sum(signs == 0))
        if zeros:
            raise ExportError(f"{path}: {zeros} weight(s) have sign 0 (weight estimator zero=0 and weights equal "
                              "to their channel mean); they have no one-bit code")
        alpha = weight_scale(kernel, spec.weight_norm, spec.weight_scale)
        shift = bias if bias is not None else np.zeros_like(alpha)
        self.binary_bits += signs.size
        common = {"scale": self.put(f"{path}/scale", alpha), "bias": self.put(f"{path}/bias", shift),
                  "sign_zero": sign_zero}
        if isinstance(m, layers.BinaryDense):
            if len(leaf.in_shape) != 2:
                raise ExportError(f"{path}: a binary dense layer on a rank-{len(leaf.in_shape)} input; only (N, C) "
                                  "inputs are exported")
            bits = packed.pack_weight_signs(signs[None, None])
            return self.emit("binary_dense", x, out, bits=self.put(f"{path}/bits", bits, np.uint32),
                             in_channels=int(kernel.shape[0]), **common)
        if transpose and m.flip_kernel:
            signs = signs[::-1, ::-1]  # the scatter form
        kh, kw, cin, _ = kernel.shape
        fields = {"bits": self.put(f"{path}/bits", packed.pack_weight_signs(signs), np.uint32),
                  "in_channels": int(cin), "kernel_size": [int(kh), int(kw)], "strides": _pairs(m.strides),
                  "padding": [list(p) for p in explicit_padding(m.padding, f"{path}.padding")]}
        if transpose:
            return self.emit("binary_conv_transpose", x, out, **fields, **common)
        return self.emit("binary_conv", x, out, **fields, pad_value=float(spec.pad_value), **common)

    # -- the jaxpr
    def jaxpr(self, closed: Any, args: Sequence[Any]) -> list[Any]:
        jaxpr = closed.jaxpr if hasattr(closed, "jaxpr") else closed
        consts = list(getattr(closed, "consts", ()))
        env: dict[Any, Any] = {}

        def read(v: Any) -> Any:
            return v.val if isinstance(v, jex_core.Literal) else env[v]

        for var, val in zip(jaxpr.constvars, consts, strict=True):
            env[var] = np.asarray(val)
        for var, val in zip(jaxpr.invars, args, strict=True):
            env[var] = val
        needed = {v for v in jaxpr.outvars if not isinstance(v, jex_core.Literal)}
        live = []
        for eqn in reversed(jaxpr.eqns):  # only what the outputs depend on: the leaves' own computation is dead
            if any(v in needed for v in eqn.outvars):
                live.append(eqn)
                needed.update(v for v in eqn.invars if not isinstance(v, jex_core.Literal))
        for eqn in reversed(live):
            outs = self.eqn(eqn, [read(v) for v in eqn.invars])
            for var, val in zip(eqn.outvars, outs, strict=True):
                env[var] = val
        return [read(v) for v in jaxpr.outvars]

    def eqn(self, eqn: Any, ins: list[Any]) -> list[Any]:
        prim = eqn.primitive
        if not any(isinstance(v, (_Reg, _Pending)) for v in ins):  # constants: computed now
            out = prim.bind(*[jnp.asarray(v) for v in ins], **eqn.params)
            return [np.asarray(o) for o in out] if prim.multiple_results else [np.asarray(out)]
        if prim is _leaf_p:
            return [self.leaf(self.leaves[eqn.params["op_id"]], self.tensor(ins[0], eqn))]
        for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
            sub = eqn.params.get(key)
            if sub is not None and (hasattr(sub, "eqns") or hasattr(sub, "jaxpr")):
                return self.jaxpr(sub, ins)
        handler = getattr(self, f"p_{prim.name}", None)
        if handler is None:
            raise ExportError(f"{prim.name} ({_where(eqn)}): the packed program has no op for it")
        out = handler(eqn, *ins)
        return [out]

    def tensor(self, v: Any, eqn: Any) -> _Reg:
        if isinstance(v, _Reg):
            return v
        raise ExportError(f"{eqn.primitive.name} ({_where(eqn)}): an unsupported use of an intermediate "
                          f"({v.kind if isinstance(v, _Pending) else type(v).__name__}); the exporter knows "
                          "jnp.repeat, channel-group and spatial means and average pooling as whole patterns")

    def out_shape(self, eqn: Any) -> tuple[int, ...]:
        return tuple(int(s) for s in eqn.outvars[0].aval.shape)

    def channel_vector(self, c: Any, channels: int, eqn: Any) -> np.ndarray:
        c = np.asarray(c, np.float64)
        if c.size == 1:
            return np.full(channels, float(c.reshape(())))
        if c.shape and c.shape[-1] == channels and c.size == channels:
            return c.reshape(channels)
        raise ExportError(f"{eqn.primitive.name} ({_where(eqn)}): a constant of shape {c.shape} is not per channel")

    def unsupported(self, eqn: Any, what: str) -> ExportError:
        return ExportError(f"{eqn.primitive.name} ({_where(eqn)}): {what}; the packed program has no op for it")

    # -- elementwise
    def p_add(self, eqn: Any, a: Any, b: Any) -> _Reg:
        shape = self.out_shape(eqn)
        if isinstance(a, _Reg) and isinstance(b, _Reg):
            if np.broadcast_shapes(a.shape, b.shape) != shape or a.shape[0] != b.shape[0]:
                raise self.unsupported(eqn, f"an add {a.shape} + {b.shape} -> {shape}")
            return self.emit("add", [a, b], shape)  # numpy broadcasting (a 1x1 map added to a 2x2 one)
        t, c = (a, b) if isinstance(a, (_Reg, _Pending)) else (b, a)
        t = self.tensor(t, eqn)
        return self.emit("bias", t, shape, bias=self.put("const/bias", self.channel_vector(c, shape[-1], eqn)))

    def p_sub(self, eqn: Any, a: Any, b: Any) -> _Reg:
        if not isinstance(a, _Reg) or isinstance(b, (_Reg, _Pending)):
            raise self.unsupported(eqn, "only a register minus a constant is exported")
        shape = self.out_shape(eqn)
        return self.emit("bias", a, shape, bias=self.put("const/bias", -self.channel_vector(b, shape[-1], eqn)))

    def p_mul(self, eqn: Any, a: Any, b: Any) -> _Reg:
        if isinstance(a, (_Reg, _Pending)) and isinstance(b, (_Reg, _Pending)):
            raise self.unsupported(eqn, "a product of two registers")
        t, c = (a, b) if isinstance(a, (_Reg, _Pending)) else (b, a)
        t = self.tensor(t, eqn)
        shape = self.out_shape(eqn)
        scale = self.channel_vector(c, shape[-1], eqn)
        return self.emit("affine", t, shape, scale=self.put("const/scale", scale),
                         bias=self.put("const/bias", np.zeros_like(scale)))

    def p_div(self, eqn: Any, a: Any, b: Any) -> _Reg:
        if isinstance(b, (_Reg, _Pending)):
            raise self.unsupported(eqn, "division by a register")
        shape = self.out_shape(eqn)
        d = np.asarray(b, np.float64)
        if isinstance(a, _Pending):
            n = float(d.reshape(-1)[0]) if d.size == 1 else None
            p = a
            if p.kind == "group_sum" and n == p.n:
                return self.emit("channel_mean", p.src, shape, group=p.n)
            if p.kind == "spatial_sum" and n == p.src.shape[1] * p.src.shape[2]:
                return self.emit("global_avg_pool", p.src, shape, keepdims=len(shape) == 4)
            fields = dict(p.fields)
            if p.kind == "window_sum" and n == fields["window"][0] * fields["window"][1]:
                return self.emit("avgpool", p.src, shape, **fields)
            raise self.unsupported(eqn, f"a {p.kind} divided by {d.reshape(-1)[:1]}: not a mean the program knows")
        a = self.tensor(a, eqn)
        scale = 1.0 / self.channel_vector(d, shape[-1], eqn)
        return self.emit("affine", a, shape, scale=self.put("const/scale", scale),
                         bias=self.put("const/bias", np.zeros_like(scale)))

    def p_max(self, eqn: Any, a: Any, b: Any) -> _Reg:
        t, c = (a, b) if isinstance(a, (_Reg, _Pending)) else (b, a)
        if isinstance(c, (_Reg, _Pending)) or np.any(np.asarray(c) != 0):
            raise self.unsupported(eqn, "only max(x, 0) (ReLU) is exported")
        return self.emit("relu", self.tensor(t, eqn), self.out_shape(eqn))

    def p_convert_element_type(self, eqn: Any, a: Any) -> Any:
        if not jnp.issubdtype(eqn.params["new_dtype"], jnp.floating):
            raise self.unsupported(eqn, f"a cast to {eqn.params['new_dtype']}")
        return a  # the program computes in one float dtype

    def p_copy(self, eqn: Any, a: Any) -> Any:
        return a

    p_copy_p = p_copy

    # -- shapes
    def p_broadcast_in_dim(self, eqn: Any, a: Any) -> Any:
        shape, dims = self.out_shape(eqn), tuple(eqn.params["broadcast_dimensions"])
        if isinstance(a, _Pending) and a.kind == "spatial_sum" and len(a.shape) == 2 \
                and shape == (a.shape[0], 1, 1, a.shape[1]):
            return dataclasses.replace(a, shape=shape)
        if isinstance(a, _Reg) and len(shape) == len(a.shape) + 1:
            new = next((i for i in range(len(shape)) if i not in dims), None)
            if new is not None and new >= 1 and dims == tuple(i for i in range(len(shape)) if i != new) \
                    and tuple(s for i, s in enumerate(shape) if i != new) == a.shape:
                return _Pending("expand", a, shape, n=shape[new], axis=new - 1)
        if isinstance(a, _Reg) and shape == a.shape:
            return a
        raise self.unsupported(eqn, f"a broadcast {getattr(a, 'shape', '?')} -> {shape}")

    def p_reshape(self, eqn: Any, a: Any) -> Any:
        shape = self.out_shape(eqn)
        if isinstance(a, _Pending) and a.kind == "expand":
            x, ax, n = a.src, a.axis, a.n
            if shape == (*x.shape[:ax], x.shape[ax] * n, *x.shape[ax + 1:]) and 1 <= ax <= 3 and len(x.shape) == 4:
                if ax == 3:
                    return self.emit("channel_repeat", x, shape, factor=n)
                return self.emit("upsample", x, shape, factors=[n if ax == 1 else 1, n if ax == 2 else 1])
        if isinstance(a, _Reg):
            if shape == a.shape:
                return a
            if len(a.shape) == 4 and len(shape) == 5 and shape[:3] == a.shape[:3] and shape[3] * shape[4] == a.shape[3]:
                return _Pending("split", a, shape, n=shape[4])
            if len(shape) == 2 and shape[0] == a.shape[0] and shape[1] == int(np.prod(a.shape[1:])):
                return self.emit("flatten", a, shape)
        raise self.unsupported(eqn, f"a reshape {getattr(a, 'shape', '?')} -> {shape}")

    def p_squeeze(self, eqn: Any, a: Any) -> _Reg:
        shape = self.out_shape(eqn)
        a = self.tensor(a, eqn)
        if len(shape) == 2 and shape[0] == a.shape[0] and shape[1] == int(np.prod(a.shape[1:])):
            return self.emit("flatten", a, shape)
        raise self.unsupported(eqn, f"a squeeze {a.shape} -> {shape}")

    def p_reduce_sum(self, eqn: Any, a: Any) -> _Pending:
        axes = tuple(eqn.params["axes"])
        shape = self.out_shape(eqn)
        if isinstance(a, _Pending) and a.kind == "split" and axes == (4,):
            return _Pending("group_sum", a.src, shape, n=a.n)
        if isinstance(a, _Reg) and len(a.shape) == 4 and axes == (1, 2):
            return _Pending("spatial_sum", a, shape)
        raise self.unsupported(eqn, f"a sum over axes {axes} of {getattr(a, 'shape', '?')}")

    def p_concatenate(self, eqn: Any, *xs: Any) -> _Reg:
        shape = self.out_shape(eqn)
        if eqn.params["dimension"] != len(shape) - 1:
            raise self.unsupported(eqn, "a concatenation along an axis other than the channels")
        return self.emit("concat", [self.tensor(x, eqn) for x in xs], shape)

    # -- pooling
    def _window(self, eqn: Any, a: Any) -> dict[str, Any]:
        p = eqn.params
        win, strides, pad = tuple(p["window_dimensions"]), tuple(p["window_strides"]), tuple(p["padding"])
        if (len(win) != 4 or win[0] != 1 or win[3] != 1 or strides[0] != 1 or strides[3] != 1
                or pad[0] != (0, 0) or pad[3] != (0, 0) or set(p["base_dilation"]) != {1}
                or set(p["window_dilation"]) != {1}):
            raise self.unsupported(eqn, "only spatial, undilated 2-D pooling windows are exported")
        return {"window": [int(win[1]), int(win[2])], "strides": [int(strides[1]), int(strides[2])],
                "padding": [list(map(int, pad[1])), list(map(int, pad[2]))]}

    def p_reduce_window_max(self, eqn: Any, a: Any) -> _Reg:
        a = self.tensor(a, eqn)
        return self.emit("maxpool", a, self.out_shape(eqn), **self._window(eqn, a))

    def p_reduce_window_sum(self, eqn: Any, a: Any) -> _Pending:
        a = self.tensor(a, eqn)
        return _Pending("window_sum", a, self.out_shape(eqn), fields=tuple(self._window(eqn, a).items()))


def _fold_affines(ops: list[dict[str, Any]], arrays: dict[str, np.ndarray], output: str) -> list[dict[str, Any]]:
    """An ``affine`` (a folded BatchNorm) that is the only reader of a binary op's output becomes
    part of that op's scale and bias: y = (acc * s + b) * m + c = acc * (s m) + (b m + c)."""
    readers: dict[str, int] = {}
    for op in ops:
        for s in op["src"] if isinstance(op["src"], list) else [op["src"]]:
            readers[s] = readers.get(s, 0) + 1
    producer = {op["dst"]: op for op in ops}
    keep = []
    for op in ops:
        prev = producer.get(op["src"]) if op["op"] == "affine" else None
        if (prev is not None and prev["op"].startswith("binary_") and readers[prev["dst"]] == 1
                and prev["dst"] != output):
            m, c = arrays.pop(op["scale"]).astype(np.float64), arrays.pop(op["bias"]).astype(np.float64)
            s, b = arrays[prev["scale"]].astype(np.float64), arrays[prev["bias"]].astype(np.float64)
            dtype = arrays[prev["scale"]].dtype
            arrays[prev["scale"]], arrays[prev["bias"]] = (s * m).astype(dtype), (b * m + c).astype(dtype)
            prev["dst"] = op["dst"]
            continue
        keep.append(op)
    return keep


def lower(model: nn.Module, variables: Mapping[str, Any], example: np.ndarray,
          dtype: Any = np.float32) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(program, arrays) of ``model``'s eval call on inputs shaped like ``example`` (N, H, W, C);
    raises ``ExportError`` saying why it cannot. ``dtype``: of the real arrays (float32 in
    exports, float64 for exactness tests; the folding itself is computed in float64)."""
    variables = jax.tree.map(lambda a: np.asarray(a, np.float32) if np.issubdtype(np.asarray(a).dtype, np.floating)
                             else np.asarray(a), dict(variables))
    x = np.zeros((2, *np.asarray(example).shape[1:]), np.float32)  # batch 2: the batch axis is unambiguous
    closed, leaves = _trace(model, variables, x)
    for leaf in leaves:  # refuse before computing anything
        if isinstance(leaf.module, _BINARY) and (leaf.module.spec.weights is not None
                                                  or leaf.module.spec.inputs is not None):
            check_binary_layer(leaf.path, leaf.module)
    binary = [leaf for leaf in leaves if isinstance(leaf.module, _BINARY) and leaf.module.spec.weights is not None]
    signs = {}
    if binary:
        found = jax.jit(lambda v: layers.weight_signs(model, v, x[:1], **eval_kwargs(model)))(variables)
        signs = {k: np.asarray(v) for k, v in found.items()}
    low = _Lowering(leaves, signs, np.float64)  # folded in float64, rounded to ``dtype`` once at the end
    inp = _Reg("input", tuple(x.shape))
    outs = low.jaxpr(closed, [inp])
    if len(outs) != 1 or not isinstance(outs[0], _Reg):
        raise ExportError(f"the model returns {len(outs)} values; a program has one array output")
    out = outs[0]
    if out.name == "input":
        raise ExportError("the model's output is its input")
    ops = low.ops
    for op in ops:  # the output register gets the program's name for it
        if op["dst"] == out.name:
            op["dst"] = "output"
        op["src"] = ([("output" if s == out.name else s) for s in op["src"]] if isinstance(op["src"], list)
                     else ("output" if op["src"] == out.name else op["src"]))
    ops = _fold_affines(ops, low.arrays, "output")
    used = {op[f] for op in ops for f in ("kernel", "bias", "scale", "slope", "bits") if f in op}
    arrays = {k: (v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v)
              for k, v in low.arrays.items() if k in used}
    real = sum(a.size for a in arrays.values() if np.issubdtype(a.dtype, np.floating))
    program = {"input": "input", "output": "output", "ops": ops, "input_shape": list(x.shape[1:]),
               "output_shape": list(out.shape[1:]), "num_outputs": int(out.shape[-1]),
               "binary_weights": int(low.binary_bits), "real_values": int(real)}
    packed.check_program(program, arrays)
    return program, arrays
