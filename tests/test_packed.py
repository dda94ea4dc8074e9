"""mlpbnn.packed.binary_conv_transpose: the packed XNOR-popcount transposed convolution equals
PyTorch's conv_transpose2d of the +-1 tensors exactly (float64), over kernels, strides, paddings
(asymmetric, large crops, k < s), channel counts around the 32-bit words, sign(0) and batch; under
jit; its float twin and BinaryConvTranspose's own product agree; bad arguments are refused."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mlpbnn import layers, packed

# (kernel, strides, padding ((top, bottom), (left, right)), input (H, W))
GEOMETRIES = {
    "k4s2p1": ((4, 4), (2, 2), ((1, 1), (1, 1)), (5, 7)),  # SBPN's deconvolutions: 2H x 2W
    "k3s2p1": ((3, 3), (2, 2), ((1, 1), (1, 1)), (4, 5)),
    "k2s2p0": ((2, 2), (2, 2), ((0, 0), (0, 0)), (3, 5)),  # no tap outside the input: no correction
    "k3s1p1": ((3, 3), (1, 1), ((1, 1), (1, 1)), (5, 3)),
    "k5s3p2": ((5, 5), (3, 3), ((2, 2), (2, 2)), (3, 4)),
    "asym": ((4, 4), (2, 2), ((1, 0), (0, 2)), (3, 5)),
    "k2s3": ((2, 3), (3, 2), ((0, 1), (1, 0)), (3, 4)),  # k < s: phases no tap reaches
    "crop": ((5, 3), (2, 1), ((4, 3), (0, 3)), (4, 3)),  # crops past the first/last input rows
}
# (C, O, sign_zero): C below, at, above and over two 32-bit words
CHANNELS = [(5, 3, 1.0), (32, 8, -1.0), (40, 3, -1.0), (70, 8, 1.0)]
# SBPN's geometry with every channel case, the others with two each (every case in 4 geometries)
CASES = [("k4s2p1", *c) for c in CHANNELS] + [
    (g, *CHANNELS[(2 * i + j) % 4]) for i, g in enumerate(list(GEOMETRIES)[1:]) for j in (1, 2)]


def _case(kernel, cin, cout, hw, n=2, seed=0):
    """x with exact zeros (sign(0) matters) and +-1 scatter-form weights (kh, kw, C, O)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *hw, cin)).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = 0.0
    w = np.where(rng.random((*kernel, cin, cout)) < 0.5, -1.0, 1.0).astype(np.float32)
    return x, w


def _signs(x, sign_zero):
    return np.where(x > 0, 1.0, np.where(x < 0, -1.0, sign_zero))


def _torch_reference(x, w, strides, padding, sign_zero):
    """torch.nn.functional.conv_transpose2d in float64 (weight (C_in, C_out, kh, kw)); asymmetric
    padding is cropped from the p=0 result."""
    s = torch.from_numpy(_signs(x, sign_zero).transpose(0, 3, 1, 2).astype(np.float64))
    wt = torch.from_numpy(w.transpose(2, 3, 0, 1).astype(np.float64))
    (pt, pb), (pl, pr) = padding
    if pt == pb and pl == pr:
        y = torch.nn.functional.conv_transpose2d(s, wt, stride=strides, padding=(pt, pl))
    else:
        y = torch.nn.functional.conv_transpose2d(s, wt, stride=strides)
        y = y[:, :, pt:y.shape[2] - pb, pl:y.shape[3] - pr]
    return y.numpy().transpose(0, 2, 3, 1)


def _packed(x, w, strides, padding, sign_zero, layout="direct", jit=False):
    kernel, cin = w.shape[:2], w.shape[2]
    bits = packed.pack_weight_signs(w)
    np.testing.assert_array_equal(packed.unpack_weight_signs(bits, kernel, cin), w)
    fn = functools.partial(packed.binary_conv_transpose, in_channels=cin, kernel_size=kernel, strides=strides,
                           padding=padding, sign_zero=sign_zero, wsum=w.sum(axis=2).astype(np.int64), layout=layout)
    if jit:
        fn = jax.jit(fn)
    y = fn(jnp.asarray(x), jnp.asarray(bits))
    assert y.dtype == jnp.int32
    return np.asarray(y)


@pytest.mark.parametrize("geometry,cin,cout,sign_zero", CASES)
def test_binary_conv_transpose_equals_torch(geometry, cin, cout, sign_zero):
    kernel, strides, padding, hw = GEOMETRIES[geometry]
    x, w = _case(kernel, cin, cout, hw)
    ref = _torch_reference(x, w, strides, padding, sign_zero)
    out = _packed(x, w, strides, padding, sign_zero, jit=True)
    assert out.shape == ref.shape == (2, (hw[0] - 1) * strides[0] + kernel[0] - sum(padding[0]),
                                      (hw[1] - 1) * strides[1] + kernel[1] - sum(padding[1]), cout)
    np.testing.assert_array_equal(out, ref.astype(np.int32))


@pytest.mark.parametrize("geometry", ["k4s2p1", "k5s3p2", "crop"])
def test_under_jit_and_blocked_layout(geometry):
    """Traceable (wsum and the corrections are trace-time numpy); the blocked layout (O = 128, two
    blocks of 64) gives the same integers."""
    kernel, strides, padding, hw = GEOMETRIES[geometry]
    x, w = _case(kernel, 40, 128, hw, seed=1)
    ref = _torch_reference(x, w, strides, padding, -1.0).astype(np.int32)
    np.testing.assert_array_equal(_packed(x, w, strides, padding, -1.0, jit=True), ref)
    np.testing.assert_array_equal(_packed(x, w, strides, padding, -1.0, layout="blocked", jit=True), ref)


@pytest.mark.parametrize("geometry", ["k4s2p1", "asym", "k2s3"])
def test_float_binary_conv_transpose_equals_torch(geometry):
    kernel, strides, padding, hw = GEOMETRIES[geometry]
    x, w = _case(kernel, 40, 8, hw, seed=2)
    for sign_zero in (1.0, -1.0):
        fn = jax.jit(functools.partial(packed.float_binary_conv_transpose, strides=strides, padding=padding,
                                       sign_zero=sign_zero))
        out = fn(jnp.asarray(x), jnp.asarray(w))
        np.testing.assert_array_equal(np.asarray(out), _torch_reference(x, w, strides, padding, sign_zero))


def test_agrees_with_binary_conv_transpose_layer_math():
    """BinaryConvTranspose's product conv_transpose_nhwc(sign(x), W) is the packed result."""
    kernel, strides, padding, hw = GEOMETRIES["k4s2p1"]
    x, w = _case(kernel, 70, 8, hw, seed=3)
    fn = jax.jit(functools.partial(layers.conv_transpose_nhwc, strides=strides, padding=padding))
    y = fn(jnp.asarray(_signs(x, 1.0), jnp.float32), jnp.asarray(w))
    np.testing.assert_array_equal(_packed(x, w, strides, padding, 1.0, jit=True), np.asarray(y).astype(np.int32))


@pytest.mark.parametrize("geometry", ["k2s2p0", "k3s2p1", "k5s3p2"])
def test_no_wsum_needed_without_taps_outside(geometry):
    """Where every kept output's taps read inside the input, nothing is corrected and wsum may be
    None: k = s with p = 0, and k = 2p + 1 with s > p (output (H - 1) s + 1: k3 s2 p1, k5 s3 p2)."""
    kernel, strides, padding, hw = GEOMETRIES[geometry]
    x, w = _case(kernel, 5, 3, hw)
    fn = jax.jit(functools.partial(packed.binary_conv_transpose, in_channels=5, kernel_size=kernel, strides=strides,
                                   padding=padding))  # wsum=None
    out = fn(jnp.asarray(x), jnp.asarray(packed.pack_weight_signs(w)))
    np.testing.assert_array_equal(np.asarray(out), _torch_reference(x, w, strides, padding, 1.0).astype(np.int32))


def test_refusals():
    x, w = _case((4, 4), 40, 3, (3, 3))
    xj, bits, wsum = jnp.asarray(x), packed.pack_weight_signs(w), w.sum(axis=2).astype(np.int64)
    conv = functools.partial(packed.binary_conv_transpose, xj, in_channels=40, kernel_size=(4, 4), strides=(2, 2))
    with pytest.raises(ValueError, match="wsum"):
        conv(bits, padding=((1, 1), (1, 1)))
    with pytest.raises(ValueError, match="padding must be >= 0"):
        conv(bits, padding=((1, -1), (1, 1)), wsum=wsum)
    with pytest.raises(ValueError, match="do not match kernel"):
        conv(bits[:, :1], padding=((1, 1), (1, 1)), wsum=wsum)
    with pytest.raises(ValueError, match="do not match kernel"):
        conv(bits[:9], padding=((1, 1), (1, 1)), wsum=wsum)
    with pytest.raises(ValueError, match="wsum has shape"):
        conv(bits, padding=((1, 1), (1, 1)), wsum=wsum[:3])
    with pytest.raises(ValueError, match="40 channels"):
        packed.binary_conv_transpose(xj[..., :5], bits, 40, (4, 4), (2, 2), ((1, 1), (1, 1)), wsum=wsum)
    with pytest.raises(ValueError, match="sign\\(0\\)"):
        conv(bits, padding=((1, 1), (1, 1)), wsum=wsum, sign_zero=0.0)
