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


# ------------------------------------------------------------------------- stored binary convs


@pytest.mark.parametrize("layout,o", [("direct", 5), ("direct", 48), ("blocked", 128), ("blocked", 96)])
def test_stored_xnor_conv_equals_xnor_conv_and_keeps_the_blocks(layout, o, monkeypatch):
    rng = np.random.default_rng(0)
    xb = jnp.asarray(rng.integers(0, 2**32, (1, 5, 4, 2), dtype=np.uint32))
    wb = jnp.asarray(rng.integers(0, 2**32, (9, 2, o), dtype=np.uint32))
    direct = packed.xnor_conv(xb, wb, 9 * 64, (3, 3), (1, 1), layout, 64)
    parts = []
    real = packed.xnor_conv
    monkeypatch.setattr(packed, "xnor_conv", lambda x, w, *a: parts.append(w.shape[-1]) or real(x, w, *a))
    np.testing.assert_array_equal(packed.stored_xnor_conv(xb, wb, 9 * 64, (3, 3), (1, 1), layout, 64), direct)
    assert sum(parts) == o and len(parts) == 2
    if layout == "blocked" and o == 128:
        assert parts == [64, 64]  # each part still a whole number of 64-channel blocks


def _op(kind, src, dst, k=3, c=8, o=8):
    if kind != "binary_conv":
        return {"op": kind, "src": src, "dst": dst}
    p = (k - 1) // 2
    return {"op": kind, "src": src, "dst": dst, "bits": f"{dst}.bits", "in_channels": c, "kernel_size": [k, k],
            "strides": [1, 1], "padding": [[p, p], [p, p]], "pad_value": 0.0, "sign_zero": 1.0,
            "scale": f"{dst}.scale", "bias": f"{dst}.bias"}


def _block_program(wrapped: bool):
    """ReActNet-A's block shape: a 3x3 binary conv with a shortcut, then a 1x1 binary conv whose
    output is added to its input (``wrapped``) or only rectified (not wrapped), twice over."""
    ops, x = [], "input"
    for b in range(2):
        ops += [_op("binary_conv", x, f"c3_{b}"), _op("add", [f"c3_{b}", x], f"r_{b}"),
                _op("binary_conv", f"r_{b}", f"c1_{b}", k=1),
                _op("add", [f"c1_{b}", f"r_{b}"], f"out_{b}") if wrapped else _op("relu", f"c1_{b}", f"out_{b}")]
        x = f"out_{b}"
    rng = np.random.default_rng(1)
    arrays = {}
    for op in ops:
        if op["op"] == "binary_conv":
            k = op["kernel_size"][0]
            signs = np.where(rng.random((k, k, 8, 8)) < 0.5, -1.0, 1.0)
            arrays[op["bits"]] = packed.pack_weight_signs(signs)
            arrays[op["scale"]] = rng.uniform(0.5, 1.5, 8).astype(np.float32)
            arrays[op["bias"]] = rng.normal(0, 1, 8).astype(np.float32)
    return {"input": "input", "output": x, "ops": ops}, arrays


def test_auto_stores_what_reaches_a_wrapped_1x1_conv_and_every_choice_computes_the_same():
    program, arrays = _block_program(wrapped=True)
    # c3_0 and c3_1 feed a wrapped 1x1 conv; c1_0 reaches c1_1's input through out_0 -> r_1.
    assert packed.stored_ops(program) == {"c3_0", "c3_1", "c1_0"}
    assert packed.stored_ops(program, "all") == {"c3_0", "c1_0", "c3_1", "c1_1"}
    assert packed.stored_ops(program, "none") == set()
    plain, _ = _block_program(wrapped=False)
    assert packed.stored_ops(plain) == set()  # 1x1 convs without a shortcut around them: nothing stored
    x = np.random.default_rng(2).standard_normal((1, 5, 6, 8)).astype(np.float32)
    outs = [np.asarray(packed.PackedNetwork(program, arrays, store=s)(x)) for s in packed.STORE]
    ref = np.asarray(packed.PackedNetwork(program, arrays, binary="float")(x))
    for out in outs:
        np.testing.assert_array_equal(out, outs[0])
    np.testing.assert_allclose(outs[0], ref, rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="store must be one of"):
        packed.PackedNetwork(program, arrays, store="some")
