"""A packed export as a TFLite flatbuffer with Larq Compute Engine's binary ops, for ARM boards.

    python -m mlpbnn.lce convert EXPORT_DIR OUT.tflite [--batch N]
    python -m mlpbnn.lce run OUT.tflite INPUTS.npy OUTPUTS.npy [--threads 1]
    python -m mlpbnn.lce bench OUT.tflite [--batch 1] [--threads 1] [--rounds 20] [--warmup 3]

Larq Compute Engine (LCE, https://github.com/larq/compute-engine) is a TFLite runtime with
bit-packed binary convolutions (``LceBconv2d``, ``LceQuantize``) optimised for 64-bit ARM.
``convert`` rebuilds the program of a ``python -m mlpbnn.export`` directory (``model.json`` and
``weights.npz``, format versions 1 and 2) op by op as a Keras model with larq layers and converts
it with ``larq_compute_engine.convert_keras_model``; it prints the flatbuffer's op names (a
binary conv that did not become ``LceBconv2d`` is an error). ``run`` runs a flatbuffer with LCE's
Python interpreter (its x86-64 build here: correct, not fast) and ``bench`` times it. On the board
itself use LCE's ``lce_benchmark_model`` (README, "ARM").

This module runs in its own environment (``make lce-env``: ``.venv-lce`` with
requirements-lce.txt, TensorFlow 2.16 with tf-keras, larq, larq-compute-engine 0.16): it imports
numpy at the top, TensorFlow, larq and LCE inside the commands, and nothing of mlpbnn (which would
import JAX). The few packing helpers it needs are written here in numpy.

How the ops map (NHWC, float32):

- ``binary_conv``: larq ``QuantConv2D`` with ``ste_sign`` input and kernel quantizers (sign(0) =
  +1, as LCE's ``LceQuantize``: bit 1 for x < 0), its kernel the unpacked +-1 bits; then
  ``* scale + bias``, which LCE's converter fuses into the ``LceBconv2d`` as its per-channel
  post-activation multiplier and bias. A layer with sign(0) = -1 computes
  ``sign'(-x) * (-W)``, the same integers. Padding: LCE's ``same`` is TensorFlow's (at stride 2
  on an even size 0 before and 1 after, where PyTorch-style networks pad 1 and 1), so ``same`` is
  used only where TensorFlow's padding equals the layer's, zero padding then corrected by LCE
  itself (only on maps at least as large as the kernel: LCE's correction assumes that), +1 padding
  by ``pad_values=1``. Everywhere else the real input is padded explicitly with
  a value of the wanted sign (``PAD`` on floats before ``LceQuantize``) and the conv is VALID; for
  zero padding (not a +-1 value) the input is padded with +1 and the exact border correction (the
  sum of the weights of the taps that fall into the padding, per output position and channel, as
  ``mlpbnn.packed.border_correction``) times ``scale`` is added as a constant (Ho, Wo, O) map by
  ``RESHAPE`` (each sample flat) -> ``ADD`` -> ``RESHAPE`` (a constant ``ADD`` right after an
  ``LceBconv2d`` would be fused into its per-channel bias whatever its shape, and fail at runtime).
- ``binary_dense``: the same as a 1x1 binary conv on (N, 1, 1, C): also an ``LceBconv2d``.
- ``binary_conv_transpose``: LCE has no binary transposed conv: ``ste_sign`` of the input
  (``LceQuantize`` + ``LceDequantize``, +-1 floats) into a float ``TRANSPOSE_CONV`` with the +-1
  weights, cropped as PyTorch crops.
- real ops: ``conv`` (where the padding is not TensorFlow's ``same``, zeros concatenated around the
  input: LCE's converter would fuse a ``PAD`` into the conv as ``same`` without checking the
  amounts, so a 7x7 stride-2 stem padded 3/3 would become 2/3), ``dense``,
  ``affine``/``bias`` (``MUL``/``ADD`` by constants, fused into a preceding conv by the
  converter), ``prelu`` (``PRELU``), ``relu``, ``maxpool`` (-inf padding), ``avgpool`` (zero padding counted),
  ``global_avg_pool``, ``add``, ``concat``, ``upsample`` (nearest), ``channel_mean``,
  ``channel_repeat``, ``flatten``, ``conv_transpose``.

Any other op is refused with a one-line error naming it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "mlpbnn-packed"
VERSIONS = (1, 2)
PROGRAM = "model.json"
ARRAYS = "weights.npz"
WORD_BITS = 32
BINARY_OPS = ("binary_conv", "binary_dense")  # each becomes one LceBconv2d
LCE_OPS = ("LceQuantize", "LceBconv2d", "LceDequantize", "LceBMaxPool2d")


class LceError(ValueError):
    """The export cannot be converted or run; the message says why."""


# ------------------------------------------------------------------------------------------- numpy helpers


def unpack_signs(bits: np.ndarray, kernel_size: Sequence[int], in_channels: int) -> np.ndarray:
    """uint32 words (kh * kw, ceil(C / 32), O), channel ``32 j + i`` in bit ``i`` of word ``j``, bit 1
    for -1 (the export's packing) -> float32 +-1 weights (kh, kw, C, O)."""
    bits = np.asarray(bits, np.uint32)
    kh, kw = (int(k) for k in kernel_size)
    taps, cw, o = bits.shape
    if taps != kh * kw or cw * WORD_BITS < in_channels:
        raise LceError(f"packed weights {bits.shape} do not fit a {kh}x{kw} kernel with {in_channels} input channels")
    shifts = np.arange(WORD_BITS, dtype=np.uint32)[None, None, :, None]
    neg = ((bits[:, :, None, :] >> shifts) & 1).reshape(taps, cw * WORD_BITS, o)[:, :in_channels]
    return np.where(neg == 1, -1.0, 1.0).astype(np.float32).reshape(kh, kw, in_channels, o)


def same_padding(size: int, kernel: int, stride: int) -> list[int]:
    """TensorFlow's ``same`` padding [before, after] of one axis (the smaller half before)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return [total // 2, total - total // 2]


def border_correction(wsum: np.ndarray, in_hw: Sequence[int], strides: Sequence[int],
                      padding: Sequence[Sequence[int]]) -> np.ndarray:
    """(Ho, Wo, O) int64: for each output of a conv, the sum of ``wsum[dy, dx, o]`` (the weights of a
    tap summed over input channels) over its taps that fall into the padding: what padding with +1
    adds where the exact padding is 0."""
    kh, kw, _ = wsum.shape
    (pt, pb), (pl, pr) = padding
    h, w = in_hw
    ho, wo = (h + pt + pb - kh) // strides[0] + 1, (w + pl + pr - kw) // strides[1] + 1
    y = np.arange(ho)[:, None] * strides[0] - pt + np.arange(kh)  # (Ho, kh): input row of each tap
    x = np.arange(wo)[:, None] * strides[1] - pl + np.arange(kw)
    out_y, out_x = (y < 0) | (y >= h), (x < 0) | (x >= w)
    outside = out_y[:, None, :, None] | out_x[None, :, None, :]  # (Ho, Wo, kh, kw)
    return np.tensordot(outside.astype(np.int64), np.asarray(wsum, np.int64), axes=([2, 3], [0, 1]))


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if np.ndim(v) == 0 else [int(a) for a in v]


def _pads(v: Any) -> list[list[int]]:
    """[[t, b], [l, r]] from an int (symmetric) or the explicit form."""
    if np.ndim(v) == 0:
        return [[int(v)] * 2, [int(v)] * 2]
    return [[int(a) for a in p] for p in v]


def load_export(export_dir: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(model.json, arrays) of a ``python -m mlpbnn.export`` directory."""
    d = Path(export_dir)
    if not (d / PROGRAM).is_file() or not (d / ARRAYS).is_file():
        raise LceError(f"{d} is not a packed export (expected {PROGRAM} and {ARRAYS}; "
                       "create one with: python -m mlpbnn.export VARIABLES_DIR OUT_DIR)")
    doc = json.loads((d / PROGRAM).read_text())
    if doc.get("format") != FORMAT or doc.get("version") not in VERSIONS:
        raise LceError(f"{d / PROGRAM}: format {doc.get('format')!r} version {doc.get('version')!r}, expected "
                       f"{FORMAT!r} version {' or '.join(map(str, VERSIONS))}")
    with np.load(d / ARRAYS) as z:
        arrays = {k: z[k] for k in z.files}
    return doc, arrays


# ------------------------------------------------------------------------------------------- TensorFlow


def _tf() -> tuple[Any, Any]:
    """(tensorflow, larq), imported with tf-keras: larq needs Keras 2, which TF 2.16 gives only so."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import larq
        import tensorflow as tf
    except ImportError as e:
        raise LceError(f"{e}: run mlpbnn.lce in the LCE environment (make lce-env; .venv-lce/bin/python -m "
                       "mlpbnn.lce ...)") from e
    # larq warns about every binary kernel without a kernel_constraint (a training concern), TensorFlow
    # about metrics of the SavedModel the converter writes and reloads.
    logging.getLogger("larq").setLevel(logging.ERROR)
    tf.get_logger().setLevel(logging.ERROR)
    return tf, larq


_FN_LAYER: list[Any] = []


def _fn_layer(tf: Any) -> Any:
    """A Keras layer class that applies a Python function (made once, after TensorFlow's import)."""
    if not _FN_LAYER:
        class Fn(tf.keras.layers.Layer):
            def __init__(self, f: Any, **kwargs: Any):
                super().__init__(**kwargs)
                self.f = f

            def call(self, x: Any) -> Any:
                return self.f(x)

        _FN_LAYER.append(Fn)
    return _FN_LAYER[0]


class _Builder:
    """Keras tensors for the program's registers, one op at a time."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        self.tf, self.lq = _tf()
        self.arrays = arrays
        self.n = 0

    def name(self, what: str) -> str:
        self.n += 1
        return f"op{self.n}_{what}"

    def const(self, key: str) -> np.ndarray:
        return np.asarray(self.arrays[key], np.float32)

    def fn(self, what: str, f: Any, x: Any) -> Any:
        """``f`` (TensorFlow ops on constants) as a layer. Not a Keras ``Lambda``: converting saves the
        model as a SavedModel first, which cannot copy a Lambda's closure (the tf module)."""
        return _fn_layer(self.tf)(f, name=self.name(what))(x)

    def affine(self, x: Any, scale: np.ndarray | None, bias: np.ndarray | None) -> Any:
        tf = self.tf
        s = None if scale is None else tf.constant(np.asarray(scale, np.float32))
        b = None if bias is None else tf.constant(np.asarray(bias, np.float32))
        if s is not None:
            x = self.fn("mul", lambda t: t * s, x)
        if b is not None:
            x = self.fn("add", lambda t: t + b, x)
        return x

    def pad(self, x: Any, pads: Sequence[Sequence[int]], value: float) -> Any:
        tf = self.tf
        paddings = [[0, 0], list(pads[0]), list(pads[1]), [0, 0]]
        return self.fn("pad", lambda t: tf.pad(t, paddings, constant_values=value), x)

    def zero_pad(self, x: Any, pads: Sequence[Sequence[int]]) -> Any:
        """Zero padding of a float conv's input as CONCATENATION with zeros, not PAD: LCE's
        fuse-padding pass turns PAD -> CONV_2D (VALID) into TensorFlow's SAME whenever the output
        size is SAME's and pad_before = total // 2, without checking the total, so PyTorch's 3/3
        of a 7x7 stride-2 conv on an even size would silently become TensorFlow's 2/3."""
        tf = self.tf
        (t, b), (left, r) = pads

        def f(v: Any) -> Any:
            n, h, w, c = (int(d) for d in v.shape)
            parts = [tf.zeros([n, t, w, c]), v, tf.zeros([n, b, w, c])]
            v = tf.concat([p for p in parts if p.shape[1]], axis=1)
            h += t + b
            parts = [tf.zeros([n, h, left, c]), v, tf.zeros([n, h, r, c])]
            return tf.concat([p for p in parts if p.shape[2]], axis=2)

        return self.fn("pad", f, x)

    def padding_mode(self, x: Any, kernel: Sequence[int], strides: Sequence[int],
                     pads: Sequence[Sequence[int]]) -> str:
        """'valid' (no padding), 'same' (TensorFlow's same equals ``pads``) or 'explicit'."""
        if not any(any(p) for p in pads):
            return "valid"
        same = [same_padding(int(x.shape[1 + a]), kernel[a], strides[a]) for a in range(2)]
        return "same" if same == [list(p) for p in pads] else "explicit"

    # --- binary

    def binary_conv(self, x: Any, op: Mapping[str, Any]) -> Any:
        tf, lq = self.tf, self.lq
        ksize = _pair(op["kernel_size"])
        strides = _pair(op["strides"])
        pads = _pads(op["padding"])
        w = unpack_signs(self.arrays[op["bits"]], ksize, int(op["in_channels"]))
        if int(x.shape[-1]) != w.shape[2]:
            raise LceError(f"binary_conv {op['dst']!r}: input has {x.shape[-1]} channels, weights {w.shape[2]}")
        sign_zero, pad_value = float(op.get("sign_zero", 1.0)), float(op.get("pad_value", 0.0))
        if sign_zero == -1.0:  # sign(0) = -1: s(x) = -sign'(-x) with sign'(0) = +1, so conv(s, W) = conv(sign'(-x), -W)
            x, w = self.fn("neg", lambda t: -t, x), -w
        elif sign_zero != 1.0:
            raise LceError(f"binary_conv {op['dst']!r}: sign_zero must be +1 or -1, got {sign_zero}")
        q = pad_value * sign_zero  # the padding value of sign'(x) or sign'(-x)
        if q not in (0.0, 1.0, -1.0):
            raise LceError(f"binary_conv {op['dst']!r}: pad_value must be 0, +1 or -1, got {pad_value}")
        mode = self.padding_mode(x, ksize, strides, pads)
        corr = None
        if mode == "same" and q == -1.0:
            mode = "explicit"  # LCE's same pads with 0 or +1 only
        if mode == "same" and q == 0.0 and any(int(x.shape[1 + a]) < ksize[a] for a in range(2)):
            # LCE's zero-padding correction (bconv2d PaddingFunctor) assumes the kernel is no larger than
            # the input: where a window sticks out on both sides of an axis (a 3x3 conv on a 2-wide map)
            # it applies no correction at all.
            mode = "explicit"
        if mode == "explicit":
            in_hw = (int(x.shape[1]), int(x.shape[2]))
            x = self.pad(x, pads, -1.0 if q == -1.0 else 1.0)
            if q == 0.0:
                corr = border_correction(w.sum(axis=2), in_hw, strides, pads)
        conv = lq.layers.QuantConv2D(
            w.shape[3], ksize, strides=strides, padding="same" if mode == "same" else "valid",
            pad_values=q if mode == "same" else 0.0, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
            kernel_constraint=None, use_bias=False, name=self.name("binary_conv"))
        y = conv(x)
        conv.set_weights([w])
        scale = self.const(op["scale"])
        y = self.affine(y, scale, self.const(op["bias"]))
        if corr is not None and corr.any():
            # Added through a reshape: LCE's converter fuses any constant ADD that directly follows an
            # LceBconv2d into its per-channel post-activation bias, without checking the shape (a
            # (Ho, Wo, O) bias then fails at runtime: "NumDimensions(post_activation_bias) != 1").
            # Each sample flattened to one axis: TFLite moves a constant ADD before a RESHAPE when the
            # constant's shape is a tail of the reshape's input shape too, which (Ho * Wo, O) is where
            # Ho = 1; (Ho * Wo * O,) is that only where Ho = Wo = 1, a per-channel bias, fused correctly.
            n, ho, wo, o = (int(d) for d in y.shape)
            c = tf.constant((-corr * scale.astype(np.float64)).astype(np.float32).reshape(ho * wo * o))
            y = self.fn("border", lambda t: tf.reshape(tf.reshape(t, [n, ho * wo * o]) + c, [n, ho, wo, o]), y)
        return y

    def binary_dense(self, x: Any, op: Mapping[str, Any]) -> Any:
        tf = self.tf
        rank2 = len(x.shape) == 2
        if rank2:
            x = tf.keras.layers.Reshape((1, 1, int(x.shape[-1])), name=self.name("reshape"))(x)
        conv = {**op, "kernel_size": [1, 1], "strides": [1, 1], "padding": [[0, 0], [0, 0]], "pad_value": 0.0}
        y = self.binary_conv(x, conv)
        if rank2:
            y = tf.keras.layers.Reshape((int(y.shape[-1]),), name=self.name("reshape"))(y)
        return y

    def binary_conv_transpose(self, x: Any, op: Mapping[str, Any]) -> Any:
        ksize = _pair(op["kernel_size"])
        w = unpack_signs(self.arrays[op["bits"]], ksize, int(op["in_channels"]))
        sign_zero = float(op.get("sign_zero", 1.0))
        if sign_zero == -1.0:
            x, w = self.fn("neg", lambda t: -t, x), -w
        elif sign_zero != 1.0:
            raise LceError(f"binary_conv_transpose {op['dst']!r}: sign_zero must be +1 or -1, got {sign_zero}")
        s = self.lq.quantizers.SteSign(name=self.name("sign"))(x)
        y = self.transpose_conv(s, w, _pair(op["strides"]), _pads(op["padding"]))
        return self.affine(y, self.const(op["scale"]), self.const(op["bias"]))

    # --- real

    def transpose_conv(self, x: Any, kernel: np.ndarray, strides: Sequence[int], crop: Sequence[Sequence[int]]) -> Any:
        """PyTorch's ConvTranspose2d (no output padding) of the scatter-form kernel (kh, kw, Cin, Cout):
        TensorFlow's VALID conv2d_transpose (its filter (kh, kw, Cout, Cin)), then the crop."""
        tf = self.tf
        kh, kw, cin, cout = kernel.shape
        n, h, w = (int(d) for d in x.shape[:3])
        full = [(h - 1) * strides[0] + kh, (w - 1) * strides[1] + kw]
        filt = tf.constant(np.ascontiguousarray(np.transpose(kernel, (0, 1, 3, 2)), np.float32))
        (t, b), (left, r) = crop
        if t + b >= full[0] or left + r >= full[1]:
            raise LceError(f"transposed conv: crop {crop} leaves nothing of {full}")

        def f(v: Any) -> Any:
            y = tf.nn.conv2d_transpose(v, filt, [n, full[0], full[1], cout], [1, *strides, 1], "VALID")
            return y[:, t:full[0] - b, left:full[1] - r, :]

        return self.fn("conv_transpose", f, x)

    def conv(self, x: Any, op: Mapping[str, Any]) -> Any:
        k = self.const(op["kernel"])
        strides, pads = _pair(op["strides"]), _pads(op["padding"])
        mode = self.padding_mode(x, k.shape[:2], strides, pads)
        if mode == "explicit":
            x = self.zero_pad(x, pads)
        layer = self.tf.keras.layers.Conv2D(k.shape[3], k.shape[:2], strides=strides,
                                            padding="same" if mode == "same" else "valid", use_bias=False,
                                            name=self.name("conv"))
        y = layer(x)
        layer.set_weights([k])
        return y

    def dense(self, x: Any, op: Mapping[str, Any]) -> Any:
        k = self.const(op["kernel"])
        layer = self.tf.keras.layers.Dense(k.shape[1], name=self.name("dense"))
        y = layer(x)
        layer.set_weights([k, self.const(op["bias"])])
        return y

    def prelu(self, x: Any, op: Mapping[str, Any]) -> Any:
        slope = self.const(op["slope"])
        shared = list(range(1, len(x.shape) - 1)) or None
        layer = self.tf.keras.layers.PReLU(shared_axes=shared, name=self.name("prelu"))
        y = layer(x)
        layer.set_weights([slope.reshape([1] * (len(x.shape) - 2) + [-1])])
        return y

    def maxpool(self, x: Any, op: Mapping[str, Any]) -> Any:
        window, strides, pads = _pair(op["window"]), _pair(op["strides"]), _pads(op.get("padding", 0))
        mode = self.padding_mode(x, window, strides, pads)
        if mode == "explicit":
            x = self.pad(x, pads, -np.inf)
        return self.tf.keras.layers.MaxPool2D(window, strides, padding="same" if mode == "same" else "valid",
                                              name=self.name("maxpool"))(x)

    def avgpool(self, x: Any, op: Mapping[str, Any]) -> Any:
        pads = _pads(op.get("padding", 0))
        if any(any(p) for p in pads):  # zeros counted in the mean (PyTorch's count_include_pad)
            x = self.zero_pad(x, pads)
        return self.tf.keras.layers.AveragePooling2D(_pair(op["window"]), _pair(op["strides"]), padding="valid",
                                                     name=self.name("avgpool"))(x)

    def apply(self, op: Mapping[str, Any], src: Any) -> Any:
        tf, L = self.tf, self.tf.keras.layers
        kind = op["op"]
        if kind in ("binary_conv", "binary_dense", "binary_conv_transpose", "conv", "dense", "prelu", "maxpool",
                    "avgpool"):
            return getattr(self, kind)(src, op)
        if kind == "conv_transpose":
            return self.transpose_conv(src, self.const(op["kernel"]), _pair(op["strides"]), _pads(op["padding"]))
        if kind == "affine":
            return self.affine(src, self.const(op["scale"]), self.const(op["bias"]))
        if kind == "bias":
            return self.affine(src, None, self.const(op["bias"]))
        if kind == "relu":
            return L.ReLU(name=self.name("relu"))(src)
        if kind == "global_avg_pool":
            return L.GlobalAveragePooling2D(keepdims=bool(op.get("keepdims", False)), name=self.name("gap"))(src)
        if kind == "add":
            return L.Add(name=self.name("add"))(list(src))
        if kind == "concat":
            return L.Concatenate(axis=-1, name=self.name("concat"))(list(src))
        if kind == "upsample":
            return L.UpSampling2D(_pair(op["factors"]), interpolation="nearest", name=self.name("upsample"))(src)
        if kind == "flatten":
            return L.Flatten(name=self.name("flatten"))(src)
        if kind == "channel_mean":
            g, c = int(op["group"]), int(src.shape[-1])
            if c % g:
                raise LceError(f"channel_mean {op['dst']!r}: {c} channels are not a multiple of the group {g}")
            shape = [int(d) for d in src.shape[:-1]]
            return self.fn("channel_mean", lambda t: tf.reduce_mean(tf.reshape(t, [*shape, c // g, g]), axis=-1),
                           src)
        if kind == "channel_repeat":
            r, c = int(op["factor"]), int(src.shape[-1])
            shape = [int(d) for d in src.shape[:-1]]
            return self.fn("channel_repeat", lambda t: tf.reshape(
                tf.tile(tf.reshape(t, [*shape, c, 1]), [1] * (len(shape) + 1) + [r]), [*shape, c * r]), src)
        raise LceError(f"op {kind!r} is not supported by the LCE converter; supported: {', '.join(SUPPORTED)}")


SUPPORTED = ("conv", "conv_transpose", "dense", "affine", "bias", "prelu", "relu", "maxpool", "avgpool",
             "global_avg_pool", "add", "concat", "upsample", "channel_mean", "channel_repeat", "flatten",
             "binary_conv", "binary_conv_transpose", "binary_dense")


def keras_model(doc: Mapping[str, Any], arrays: Mapping[str, np.ndarray], batch: int = 1) -> Any:
    """The export's program as a tf-keras functional model with a fixed batch size."""
    for i, op in enumerate(doc["ops"]):  # refuse before building anything
        if op.get("op") not in SUPPORTED:
            raise LceError(f"op {i}: {op.get('op')!r} is not supported by the LCE converter; supported: "
                           f"{', '.join(SUPPORTED)}")
    spec = doc.get("input_spec") or {}
    if not all(k in spec for k in ("height", "width", "channels")):
        raise LceError("model.json has no input_spec with height, width and channels")
    b = _Builder(arrays)
    x = b.tf.keras.Input((int(spec["height"]), int(spec["width"]), int(spec["channels"])), batch_size=batch,
                         name="input")
    regs = {doc.get("input", "input"): x}
    for i, op in enumerate(doc["ops"]):
        srcs = op["src"] if isinstance(op["src"], list) else [op["src"]]
        missing = [s for s in srcs if s not in regs]
        if missing:
            raise LceError(f"op {i} ({op['op']}): register(s) {missing} not written before")
        src = [regs[s] for s in srcs] if isinstance(op["src"], list) else regs[op["src"]]
        try:
            regs[op["dst"]] = b.apply(op, src)
        except KeyError as e:
            raise LceError(f"op {i} ({op['op']}): missing field or array {e}") from e
    out = doc.get("output", "output")
    return b.tf.keras.Model(x, regs[out], name="mlpbnn")


def op_names(flatbuffer: bytes) -> dict[str, int]:
    """{op name: count} over all subgraphs of a TFLite flatbuffer: builtin ops by their schema name
    (CONV_2D, ...), custom ops by their custom code (LceBconv2d, ...)."""
    from larq_compute_engine.mlir.python import tflite_schema as schema

    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(flatbuffer, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        custom = code == schema.BuiltinOperator.CUSTOM
        codes.append(oc.CustomCode().decode() if custom else builtin.get(code, str(code)))
    counts: dict[str, int] = {}
    for g in range(model.SubgraphsLength()):
        sub = model.Subgraphs(g)
        for j in range(sub.OperatorsLength()):
            name = codes[sub.Operators(j).OpcodeIndex()]
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def convert(export_dir: str | Path, out: str | Path, batch: int = 1) -> dict[str, Any]:
    """Writes the export as an LCE flatbuffer; returns a summary with its op names."""
    doc, arrays = load_export(export_dir)
    model = keras_model(doc, arrays, batch)
    import larq_compute_engine as lce

    flatbuffer = lce.convert_keras_model(model)
    ops = op_names(flatbuffer)
    binary = sum(op["op"] in BINARY_OPS for op in doc["ops"])
    if ops.get("LceBconv2d", 0) != binary:
        raise LceError(f"the converter made {ops.get('LceBconv2d', 0)} LceBconv2d op(s) of the {binary} binary "
                       f"layer(s); ops: {ops}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(flatbuffer)
    tmp.replace(out)
    return {"out": str(out.absolute()), "bytes": len(flatbuffer), "batch": batch,
            "input": list(model.input_shape), "output": list(model.output_shape), "binary_layers": binary,
            "ops": ops, "lce_ops": {k: v for k, v in ops.items() if k.startswith("Lce")},
            "larq_compute_engine": lce.__version__}


# ------------------------------------------------------------------------------------------- running


def interpreter(tflite: str | Path, threads: int = 1, xnnpack: bool = False) -> Any:
    """LCE's interpreter (``larq_compute_engine.tflite.python.interpreter.Interpreter``) of a flatbuffer."""
    _tf()
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    return Interpreter(Path(tflite).read_bytes(), num_threads=threads, use_xnnpack=xnnpack)


def run(tflite: str | Path, x: np.ndarray, threads: int = 1, xnnpack: bool = False) -> np.ndarray:
    """Outputs of the NHWC float batch ``x`` (any size: run in chunks of the model's batch size, the
    last one padded with zeros)."""
    it = interpreter(tflite, threads, xnnpack)
    shape = tuple(it.input_shapes[0])
    x = np.asarray(x, np.float32)
    if x.ndim == len(shape) - 1:
        x = x[None]
    if x.shape[1:] != shape[1:]:
        raise LceError(f"inputs of shape {x.shape[1:]} per sample, the model takes {shape[1:]}")
    b = shape[0]
    outs = []
    for start in range(0, len(x), b):
        chunk = x[start:start + b]
        n = len(chunk)
        if n < b:
            chunk = np.concatenate([chunk, np.zeros((b - n, *shape[1:]), np.float32)])
        outs.append(np.asarray(it.interpreter.predict([np.ascontiguousarray(chunk)])[0])[:n])
    return np.concatenate(outs)


def bench(tflite: str | Path, batch: int | None = None, threads: int = 1, rounds: int = 20, warmup: int = 3,
          xnnpack: bool = False) -> dict[str, Any]:
    """Per-call latencies of LCE's interpreter on one random batch (seconds)."""
    it = interpreter(tflite, threads, xnnpack)
    shape = tuple(it.input_shapes[0])
    if batch is not None and batch != shape[0]:
        raise LceError(f"{tflite} was converted for batch {shape[0]}, not {batch} (convert --batch {batch})")
    x = [np.random.default_rng(0).standard_normal(shape).astype(np.float32)]
    for _ in range(warmup):
        it.interpreter.predict(x)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        it.interpreter.predict(x)
        times.append(time.perf_counter() - t0)
    import larq_compute_engine as lce

    return {"tflite": str(Path(tflite).absolute()), "batch": shape[0], "threads": threads, "xnnpack": xnnpack,
            "rounds": rounds, "warmup": warmup, "median_s": statistics.median(times), "min_s": min(times),
            "times_s": times, "runtime": f"larq_compute_engine {lce.__version__} Python interpreter",
            "machine": platform.machine()}


# ------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlpbnn.lce", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="write an export as an LCE TFLite flatbuffer")
    p.add_argument("export_dir")
    p.add_argument("out", help="the .tflite file to write")
    p.add_argument("--batch", type=int, default=1, help="the model's fixed batch size (default 1)")
    for name, text in (("run", "run a flatbuffer on a .npy batch (NHWC, preprocessed)"),
                       ("bench", "time a flatbuffer (JSON on stdout)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("tflite")
        if name == "run":
            p.add_argument("inputs", help=".npy, (N, H, W, C) float32")
            p.add_argument("outputs", help=".npy to write")
        else:
            p.add_argument("--batch", type=int, default=None, help="check the model's batch size")
            p.add_argument("--rounds", type=int, default=20)
            p.add_argument("--warmup", type=int, default=3)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--xnnpack", action="store_true", help="TFLite's XNNPACK delegate for the float ops")
    args = parser.parse_args(argv)
    try:
        if args.command == "convert":
            print(json.dumps(convert(args.export_dir, args.out, args.batch)))
        elif args.command == "run":
            y = run(args.tflite, np.load(args.inputs), args.threads, args.xnnpack)
            np.save(args.outputs, y)
            print(json.dumps({"outputs": str(Path(args.outputs).absolute()), "shape": list(y.shape)}))
        else:
            print(json.dumps(bench(args.tflite, args.batch, args.threads, args.rounds, args.warmup, args.xnnpack)))
    except (LceError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
