"""Bit-packed XNOR-popcount inference: the kernels and a small interpreter of packed programs.

A binary convolution of +-1 activations x with +-1 weights w is an integer per output:
``sum_k x_k w_k = K - 2 * popcount(bits(x) XOR bits(w))`` with bit 1 standing for -1 (XNOR-Net,
Rastegari et al., arXiv 1603.05279; Bi-Real Net, Liu et al., arXiv 1808.00278). Here the bits of
32 input channels are packed into one uint32 word (channel ``32 j + i`` is bit ``i`` of word
``j``; channels are padded to a multiple of 32 with bit 0 in activations and weights alike, so
the padding bits never differ and ``K`` counts the real channels only).

The convolution is written as XLA elementwise fusions over the output (N, Ho, Wo, O): for each
of the ``kh * kw * Cw`` (tap, word) pairs a strided slice of the packed input (a scalar per output
pixel, broadcast along O) is XORed with that pair's row of weight words (a vector along O) and
its ``lax.population_count`` added up. XLA:CPU hoists the pixel's words into registers and runs
the O loop with vector popcounts (``vpopcntd`` where the CPU has AVX-512 VPOPCNTDQ), so no
im2col buffer and no reduction loop is needed. ``bench/latency.py`` measures it against XLA's float
convolution and against the two alternatives tried (im2col patches with a reduction over words,
and channel blocking, which puts blocks of O outermost so that a block's weights stay in L1).

Padding. The BBC/Bi-Real networks pad binary convolutions with 0, which is not a +-1 value. The
packed kernel pads with +1 (bit 0); each tap that falls into the padding then adds
``sum_c w[tap, c, o]`` instead of 0, so the exact result is the +1-padded one minus
``border_correction``: a per-output-position, per-channel integer that is nonzero only on the
border and depends only on the weights and the input size. Networks trained with
``pad_value=+-1`` (``BinaryConv.pad_value``) need no correction.

A packed *program* is a list of ops (JSON-able dicts) over named registers plus a dict of arrays;
``run_program`` interprets it inside ``jax.jit`` and ``PackedNetwork`` wraps a program for repeated
calls. ``mlpbnn.export`` writes programs; ``mlpbnn.infer`` runs them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mlpbnn.conv import conv_transpose

Array = jax.Array
WORD_BITS = 32
WORD_DTYPE = jnp.uint32
# Ops a program may hold, with their required fields (beyond "op", "src", "dst"); the IR is
# documented in ``mlpbnn.lowering``, which writes it.
OPS: dict[str, tuple[str, ...]] = {
    "conv": ("kernel", "strides", "padding"),
    "conv_transpose": ("kernel", "strides", "padding"),
    "dense": ("kernel", "bias"),
    "affine": ("scale", "bias"),
    "bias": ("bias",),
    "prelu": ("slope",),
    "relu": (),
    "maxpool": ("window", "strides", "padding"),
    "avgpool": ("window", "strides"),
    "global_avg_pool": (),
    "add": (),
    "concat": (),
    "upsample": ("factors",),
    "channel_mean": ("group",),
    "channel_repeat": ("factor",),
    "flatten": (),
    "binary_conv": ("bits", "in_channels", "kernel_size", "strides", "padding", "pad_value", "sign_zero",
                    "scale", "bias"),
    "binary_conv_transpose": ("bits", "in_channels", "kernel_size", "strides", "padding", "sign_zero", "scale",
                              "bias"),
    "binary_dense": ("bits", "in_channels", "sign_zero", "scale", "bias"),
}
BINARY_OPS = ("binary_conv", "binary_conv_transpose", "binary_dense")
LAYOUTS = ("direct", "blocked")


def words(channels: int) -> int:
    """Number of uint32 words holding ``channels`` bits."""
    return -(-channels // WORD_BITS)


# ------------------------------------------------------------------------------------------- packing


def pack_signs(x: Array, sign_zero: float = 1.0) -> Array:
    """Packs the signs of ``x`` (..., C) into uint32 words (..., ceil(C / 32)); bit 1 means -1.

    ``sign_zero`` is the value of sign(0): +1 (the estimators' default: bit 0 for x = 0) or -1.
    sign(0) = 0 has no one-bit code and is refused.
    """
    if sign_zero == 1.0:
        neg = x < 0
    elif sign_zero == -1.0:
        neg = x <= 0
    else:
        raise ValueError(f"sign(0) must be +1 or -1 to be packed into bits, got {sign_zero!r}")
    c = x.shape[-1]
    cw = words(c)
    if cw * WORD_BITS != c:
        neg = jnp.pad(neg, [(0, 0)] * (x.ndim - 1) + [(0, cw * WORD_BITS - c)])
    # Bytes first (jnp.packbits, bit i of byte k = channel 8k + i), then four bytes per word by
    # shifts: explicit about the byte order, and faster than 32 shifted bits (0.10 vs 0.14 ms on
    # a 56x56x64 map). The shifted parts are disjoint, so their sum is their OR.
    b = jnp.packbits(neg.reshape(*x.shape[:-1], cw * 4, 8), axis=-1, bitorder="little")
    b = b.reshape(*x.shape[:-1], cw, 4).astype(WORD_DTYPE)
    return jnp.sum(b << jnp.asarray([0, 8, 16, 24], WORD_DTYPE), axis=-1, dtype=WORD_DTYPE)


def pack_weight_signs(signs: np.ndarray) -> np.ndarray:
    """+-1 HWIO weights (kh, kw, C, O) -> uint32 (kh * kw, ceil(C / 32), O), bit 1 for -1.

    Raises if any weight is not +-1 (e.g. sign(0) = 0 of an estimator with ``zero=0``)."""
    signs = np.asarray(signs)
    if signs.ndim != 4:
        raise ValueError(f"expected HWIO weights, got shape {signs.shape}")
    bad = ~np.isin(signs, (-1.0, 1.0))
    if bad.any():
        raise ValueError(f"{int(bad.sum())} weight(s) are not +-1 (values {np.unique(signs[bad])[:5]}); "
                         "only +-1 weights can be bit-packed")
    kh, kw, c, o = signs.shape
    cw = words(c)
    neg = np.zeros((kh * kw, o, cw * WORD_BITS), bool)
    neg[:, :, :c] = np.transpose(signs < 0, (0, 1, 3, 2)).reshape(kh * kw, o, c)
    packed = np.packbits(neg.reshape(kh * kw, o, cw, WORD_BITS), axis=-1, bitorder="little")
    w = packed.reshape(kh * kw, o, cw, 4).view("<u4")[..., 0]  # bytes 0..3 little-endian: bit i is channel i
    return np.ascontiguousarray(np.transpose(w, (0, 2, 1))).astype(np.uint32)


def unpack_weight_signs(bits: np.ndarray, kernel_size: Sequence[int], in_channels: int) -> np.ndarray:
    """Inverse of ``pack_weight_signs``: float32 +-1 HWIO weights."""
    kh, kw = kernel_size
    t, cw, o = bits.shape
    b = np.transpose(np.asarray(bits, "<u4"), (0, 2, 1))[..., None].view(np.uint8)  # (t, o, cw, 4)
    neg = np.unpackbits(b, axis=-1, bitorder="little").reshape(t, o, cw * WORD_BITS)[:, :, :in_channels]
    return np.transpose(np.where(neg, -1.0, 1.0).astype(np.float32).reshape(kh, kw, o, in_channels), (0, 1, 3, 2))


# ------------------------------------------------------------------------------------------- convolution


def out_size(size: int, kernel: int, stride: int, pad: tuple[int, int]) -> int:
    return (size + pad[0] + pad[1] - kernel) // stride + 1


def xnor_conv(xbits: Array, wbits: Array, n_bits: int, kernel_size: Sequence[int], strides: Sequence[int],
              layout: str = "direct", block: int = 64) -> Array:
    """sum_k x_k w_k of a VALID convolution of packed, already padded inputs, as int32.

    Args:
      xbits: (N, H, W, Cw) uint32, the packed +-1 input (padding included).
      wbits: (kh * kw, Cw, O) uint32 from ``pack_weight_signs``.
      n_bits: K = kh * kw * C, the number of real +-1 products per output.
      layout: 'direct' (one fusion over (N, Ho, Wo, O)) or 'blocked' (output channel blocks of
        ``block`` outermost, so that a block's weights stay in cache; then transposed back).
    Returns (N, Ho, Wo, O) int32 = K - 2 * popcount(x XOR w) summed over taps and words: one
    elementwise fusion, which XLA may fuse into its consumers (``stored_xnor_conv`` prevents it).
    """
    kh, kw = kernel_size
    sh, sw = strides
    n, h, w, cw = xbits.shape
    t, cw2, o = wbits.shape
    if (t, cw2) != (kh * kw, cw):
        raise ValueError(f"packed weights {wbits.shape} do not match kernel {kh}x{kw} and {cw} input words")
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    if layout == "blocked" and o % block == 0 and o > block:
        wv = wbits.reshape(t, cw, o // block, 1, 1, 1, block)
        lead = (None,)
    elif layout in LAYOUTS:
        wv, lead = wbits, ()
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    acc = None
    for tap in range(t):
        dy, dx = divmod(tap, kw)
        for j in range(cw):
            a = xbits[:, dy:dy + sh * (ho - 1) + 1:sh, dx:dx + sw * (wo - 1) + 1:sw, j]
            a = a[(*lead, Ellipsis, None)]
            term = lax.population_count(a ^ wv[tap, j]).astype(jnp.int32)
            acc = term if acc is None else acc + term
    out = n_bits - 2 * acc
    if lead:
        out = jnp.moveaxis(out, 0, -2).reshape(n, ho, wo, o)
    return out


def stored_xnor_conv(xbits: Array, wbits: Array, n_bits: int, kernel_size: Sequence[int],
                     strides: Sequence[int], layout: str = "direct", block: int = 64) -> Array:
    """``xnor_conv`` whose result XLA:CPU stores rather than fusing it into its consumers.

    The output channels are computed in two parts (multiples of ``block`` for the blocked layout
    where the channels allow, else the first a multiple of 16 from 32 channels on) joined by a
    concatenation: XLA:CPU materializes a concatenation. ``optimization_barrier`` cannot do this,
    as XLA:CPU removes it before fusion. Where the popcount sum is fused instead, a chain of
    binary blocks whose outputs feed both the next sign and a shortcut add becomes one fusion
    that recomputes every earlier conv in every later consumer, in scalar code (``run_program``'s
    ``store``; README, "Packed inference and latency").
    """
    o = wbits.shape[-1]
    if o < 2:
        return xnor_conv(xbits, wbits, n_bits, kernel_size, strides, layout, block)
    if layout == "blocked" and o % block == 0 and o >= 2 * block:
        h = block * (o // block // 2)
    else:
        h = -(-(o // 2) // 16) * 16 if o >= 32 else o // 2
    return jnp.concatenate([xnor_conv(xbits, wbits[..., :h], n_bits, kernel_size, strides, layout, block),
                            xnor_conv(xbits, wbits[..., h:], n_bits, kernel_size, strides, layout, block)], axis=-1)


def border_correction(wsum: np.ndarray, in_hw: Sequence[int], strides: Sequence[int],
                      padding: Sequence[Sequence[int]], pad_sign: float = 1.0) -> np.ndarray:
    """What padding with ``pad_sign`` (+-1) adds to each output of a conv whose exact padding is 0.

    ``wsum`` (kh, kw, O) holds sum_c w[dy, dx, c, o]; the result (Ho, Wo, O) int64 is
    ``pad_sign * sum_{taps of output (i, j) that fall outside the input} wsum[tap]``, nonzero only
    on the border. Subtracting it from a +-1-padded convolution gives the zero-padded one exactly.
    """
    kh, kw, _ = wsum.shape
    h, w = in_hw
    (pt, pb), (pl, pr) = padding
    ho, wo = out_size(h, kh, strides[0], (pt, pb)), out_size(w, kw, strides[1], (pl, pr))
    rows = np.arange(ho)[:, None] * strides[0] + np.arange(kh)[None, :] - pt
    cols = np.arange(wo)[:, None] * strides[1] + np.arange(kw)[None, :] - pl
    row_out = (rows < 0) | (rows >= h)
    col_out = (cols < 0) | (cols >= w)
    outside = row_out[:, None, :, None] | col_out[None, :, None, :]  # (Ho, Wo, kh, kw)
    return pad_sign * np.einsum("hwyx,yxo->hwo", outside.astype(np.int64), np.asarray(wsum, np.int64))


def binary_conv(x: Array, bits: Array, in_channels: int, kernel_size: Sequence[int], strides: Sequence[int],
                padding: Sequence[Sequence[int]], pad_value: float, sign_zero: float = 1.0,
                wsum: np.ndarray | None = None, layout: str = "direct", store: bool = False) -> Array:
    """The integer conv(sign(x), w) of a binary layer, its padding value ``pad_value`` exact.

    ``x`` is real (N, H, W, C); its signs are packed, padded spatially (with ``pad_value``, or with
    +1 and then corrected by ``border_correction`` of ``wsum`` when ``pad_value`` is 0) and
    convolved by ``xnor_conv`` (``stored_xnor_conv`` with ``store``). Returns int32 (N, Ho, Wo, O).
    """
    (pt, pb), (pl, pr) = padding
    padded = any((pt, pb, pl, pr))
    if pad_value not in (0.0, 1.0, -1.0):
        raise ValueError(f"pad_value must be 0, 1 or -1, got {pad_value!r}")
    if padded and pad_value == 0.0 and wsum is None:
        raise ValueError("zero padding needs the weights' per-tap sums (wsum) for the border correction")
    xb = pack_signs(x, sign_zero)
    if padded:
        # +1 is bit 0 in every word; -1 is bit 1 on the real channels only (padding channels stay 0).
        word = 0
        if pad_value == -1.0:
            word = np.zeros(xb.shape[-1], np.uint32)
            full, rest = divmod(in_channels, WORD_BITS)
            word[:full] = 0xFFFFFFFF
            if rest:
                word[full] = (1 << rest) - 1
        xb = jnp.pad(xb, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        if pad_value == -1.0:
            h, w = x.shape[1:3]
            inside = np.zeros((h + pt + pb, w + pl + pr, 1), bool)
            inside[pt:pt + h, pl:pl + w] = True
            xb = jnp.where(inside, xb, jnp.asarray(word))
    kh, kw = kernel_size
    acc = (stored_xnor_conv if store else xnor_conv)(xb, bits, kh * kw * in_channels, kernel_size, strides, layout)
    if padded and pad_value == 0.0:
        corr = border_correction(wsum, x.shape[1:3], strides, padding)
        acc = acc - jnp.asarray(corr.astype(np.int32))
    return acc


# ------------------------------------------------------------------------------------------- transposed convolution


def _transpose_phase(rho: int, kernel: int, stride: int, pad_lo: int) -> tuple[list[int], int]:
    """One axis of output phase ``rho`` of a transposed convolution (outputs s t + rho).

    Output s t + rho is full-output index s (t + q) + r with (q, r) = divmod(rho + p, s); tap
    r + s j reads input t + q - j. Returns the phase's taps reversed, [r + s (m - 1), ..., r] (so
    that the phase is a stride-1 correlation), and the input index ``a = q - (m - 1)`` its output
    0 reads with the first of them; output t reads inputs a + t .. a + t + m - 1."""
    q, r = divmod(rho + pad_lo, stride)
    taps = list(range(r, kernel, stride))[::-1]
    return taps, q - (len(taps) - 1)


def binary_conv_transpose(x: Array, bits: Array, in_channels: int, kernel_size: Sequence[int],
                          strides: Sequence[int], padding: Sequence[Sequence[int]], sign_zero: float = 1.0,
                          wsum: np.ndarray | None = None, layout: str = "direct") -> Array:
    """The integer ``conv_transpose(sign(x), W)`` of a binary deconvolution, on packed words.

    ``W = unpack_weight_signs(bits, kernel_size, in_channels)`` is the +-1 scatter-form kernel
    (kh, kw, C, O) of ``mlpbnn.conv.conv_transpose`` (PyTorch's ``conv_transpose2d``), ``padding``
    PyTorch's crop per side ((top, bottom), (left, right)), >= 0; the output is (N, Ho, Wo, O) int32
    with Ho = (H - 1) sh + kh - top - bottom.

    Computed in the sub-pixel view (Shi et al., arXiv 1609.05158) rather than on the s-dilated
    input, whose holes would be most of the XNOR work: output phase (rho_h, rho_w) is a stride-1
    correlation of x with the phase's taps of W (rows of ``bits``, reversed), one ``xnor_conv`` of
    the input packed once, and the s_h * s_w phases are interleaved depth-to-space. Taps that fall
    outside the input are structural zeros (no product at all), which bits cannot hold: the
    packed input is padded with +1 words, which adds the taps' weight sums, and the exact result
    is that minus ``border_correction`` of ``wsum`` = W.sum(axis=2) (kh, kw, O), a constant
    computed in numpy at trace time. ``wsum`` is required whenever a phase reaches outside the
    input (any k > s or p > 0 in practice).
    """
    kh, kw = kernel_size
    sh, sw = strides
    (pt, pb), (pl, pr) = padding
    if min(pt, pb, pl, pr) < 0:
        raise ValueError(f"binary_conv_transpose: padding must be >= 0 (PyTorch's crop per side), got {padding}")
    if min(sh, sw) < 1:
        raise ValueError(f"binary_conv_transpose: strides must be positive, got {strides}")
    if x.ndim != 4 or x.shape[-1] != in_channels:
        raise ValueError(f"binary_conv_transpose: expected NHWC input with {in_channels} channels, got {x.shape}")
    n, h, w, _ = x.shape
    o = bits.shape[-1]
    if bits.shape != (kh * kw, words(in_channels), o):
        raise ValueError(f"binary_conv_transpose: packed weights {bits.shape} do not match kernel {kh}x{kw} and "
                         f"{in_channels} input channels (expected ({kh * kw}, {words(in_channels)}, O))")
    if wsum is not None and np.shape(wsum) != (kh, kw, o):
        raise ValueError(f"binary_conv_transpose: wsum has shape {np.shape(wsum)}, expected {(kh, kw, o)}")
    oh, ow = (h - 1) * sh + kh - pt - pb, (w - 1) * sw + kw - pl - pr
    if min(oh, ow) < 1:
        raise ValueError(f"binary_conv_transpose of {(h, w)} with kernel {(kh, kw)}, strides {(sh, sw)} and padding "
                         f"{padding} has an empty output {(oh, ow)}")
    th, tw = -(-oh // sh), -(-ow // sw)  # rows/columns of phase 0; later phases may have one fewer

    def axis_phases(out: int, k: int, s: int, lo: int) -> list[tuple[list[int], int, int]]:
        """Per phase: reversed taps, first input read, output count (exact, so no cropped output
        reaches outside the input)."""
        return [(*_transpose_phase(rho, k, s, lo), len(range(rho, out, s))) for rho in range(s)]

    rows, cols = axis_phases(oh, kh, sh, pt), axis_phases(ow, kw, sw, pl)

    def pads(phases: list[tuple[list[int], int, int]], size: int) -> tuple[int, int]:
        """Padding of the packed input that every phase's window [a, a + len + m - 1) fits in."""
        live = [(a, a + t + len(taps) - 1) for taps, a, t in phases if taps and t]
        return max([0] + [-a for a, _ in live]), max([0] + [e - size for _, e in live])

    (lo_h, hi_h), (lo_w, hi_w) = pads(rows, h), pads(cols, w)
    padded = any((lo_h, hi_h, lo_w, hi_w))
    if padded and wsum is None:
        raise ValueError("binary_conv_transpose: taps outside the input need the weights' per-tap sums (wsum, "
                         "(kh, kw, O) = W.sum(axis=2)) for the structural-zero correction")
    xb = pack_signs(x, sign_zero)
    if padded:
        xb = jnp.pad(xb, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))  # +1: bit 0 in every word
    bits = jnp.asarray(bits)
    phase_rows = []
    for taps_h, ah, nh in rows:
        phase_cols = []
        for taps_w, aw, nw in cols:
            mh, mw = len(taps_h), len(taps_w)
            if not (mh and mw and nh and nw):  # k < s (no tap reaches this phase) or a phase past the output
                phase_cols.append(jnp.zeros((n, th, tw, o), jnp.int32))
                continue
            lh, lw = nh + mh - 1, nw + mw - 1  # the phase's input window
            xs = xb[:, lo_h + ah:lo_h + ah + lh, lo_w + aw:lo_w + aw + lw]
            sub = bits[np.asarray([i * kw + j for i in taps_h for j in taps_w])]
            acc = xnor_conv(xs, sub, mh * mw * in_channels, (mh, mw), (1, 1), layout)
            if wsum is not None:
                # The window as a padding of the input (negative: a crop): border_correction sums the
                # weights of exactly the taps that read outside [0, h) x [0, w).
                corr = border_correction(np.asarray(wsum)[np.ix_(taps_h, taps_w)], (h, w), (1, 1),
                                         ((-ah, ah + lh - h), (-aw, aw + lw - w)))
                if corr.any():
                    acc = acc - jnp.asarray(corr.astype(np.int32))
            if (nh, nw) != (th, tw):
                acc = jnp.pad(acc, ((0, 0), (0, th - nh), (0, tw - nw), (0, 0)))
            phase_cols.append(acc)
        phase_rows.append(jnp.stack(phase_cols, axis=3))  # (n, th, tw, sw, o)
    y = jnp.stack(phase_rows, axis=2).reshape(n, th * sh, tw * sw, o)  # (n, th, sh, tw, sw, o) depth-to-space
    return y if (th * sh, tw * sw) == (oh, ow) else y[:, :oh, :ow]


def float_binary_conv_transpose(x: Array, weights: Array, strides: Sequence[int],
                                padding: Sequence[Sequence[int]], sign_zero: float = 1.0) -> Array:
    """The same binary deconvolution in float: sign(x) (sign(0) = ``sign_zero``) transposed-convolved
    with the +-1 scatter-form ``weights`` (kh, kw, C, O) by ``mlpbnn.conv.conv_transpose``
    (PyTorch's ``conv_transpose2d``, ``padding`` cropped per side). The float reference path."""
    s = jnp.where(x > 0, 1.0, jnp.where(x < 0, -1.0, sign_zero)).astype(x.dtype)
    return conv_transpose(s, weights.astype(x.dtype), tuple(strides), tuple(tuple(p) for p in padding))


# ------------------------------------------------------------------------------------------- programs


def check_program(program: Mapping[str, Any], arrays: Mapping[str, Any]) -> None:
    """Raises ValueError naming the first op that is unknown, lacks a field or names a missing array."""
    for i, op in enumerate(program["ops"]):
        kind = op.get("op")
        if kind not in OPS:
            raise ValueError(f"op {i}: unknown op {kind!r}; valid: {', '.join(OPS)}")
        missing = [f for f in ("src", "dst", *OPS[kind]) if f not in op]
        if missing:
            raise ValueError(f"op {i} ({kind}): missing field(s) {missing}")
        for f in ("kernel", "bias", "scale", "slope", "bits"):
            if f in op and op[f] not in arrays:
                raise ValueError(f"op {i} ({kind}): array {op[f]!r} not found")


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def _pads(v: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """A pooling op's padding: an int (symmetric, format 1) or ((top, bottom), (left, right))."""
    if isinstance(v, (int, np.integer)):
        return ((int(v), int(v)), (int(v), int(v)))
    return (tuple(map(int, v[0])), tuple(map(int, v[1])))  # type: ignore[return-value]


def _pool(x: Array, init: float, fn: Any, op: Mapping[str, Any]) -> Array:
    (wh, ww), (sh, sw) = _pair(op["window"]), _pair(op["strides"])
    pads = ((0, 0), *_pads(op.get("padding", 0)), (0, 0))
    return lax.reduce_window(x, jnp.asarray(init, x.dtype), fn, (1, wh, ww, 1), (1, sh, sw, 1), pads)


def sign(x: Array, sign_zero: float = 1.0) -> Array:
    """+-1 of ``x`` with sign(0) = ``sign_zero``, in x's dtype."""
    return jnp.where(x > 0, 1.0, jnp.where(x < 0, -1.0, sign_zero)).astype(x.dtype)


def float_binary_conv(x: Array, weights: Array, strides: Sequence[int], padding: Sequence[Sequence[int]],
                      pad_value: float, sign_zero: float = 1.0) -> Array:
    """The same binary layer in float: sign(x) padded with ``pad_value``, XLA's float convolution
    with the +-1 ``weights`` (HWIO). The float reference path of a program."""
    s = sign(x, sign_zero)
    (pt, pb), (pl, pr) = padding
    s = jnp.pad(s, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=pad_value)
    return lax.conv_general_dilated(s, weights.astype(x.dtype), tuple(strides), "VALID",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


STORE = ("auto", "all", "none")


# Ops XLA fuses into their consumers (elementwise, or broadcasts): a binary op's popcount sum
# passes through them into every consumer fusion unless it is stored.
ELEMENTWISE_OPS = ("affine", "bias", "prelu", "relu", "add", "channel_repeat")


def stored_ops(program: Mapping[str, Any], store: str = "auto") -> set[str]:
    """The ``dst`` of the binary ops whose accumulator ``run_program`` computes by
    ``stored_xnor_conv``: every one ('all'), none ('none'), or ('auto') those whose output
    reaches, through elementwise ops only, the input of a *wrapped* 1x1 binary conv: an
    unpadded 1x1 binary conv whose output is added (elementwise) to a register its own input
    derives from, a shortcut around it.

    'auto' is a measured rule, not a model of XLA's fusion heuristics. ReActNet-A's blocks wrap
    each 1x1 conv in a shortcut and feed it a 3x3 conv's output; unstored, XLA:CPU fuses each
    stage's chain into one fusion that recomputes every earlier conv in every later consumer
    (at 224, batch 1: 156 ms; 'auto', 17 of the 31 binary convs: 36 ms; all 31: 36 ms; only the
    13 3x3 ones: 38 ms; only the 1x1 ones: 153 ms). The Bi-Real/ReActNet ResNets, SBPN and
    BHRNet have no wrapped 1x1 conv, and there storing costs 4-25% and up to 2.5x the compile
    time (BHRNet with binary fuse convs, whose 1x1 convs are not wrapped: 9.9 ms unstored,
    12.4 ms all stored): 'auto' stores none of theirs. README, "Packed inference and latency",
    has the measurements."""
    if store not in STORE:
        raise ValueError(f"store must be one of {STORE}, got {store!r}")
    ops = program["ops"]
    if store == "none":
        return set()
    if store == "all":
        return {op["dst"] for op in ops if op["op"] in BINARY_OPS}

    def sources(op: Mapping[str, Any]) -> list[str]:
        return op["src"] if isinstance(op["src"], list) else [op["src"]]

    def unpadded_1x1(op: Mapping[str, Any]) -> bool:
        return op["op"] == "binary_conv" and tuple(op["kernel_size"]) == (1, 1) and not any(
            v for pad in op["padding"] for v in pad)

    # Pass 1: the wrapped 1x1 convs. anc: the registers a register derives from elementwise
    # (itself included); reach: the binary ops whose output flows into it elementwise.
    anc: dict[str, set[str]] = {}
    reach: dict[str, set[str]] = {}
    inputs: dict[str, set[str]] = {}  # 1x1 conv -> anc of its input
    wrapped: set[str] = set()
    for op in ops:
        srcs, dst = sources(op), op["dst"]
        if op["op"] in ELEMENTWISE_OPS:
            anc[dst] = {dst}.union(*(anc.get(r, {r}) for r in srcs))
            reach[dst] = set().union(*(reach.get(r, set()) for r in srcs))
            for i, r in enumerate(srcs):
                for conv in reach.get(r, set()) & inputs.keys():
                    if any(anc.get(o, {o}) & inputs[conv] for j, o in enumerate(srcs) if j != i):
                        wrapped.add(conv)
        else:
            anc[dst], reach[dst] = {dst}, ({dst} if op["op"] in BINARY_OPS else set())
            if unpadded_1x1(op):
                inputs[dst] = anc.get(srcs[0], {srcs[0]})
    # Pass 2: store what reaches a wrapped conv's input.
    reach, stored = {}, set()
    for op in ops:
        srcs, dst = sources(op), op["dst"]
        if op["op"] in BINARY_OPS:
            if dst in wrapped:
                stored |= reach.get(srcs[0], set())
            reach[dst] = {dst}
        elif op["op"] in ELEMENTWISE_OPS:
            reach[dst] = set().union(*(reach.get(r, set()) for r in srcs))
        else:  # convolutions, pools, concatenations, reductions: XLA stores their results
            reach[dst] = set()
    return stored


def run_program(program: Mapping[str, Any], arrays: Mapping[str, Array], x: Array,
                static: Mapping[str, np.ndarray], dtype: Any = jnp.float32, layout: str = "direct",
                binary: str = "packed", registers: bool = False, store: str = "auto") -> Array | dict[str, Array]:
    """Runs ``program`` on the NHWC batch ``x``; traceable. ``static``: numpy arrays used at trace
    time, the per-tap weight sums (kh, kw, O) of the binary (transposed) convs that need a border
    correction, by their ``bits`` name.

    ``binary='packed'`` computes the binary ops by XNOR-popcount on bit-packed words (integer
    accumulators); ``binary='float'`` as float convolutions / products of sign(x) with the +-1
    weights (``arrays[bits + '.float']``): the same folded program without bit-packing, the float
    reference and the float XLA baseline of ``bench/latency.py``. ``registers=True`` returns
    every register by name instead of the output. ``store``: which packed binary ops are
    computed so that XLA:CPU stores their result (``stored_ops``)."""
    from mlpbnn.conv import conv_transpose

    stored = stored_ops(program, store)
    regs: dict[str, Array] = {program.get("input", "input"): x.astype(dtype)}

    def arr(name: str) -> Array:
        return arrays[name].astype(dtype)

    for op in program["ops"]:
        kind = op["op"]
        src = [regs[s] for s in op["src"]] if isinstance(op["src"], list) else regs[op["src"]]
        if kind == "conv":
            pads = [tuple(p) for p in op["padding"]]
            y = lax.conv_general_dilated(src, arr(op["kernel"]), tuple(op["strides"]), pads,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        elif kind == "conv_transpose":
            y = conv_transpose(src, arr(op["kernel"]), tuple(op["strides"]), tuple(map(tuple, op["padding"])))
        elif kind == "dense":
            y = src @ arr(op["kernel"]) + arr(op["bias"])
        elif kind == "affine":
            y = src * arr(op["scale"]) + arr(op["bias"])
        elif kind == "bias":
            y = src + arr(op["bias"])
        elif kind == "prelu":
            y = jnp.where(src > 0, src, arr(op["slope"]) * src)  # PyTorch's PReLU test: x > 0
        elif kind == "relu":
            y = jnp.maximum(src, 0)
        elif kind == "maxpool":
            y = _pool(src, -jnp.inf, lax.max, op)
        elif kind == "avgpool":
            wh, ww = _pair(op["window"])
            y = _pool(src, 0.0, lax.add, op) / (wh * ww)
        elif kind == "global_avg_pool":
            y = jnp.mean(src, axis=(1, 2), keepdims=bool(op.get("keepdims", False)))
        elif kind == "add":
            y = src[0] + src[1]
        elif kind == "concat":
            y = jnp.concatenate(src, axis=-1)
        elif kind == "upsample":
            fh, fw = op["factors"]
            y = jnp.repeat(jnp.repeat(src, fh, axis=1), fw, axis=2)
        elif kind == "channel_mean":
            g = op["group"]
            y = jnp.mean(src.reshape(*src.shape[:-1], src.shape[-1] // g, g), axis=-1)
        elif kind == "channel_repeat":
            y = jnp.repeat(src, op["factor"], axis=-1)
        elif kind == "flatten":
            y = src.reshape(src.shape[0], -1)
        elif kind in BINARY_OPS:
            y = (_binary_op(op, src, arrays, static, dtype, layout, binary, op["dst"] in stored) * arr(op["scale"])
                 + arr(op["bias"]))
        else:  # check_program refuses unknown ops before tracing
            raise ValueError(f"unknown op {kind!r}")
        regs[op["dst"]] = y
    return regs if registers else regs[program.get("output", "output")]


def _binary_op(op: Mapping[str, Any], x: Array, arrays: Mapping[str, Array], static: Mapping[str, np.ndarray],
               dtype: Any, layout: str, binary: str, store: bool = False) -> Array:
    """The accumulator of a binary op (before its scale and bias), in ``dtype``: exact integers."""
    kind, sz = op["op"], op["sign_zero"]
    if binary == "float":
        w = arrays[op["bits"] + ".float"].astype(dtype)
        if kind == "binary_conv":
            return float_binary_conv(x, w, op["strides"], op["padding"], op["pad_value"], sz)
        if kind == "binary_conv_transpose":
            return float_binary_conv_transpose(x, w, op["strides"], op["padding"], sz)
        return sign(x, sz) @ w[0, 0]
    bits, wsum = arrays[op["bits"]], static.get(op["bits"])
    if kind == "binary_conv":
        acc = binary_conv(x, bits, op["in_channels"], op["kernel_size"], op["strides"], op["padding"],
                          op["pad_value"], sz, wsum, layout, store)
    elif kind == "binary_conv_transpose":
        acc = binary_conv_transpose(x, bits, op["in_channels"], op["kernel_size"], op["strides"], op["padding"], sz,
                                    wsum, layout)
    else:  # binary_dense: a 1x1 binary convolution of one pixel
        acc = binary_conv(x.reshape(x.shape[0], 1, 1, x.shape[-1]), bits, op["in_channels"], (1, 1), (1, 1),
                          ((0, 0), (0, 0)), 1.0, sz, None, layout, store).reshape(x.shape[0], -1)
    return acc.astype(dtype)


def _unpack(op: Mapping[str, Any], bits: np.ndarray) -> np.ndarray:
    return unpack_weight_signs(bits, op.get("kernel_size", (1, 1)), op["in_channels"])


class PackedNetwork:
    """A packed program with its arrays on the device, jit-compiled end to end.

    ``net(x)`` returns the outputs (logits, heatmaps) of the NHWC float batch ``x`` as a jax
    Array. ``binary``: 'packed' (XNOR-popcount) or 'float' (the same folded program with float
    convolutions of the +-1 values; ``run_program``). On the CPU the compiled code prefers
    512-bit vectors (``xla_cpu_prefer_vector_width``): LLVM's default of 256 bits halves the
    width of the popcount loops on AVX-512 CPUs (measured 1.3-2.4x slower).
    """

    def __init__(self, program: Mapping[str, Any], arrays: Mapping[str, np.ndarray], dtype: Any = jnp.float32,
                 layout: str = "direct", binary: str = "packed", store: str = "auto"):
        check_program(program, arrays)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.stored = stored_ops(program, store)  # refuses an unknown choice here, not at the first call
        self.store = store
        if binary not in ("packed", "float"):
            raise ValueError(f"binary must be 'packed' or 'float', got {binary!r}")
        self.program, self.dtype, self.layout, self.binary = dict(program), dtype, layout, binary
        binary_ops = [op for op in program["ops"] if op["op"] in BINARY_OPS]
        # Per-tap weight sums for the border corrections (zero-padded convs, every transposed conv),
        # from the bits (numpy, used at trace time: the corrections become constants of the program).
        self.static = {op["bits"]: _unpack(op, arrays[op["bits"]]).sum(axis=2).astype(np.int64) for op in binary_ops
                       if op["op"] == "binary_conv_transpose" or (op["op"] == "binary_conv" and op["pad_value"] == 0.0)}
        arrays = dict(arrays)
        if binary == "float":
            for op in binary_ops:
                if op["bits"] in arrays:
                    arrays[op["bits"] + ".float"] = _unpack(op, arrays.pop(op["bits"]))
        self.arrays = {k: jnp.asarray(v) for k, v in arrays.items()}
        options = {"xla_cpu_prefer_vector_width": 512} if jax.default_backend() == "cpu" else None
        self._fn = jax.jit(self._apply, compiler_options=options)

    def _apply(self, arrays: Mapping[str, Array], x: Array) -> Array:
        return run_program(self.program, arrays, x, self.static, self.dtype, self.layout, self.binary,
                           store=self.store)

    def __call__(self, x: Any) -> Array:
        return self._fn(self.arrays, jnp.asarray(x))


def binary_accumulators(program: Mapping[str, Any], arrays: Mapping[str, np.ndarray], x: Any,
                        dtype: Any = jnp.float32) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For every binary op of ``program`` (by its ``dst``): its integer accumulator computed by
    XNOR-popcount and by the float reference, both from the same input register (the float
    program's, run on ``x``), as numpy arrays; one compiled program. They are equal exactly
    when the packing, the padding values and the border corrections are right."""
    ref = PackedNetwork(program, arrays, dtype, binary="float")
    pk = PackedNetwork(program, arrays, dtype)
    ops = [op for op in program["ops"] if op["op"] in BINARY_OPS]

    def accumulate(ref_arrays: Mapping[str, Array], pk_arrays: Mapping[str, Array], v: Array) -> dict[str, Any]:
        regs = run_program(ref.program, ref_arrays, v, ref.static, dtype, binary="float", registers=True)
        return {op["dst"]: (_binary_op(op, regs[op["src"]], pk_arrays, pk.static, dtype, "direct", "packed"),
                            _binary_op(op, regs[op["src"]], ref_arrays, ref.static, dtype, "direct", "float"))
                for op in ops}

    out = jax.jit(accumulate)(ref.arrays, pk.arrays, jnp.asarray(x))
    return {k: (np.asarray(a), np.asarray(b)) for k, (a, b) in out.items()}
