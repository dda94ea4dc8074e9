"""2-D convolution with a weight gradient that is fast on the CPU.

``conv2d(x, kernel, strides, padding)`` is an NHWC x HWIO convolution with explicit padding and
no bias. Its forward pass and input gradient are XLA's (``lax.conv_general_dilated`` and its
transpose), which run near matmul speed on every backend. XLA:CPU's convolution *weight*
gradient, however, runs at a fraction of that (3-13 GFLOP/s against 50-70 for the forward on
the development machines), so on the CPU backend the weight gradient is written as im2col
matmuls instead:

    dW[i, j] = sum_{n, h, w} x_pad[n, s h + i, s w + j, :]^T  g[n, h, w, :]

i.e. for each of the kh*kw taps, the strided shifted input slice contracted with the output
gradient over N, H, W (one ``dot_general`` per tap; for inputs with few channels, the taps are
concatenated along channels into one im2col matrix and one ``dot_general``). The batch is walked
in groups of a few images (a ``lax.scan``) so that each group's slices stay in cache: that, more
than the matmul form itself, is what makes it fast (2-10x XLA's weight gradient per layer).
On tiny output maps (ResNet's last stage on small images), where XLA:CPU's convolution itself
is up to 100x slower than a matmul, the input gradient (maps of <= 16 pixels) and the forward
(< 16 pixels) are the im2col matmul (and its transpose) too. Results are the same up to float
rounding (tests/test_conv.py checks 1e-5).

Which implementation runs is decided when the function is traced:

- ``auto`` (default): ``im2col`` on the CPU backend (``jax.default_backend() == 'cpu'``),
  ``xla`` elsewhere (GPU/TPU convolution gradients are fast as they are);
- ``xla``: plain ``lax.conv_general_dilated`` (autodiff gives lax's own gradients);
- ``im2col``: the custom VJP above on any backend.

Override with the environment variable ``MLPBNN_CONV_IMPL=auto|xla|im2col``, with
``set_impl(name)`` or with the ``use_impl(name)`` context manager (these take precedence over the
variable). A jitted function keeps the implementation it was traced with.

``conv_general_dilated`` is a drop-in for ``lax.conv_general_dilated`` that routes the 2-D
NHWC/HWIO undilated, ungrouped case to ``conv2d`` (and everything else to lax); it is what
``flax.linen.Conv(..., conv_general_dilated=...)`` takes, so real convolutions keep Flax's
module, parameter names and initialisers.

The compute dtype follows the inputs (bfloat16 inputs convolve in bfloat16; the im2col weight
gradient accumulates in float32 and is cast back to the kernel's dtype).

``conv_transpose(x, kernel, strides, padding)`` is PyTorch's ``conv_transpose2d`` (NHWC, the
scatter-form kernel (kh, kw, C_in, C_out), ``padding`` cropped per side), SimpleBaseline's 4x4
stride-2 deconvolutions. ``xla`` is the textbook form, a stride-1 convolution of the s-dilated
input with the flipped kernel (``lhs_dilation``), whose kernel gradient XLA:CPU runs 30-70x slower
than its forward (``python -m bench.deconv``: 16.6 s against 0.50 s for a 256->256 deconvolution
32x24 -> 64x48, batch 8, on the shared 2-core machine). ``im2col``
uses that a transposed convolution is the input-transpose of ``conv2d(., kernel^T, s, p)``
(kernel^T: in/out channels swapped), so its custom VJP is

- input gradient: ``conv2d(g, kernel^T, s, p)``, a plain strided convolution (XLA's forward);
- kernel gradient: the same im2col matmuls with the roles of input and output gradient swapped,
  ``weight_gradient(g, x, (kh, kw), s, p)^T``;
- forward: the sub-pixel (phase) decomposition instead of the dilated input (which XLA:CPU runs
  2.6x slower there): output pixel s t + rho gets only the kernel taps i = (rho + p) mod s
  (+ s j), so each of the s_h * s_w output phases is a stride-1 convolution of x with a
  ceil(k/s)-tap sub-kernel (k=4, s=2, p=1: four 2x2 convolutions), interleaved depth-to-space
  (the sub-pixel view of Shi et al., arXiv 1609.05158).

There: 0.19 s forward, 0.19 s input gradient, 0.22 s kernel gradient (77x), and SBPN-ResNet-18's
training step at 256x192, batch 8, 26.2 s -> 6.5 s. ``auto`` keeps lax's form off the CPU (GPU/TPU
convolution gradients are fast as they are). XLA's form also crashes XLA:CPU's algebraic
simplifier for some shapes (e.g. a 2x5 kernel, stride 2, padding 1 on a 5x4 input); the phase
form does not.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Padding = tuple[tuple[int, int], tuple[int, int]]

IMPLS = ("auto", "xla", "im2col")
ENV_VAR = "MLPBNN_CONV_IMPL"
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

# Weight-gradient blocking: rows (output pixels) per scan step are chosen so that one step's
# input slice (taps) or im2col matrix (concatenated taps) takes about _BLOCK_BYTES, within
# [_MIN_ROWS, _MAX_ROWS]; inputs with fewer than _COLS_MAX_CHANNELS channels use the im2col
# matrix (one matmul with kh*kw*C rows instead of kh*kw thin ones).
_BLOCK_BYTES = 1 << 20
_MIN_ROWS, _MAX_ROWS = 1024, 16384
_COLS_MAX_CHANNELS = 32
# Output maps of fewer pixels than this run the forward as an im2col matmul, and of at most
# this many the input gradient (measured: XLA's convolution is 100x slower at 2x2, 1.5x at 4x4).
_COLS_FORWARD_MAX_PIXELS = 16
_COLS_INPUT_GRAD_MAX_PIXELS = 16

_override: str | None = None


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"convolution implementation must be one of {IMPLS}, got {impl!r}")
    return impl


def set_impl(impl: str | None) -> None:
    """Selects the implementation for convolutions traced from now on (None: back to the
    ``MLPBNN_CONV_IMPL`` variable, else ``auto``)."""
    global _override
    _override = None if impl is None else _check_impl(impl)


@contextlib.contextmanager
def use_impl(impl: str | None) -> Iterator[None]:
    """``with use_impl('xla'): ...`` traces the convolutions inside with ``impl``."""
    global _override
    previous = _override
    set_impl(impl)
    try:
        yield
    finally:
        _override = previous


def impl_setting() -> str:
    """The requested implementation: ``set_impl``/``use_impl``, else ``$MLPBNN_CONV_IMPL``, else auto."""
    if _override is not None:
        return _override
    return _check_impl(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto")


def resolved_impl() -> str:
    """``xla`` or ``im2col``: what a convolution traced now uses."""
    impl = impl_setting()
    if impl == "auto":
        return "im2col" if jax.default_backend() == "cpu" else "xla"
    return impl


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{what} must be an int or 2 ints, got {value!r}")
    return value  # type: ignore[return-value]


def explicit_padding(padding: Any, what: str = "padding") -> Padding:
    """int p -> ((p, p), (p, p)); (ph, pw) -> ((ph, ph), (pw, pw)); ((t, b), (l, r)) as is."""
    if isinstance(padding, str):
        raise ValueError(f"{what} must be explicit (int or ((top, bottom), (left, right))), "
                         f"got {padding!r}: 'SAME' differs from PyTorch for strided convolutions")
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    padding = tuple(padding)
    if len(padding) == 2 and all(isinstance(p, int) for p in padding):
        return ((padding[0], padding[0]), (padding[1], padding[1]))
    if len(padding) == 2 and all(len(tuple(p)) == 2 for p in padding):
        return tuple(tuple(int(v) for v in p) for p in padding)  # type: ignore[return-value]
    raise ValueError(f"{what} must be an int, (ph, pw) or ((top, bottom), (left, right)), got {padding!r}")


def check_window(shape: Sequence[int], window: Sequence[int], padding: Padding, what: str = "conv2d") -> None:
    """Refuses an NHWC input whose padded H or W is smaller than the window: XLA would return an
    empty map silently (and a later mean or weight gradient divide by zero), where PyTorch raises."""
    hw = tuple(int(n) + lo + hi for n, (lo, hi) in zip(shape[1:3], padding, strict=True))
    if any(n < k for n, k in zip(hw, window, strict=True)):
        raise ValueError(f"{what}: a {shape[1]}x{shape[2]} input ({hw[0]}x{hw[1]} padded) is smaller than its "
                         f"{window[0]}x{window[1]} window: the input image is too small for this network")


def _lax_conv(x: Array, kernel: Array, strides: tuple[int, int], padding: Padding, precision: Any) -> Array:
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DIMENSION_NUMBERS,
                                    precision=precision)


def conv2d(x: Array, kernel: Array, strides: int | Sequence[int] = 1, padding: Any = 0, *,
           precision: Any = None, impl: str | None = None) -> Array:
    """NHWC x HWIO -> NHWC convolution, explicit zero padding, no bias.

    Args:
      x: (N, H, W, C) input.
      kernel: (kh, kw, C, O) kernel.
      strides: int or (sh, sw).
      padding: int, (ph, pw) or ((top, bottom), (left, right)).
      precision: passed to lax (forward, input gradient) and to the weight-gradient matmuls.
      impl: ``auto``/``xla``/``im2col`` for this call (None: the module setting, see above).
    """
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(f"conv2d expects NHWC input and HWIO kernel, got shapes {x.shape} and {kernel.shape}")
    if x.shape[-1] != kernel.shape[2]:
        raise ValueError(f"input has {x.shape[-1]} channels but the kernel expects {kernel.shape[2]}")
    strides = _pair(strides, "strides")
    padding = explicit_padding(padding)
    check_window(x.shape, kernel.shape[:2], padding)
    dtype = jnp.result_type(x, kernel)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    impl = resolved_impl() if impl is None else _check_impl(impl)
    if impl == "auto":
        impl = "im2col" if jax.default_backend() == "cpu" else "xla"
    if impl == "xla":
        return _lax_conv(x, kernel, strides, padding, precision)
    return _conv_im2col(strides, padding, precision, x, kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _conv_im2col(strides: tuple[int, int], padding: Padding, precision: Any, x: Array, kernel: Array) -> Array:
    return _forward(x, kernel, strides, padding, precision)


def _out_hw(x_shape: Sequence[int], kernel_size: Sequence[int], strides: tuple[int, int],
            padding: Padding) -> tuple[int, int]:
    return tuple((x_shape[1 + a] + sum(padding[a]) - kernel_size[a]) // strides[a] + 1  # type: ignore[return-value]
                 for a in range(2))


def _cols_conv(x: Array, kernel: Array, strides: tuple[int, int], padding: Padding, precision: Any) -> Array:
    """The convolution as one im2col matmul: (N Ho Wo, kh kw C) x (kh kw C, O)."""
    kh, kw, c, o = kernel.shape
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0))) if any(map(any, padding)) else x
    slices = _tap_slices(xp, (kh, kw), strides, _out_hw(x.shape, (kh, kw), strides, padding))
    cols = slices[0] if len(slices) == 1 else jnp.concatenate(slices, axis=-1)
    return lax.dot_general(cols, kernel.reshape(kh * kw * c, o), (((3,), (0,)), ((), ())), precision=precision)


def _forward(x: Array, kernel: Array, strides: tuple[int, int], padding: Padding, precision: Any) -> Array:
    # XLA:CPU's convolution is very slow on tiny feature maps (100x at 2x2, e.g. ResNet-18's last
    # stage on 16x16 images): there the im2col matmul runs the forward.
    ho, wo = _out_hw(x.shape, kernel.shape[:2], strides, padding)
    if ho * wo < _COLS_FORWARD_MAX_PIXELS:
        return _cols_conv(x, kernel, strides, padding, precision)
    return _lax_conv(x, kernel, strides, padding, precision)


def _conv_im2col_fwd(strides, padding, precision, x, kernel):
    return _forward(x, kernel, strides, padding, precision), (x, kernel)


def _conv_im2col_bwd(strides, padding, precision, res, g):
    x, kernel = res
    # The input gradient is the transposed convolution (XLA's is fast, except on tiny maps where
    # the transpose of the im2col matmul is: g K^T, then the slices' transpose adds the taps).
    ho, wo = g.shape[1:3]
    forward = _cols_conv if ho * wo <= _COLS_INPUT_GRAD_MAX_PIXELS else _lax_conv
    (dx,) = jax.linear_transpose(lambda v: forward(v, kernel, strides, padding, precision),
                                 jax.ShapeDtypeStruct(x.shape, x.dtype))(g)
    dk = weight_gradient(x, g, kernel.shape[:2], strides, padding, precision=precision)
    return dx, dk.astype(kernel.dtype)


_conv_im2col.defvjp(_conv_im2col_fwd, _conv_im2col_bwd)


def _tap_slices(xp: Array, kernel_size: tuple[int, int], strides: tuple[int, int],
                out_hw: tuple[int, int]) -> list[Array]:
    """The kh*kw strided shifted slices of the padded input, each (n, Ho, Wo, C)."""
    n, _, _, c = xp.shape
    (kh, kw), (sh, sw), (ho, wo) = kernel_size, strides, out_hw
    return [lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c), (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]


_NHW = (((0, 1, 2), (0, 1, 2)), ((), ()))  # contract N, H, W of both operands


def _block_weight_gradient(xp: Array, g: Array, kernel_size: tuple[int, int], strides: tuple[int, int],
                           use_cols: bool, precision: Any) -> Array:
    """sum over one block of images: (kh*kw, O, C) in float32 (float64 for float64 inputs)."""
    acc = jnp.promote_types(g.dtype, jnp.float32)
    slices = _tap_slices(xp, kernel_size, strides, g.shape[1:3])
    kh, kw = kernel_size
    c, o = xp.shape[-1], g.shape[-1]
    if use_cols and len(slices) > 1:
        cols = jnp.concatenate(slices, axis=-1)
        out = lax.dot_general(g, cols, _NHW, precision=precision, preferred_element_type=acc)
        return out.reshape(o, kh * kw, c).transpose(1, 0, 2)
    return jnp.stack([lax.dot_general(g, s, _NHW, precision=precision, preferred_element_type=acc)
                      for s in slices])


def weight_gradient(x: Array, g: Array, kernel_size: Sequence[int], strides: int | Sequence[int] = 1,
                    padding: Any = 0, *, precision: Any = None, block_images: int | None = None) -> Array:
    """dL/dkernel of ``conv2d(x, kernel, strides, padding)`` given g = dL/dy, as im2col matmuls.

    Returns a float32 (kh, kw, C, O) array (float64 for float64 inputs). ``block_images``: images
    per scan step (None: chosen from the shapes so that one step's slices fit in cache; >= N: no scan).
    """
    kh, kw = _pair(tuple(kernel_size), "kernel_size")
    strides = _pair(strides, "strides")
    padding = explicit_padding(padding)
    n, c = x.shape[0], x.shape[-1]
    ho, wo, o = g.shape[1], g.shape[2], g.shape[3]
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0))) if any(map(any, padding)) else x
    use_cols = c < _COLS_MAX_CHANNELS
    if block_images is None:
        width = (kh * kw * c if use_cols else c) * jnp.dtype(x.dtype).itemsize
        rows = min(max(_BLOCK_BYTES // width, _MIN_ROWS), _MAX_ROWS)
        block_images = max(1, round(rows / (ho * wo)))
    block = functools.partial(_block_weight_gradient, kernel_size=(kh, kw), strides=strides,
                              use_cols=use_cols, precision=precision)
    if block_images >= n:
        out = block(xp, g)
    else:
        b = _block_size(n, block_images)
        pad = -n % b
        if pad:  # zero images (and zero gradients) contribute nothing
            xp = jnp.pad(xp, ((0, pad), (0, 0), (0, 0), (0, 0)))
            g = jnp.pad(g, ((0, pad), (0, 0), (0, 0), (0, 0)))
        xs = xp.reshape(-1, b, *xp.shape[1:])
        gs = g.reshape(-1, b, *g.shape[1:])

        def body(acc, xg):
            return acc + block(*xg), None

        out, _ = lax.scan(body, jnp.zeros((kh * kw, o, c), jnp.promote_types(g.dtype, jnp.float32)), (xs, gs))
    return out.reshape(kh, kw, o, c).transpose(0, 1, 3, 2)


def _block_size(n: int, target: int) -> int:
    """A divisor of n near target if there is one not much smaller, else target (n is padded)."""
    best = max(d for d in range(1, target + 1) if n % d == 0)
    return best if 2 * best >= target else target


def conv_general_dilated(lhs: Array, rhs: Array, window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> Array:
    """Drop-in for ``lax.conv_general_dilated``: the 2-D NHWC x HWIO case without dilation,
    groups or a preferred element type goes to ``conv2d`` (string paddings are made explicit), the
    same with input dilation, unit strides and explicit padding <= k - 1 to ``conv_transpose``,
    everything else to lax unchanged. Pass it as ``flax.linen.Conv(conv_general_dilated=...)``."""
    lax_call = functools.partial(lax.conv_general_dilated, lhs, rhs, window_strides, padding,
                                 lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                                 dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                                 batch_group_count=batch_group_count, precision=precision,
                                 preferred_element_type=preferred_element_type)
    if lhs.ndim != 4 or rhs.ndim != 4 or feature_group_count != 1 or batch_group_count != 1:
        return lax_call()
    if preferred_element_type is not None or lhs.dtype != rhs.dtype:
        return lax_call()
    if any(d != 1 for d in (rhs_dilation or ())):
        return lax_call()
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DIMENSION_NUMBERS)
    if dimension_numbers is None or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc:
        return lax_call()
    strides = tuple(window_strides)
    if any(d != 1 for d in (lhs_dilation or ())):
        # An input-dilated stride-1 convolution with padding P <= k - 1 is the transposed
        # convolution with the flipped kernel and PyTorch padding k - 1 - P (nn.Conv's input_dilation).
        if isinstance(padding, str) or any(s != 1 for s in strides):
            return lax_call()
        pads = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(rhs.shape[:2], padding, strict=True))
        if any(p < 0 for pair in pads for p in pair):
            return lax_call()
        return conv_transpose(lhs, rhs[::-1, ::-1], tuple(lhs_dilation), pads, precision=precision)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    return conv2d(lhs, rhs, strides, tuple(tuple(p) for p in padding), precision=precision)


# ------------------------------------------------------------------------------ transposed convolution


def _lax_conv_transpose(x: Array, kernel: Array, strides: tuple[int, int], padding: Padding, precision: Any) -> Array:
    """The textbook form: the stride-1 convolution of the ``strides``-dilated input with the
    flipped kernel and padding k - 1 - p per side (negative: a crop)."""
    pads = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel.shape[:2], padding, strict=True))
    return lax.conv_general_dilated(x, kernel[::-1, ::-1], (1, 1), pads, lhs_dilation=strides,
                                    dimension_numbers=_DIMENSION_NUMBERS, precision=precision)


def conv_transpose(x: Array, kernel: Array, strides: int | Sequence[int] = 2, padding: Any = 1, *,
                   precision: Any = None, impl: str | None = None) -> Array:
    """PyTorch's ``conv_transpose2d`` (``output_padding=0``, ``groups=1``, ``dilation=1``) in NHWC.

    Args:
      x: (N, H, W, C_in) input.
      kernel: (kh, kw, C_in, C_out), ``kernel[i, j, c, o] = torch_weight[c, o, i, j]``: input pixel
        (y, x) adds ``x[y, x, c] * kernel[i, j, c, o]`` to output pixel (s y + i - p, s x + j - p).
      strides: int or (sh, sw).
      padding: PyTorch's p, cropped from each side of the full ((H - 1) s + k) output: int,
        (ph, pw) or ((top, bottom), (left, right)). The output is (H - 1) s + k - top - bottom high.
      precision: passed to the convolutions and the weight-gradient matmuls.
      impl: ``auto``/``xla``/``im2col`` for this call (None: the module setting). Negative
        paddings (not PyTorch's) always take the ``xla`` path.
    """
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(f"conv_transpose expects NHWC input and HWIO kernel, got shapes {x.shape} and {kernel.shape}")
    if x.shape[-1] != kernel.shape[2]:
        raise ValueError(f"input has {x.shape[-1]} channels but the kernel expects {kernel.shape[2]}")
    strides = _pair(strides, "strides")
    padding = explicit_padding(padding)
    if any(s < 1 for s in strides):
        raise ValueError(f"strides must be positive, got {strides}")
    out_hw = _transpose_out_hw(x.shape, kernel.shape[:2], strides, padding)
    if min(out_hw) < 1:
        raise ValueError(f"conv_transpose of {x.shape[1:3]} with kernel {kernel.shape[:2]}, strides {strides} and "
                         f"padding {padding} has an empty output {out_hw}")
    dtype = jnp.result_type(x, kernel)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    impl = resolved_impl() if impl is None else _check_impl(impl)
    if impl == "auto":
        impl = "im2col" if jax.default_backend() == "cpu" else "xla"
    if impl == "xla" or any(p < 0 for pair in padding for p in pair):
        return _lax_conv_transpose(x, kernel, strides, padding, precision)
    return _conv_transpose_im2col(strides, padding, precision, x, kernel)


def _transpose_out_hw(x_shape: Sequence[int], kernel_size: Sequence[int], strides: tuple[int, int],
                      padding: Padding) -> tuple[int, int]:
    return tuple((x_shape[1 + a] - 1) * strides[a] + kernel_size[a] - sum(padding[a])  # type: ignore[return-value]
                 for a in range(2))


def _phase(rho: int, length: int, k: int, s: int, pad_lo: int, phase_len: int) -> tuple[int, int, int, int]:
    """One axis of output phase ``rho`` (outputs s t + rho, t < phase_len): the first tap r, the tap
    count m (taps r, r + s, ...), and the input's (low, high) padding (negative: crop) for which
    the phase is the VALID stride-1 correlation of the padded input with the taps reversed.

    Output s t + rho is full-output index s (t + q) + r with (q, r) = divmod(rho + p, s); tap
    r + s j reads input t + q - j, so the reversed taps read t + q - (m - 1) .. t + q."""
    q, r = divmod(rho + pad_lo, s)
    m = len(range(r, k, s))
    lo = m - 1 - q
    return r, m, lo, phase_len + m - 1 - length - lo


def _phase_forward(x: Array, kernel: Array, strides: tuple[int, int], padding: Padding, precision: Any) -> Array:
    """The transposed convolution as s_h * s_w stride-1 convolutions (one per output phase, each
    with its sub-kernel ``kernel[r_h::s_h, r_w::s_w]`` reversed), interleaved depth-to-space."""
    n, kh, kw, o = x.shape[0], kernel.shape[0], kernel.shape[1], kernel.shape[3]
    (sh, sw), (oh, ow) = strides, _transpose_out_hw(x.shape, (kh, kw), strides, padding)
    th, tw = -(-oh // sh), -(-ow // sw)  # phase outputs; the last row/column of a phase may be cropped
    rows = []
    for rho_h in range(sh):
        rh, mh, lo_h, hi_h = _phase(rho_h, x.shape[1], kh, sh, padding[0][0], th)
        cols = []
        for rho_w in range(sw):
            rw, mw, lo_w, hi_w = _phase(rho_w, x.shape[2], kw, sw, padding[1][0], tw)
            if mh == 0 or mw == 0:  # k < s: no tap reaches this phase
                cols.append(jnp.zeros((n, th, tw, o), x.dtype))
                continue
            # Negative paddings crop the input; the rest is the convolution's zero padding.
            xc = x[:, max(-lo_h, 0):x.shape[1] - max(-hi_h, 0), max(-lo_w, 0):x.shape[2] - max(-hi_w, 0)]
            sub = kernel[rh::sh, rw::sw][::-1, ::-1]
            cols.append(_forward(xc, sub, (1, 1), ((max(lo_h, 0), max(hi_h, 0)), (max(lo_w, 0), max(hi_w, 0))),
                                 precision))
        rows.append(jnp.stack(cols, axis=3) if sw > 1 else cols[0][:, :, :, None])
    y = jnp.stack(rows, axis=2) if sh > 1 else rows[0][:, :, None]  # (n, th, sh, tw, sw, o)
    y = y.reshape(n, th * sh, tw * sw, o)
    return y if (th * sh, tw * sw) == (oh, ow) else y[:, :oh, :ow]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _conv_transpose_im2col(strides: tuple[int, int], padding: Padding, precision: Any, x: Array,
                           kernel: Array) -> Array:
    return _phase_forward(x, kernel, strides, padding, precision)


def _conv_transpose_im2col_fwd(strides, padding, precision, x, kernel):
    return _phase_forward(x, kernel, strides, padding, precision), (x, kernel)


def _conv_transpose_im2col_bwd(strides, padding, precision, res, g):
    x, kernel = res
    # y = conv2d^T(x) for conv2d(., kernel^T, s, p) (in/out channels swapped): dx is that
    # convolution of g, and dkernel its weight gradient with input g and output gradient x.
    dx = _forward(g, kernel.transpose(0, 1, 3, 2), strides, padding, precision)
    dk = weight_gradient(g, x, kernel.shape[:2], strides, padding, precision=precision)
    return dx, dk.transpose(0, 1, 3, 2).astype(kernel.dtype)


_conv_transpose_im2col.defvjp(_conv_transpose_im2col_fwd, _conv_transpose_im2col_bwd)


__all__ = ["IMPLS", "ENV_VAR", "conv2d", "conv_transpose", "conv_general_dilated", "weight_gradient", "set_impl",
           "use_impl", "impl_setting", "resolved_impl"]
