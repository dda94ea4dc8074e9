"""mlpbnn.conv: the im2col-gradient convolution equals lax's (forward, input and weight
gradients) over strides, kernels, paddings, odd sizes, under jit and vmap, in the models, in
bfloat16; implementation selection; the nn.Conv drop-in keeps parameter names."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlpbnn import conv, models

f32 = np.float32


def close(actual, desired, rtol=1e-5):
    """Relative to the largest magnitude: sums over N*H*W round differently in each order."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * float(np.max(np.abs(desired))))


def data(shape, kernel_shape, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=shape).astype(f32)), jnp.asarray(rng.normal(size=kernel_shape).astype(f32))


def grads(impl, x, k, strides, padding):
    """y and the VJP of a fixed random cotangent (a loss whose gradient does not depend on y's
    rounding, which differs between implementations on tiny maps)."""
    def f(x, k):
        return conv.conv2d(x, k, strides, padding, impl=impl)
    shape = jax.eval_shape(f, x, k).shape
    ct = jnp.asarray(np.random.default_rng(99).normal(size=shape).astype(x.dtype))
    y, vjp = jax.vjp(jax.jit(f), x, k)
    dx, dk = jax.jit(vjp)(ct)
    return y, dx, dk


@pytest.mark.parametrize("cin", [5, 40])  # the weight gradient concatenates taps below 32 channels
@pytest.mark.parametrize("padding", [0, 1, 3])
@pytest.mark.parametrize("kernel", [1, 3, 7])
@pytest.mark.parametrize("strides", [1, 2])
def test_matches_lax(strides, kernel, padding, cin):
    x, k = data((3, 13, 11, cin), (kernel, kernel, cin, 6))
    ref = grads("xla", x, k, strides, padding)
    out = grads("im2col", x, k, strides, padding)
    assert out[0].shape == ref[0].shape
    for a, b in zip(out, ref, strict=True):
        close(a, b)


@pytest.mark.parametrize("padding", [((1, 0), (2, 1)), ((0, 2), (3, 0))])
def test_asymmetric_padding_and_strides(padding):
    x, k = data((2, 10, 9, 4), (3, 2, 4, 5), seed=1)
    for a, b in zip(grads("im2col", x, k, (2, 1), padding), grads("xla", x, k, (2, 1), padding), strict=True):
        close(a, b)


@pytest.mark.parametrize("block_images", [1, 2, 3, 5])  # 5 images: blocks of 2 and 3 pad the batch
def test_weight_gradient_blocks(block_images):
    x, k = data((5, 9, 9, 8), (3, 3, 8, 4), seed=2)
    g = jnp.asarray(np.random.default_rng(3).normal(size=(5, 5, 5, 4)).astype(f32))
    _, vjp = jax.vjp(lambda kk: conv.conv2d(x, kk, 2, 1, impl="xla"), k)
    close(conv.weight_gradient(x, g, (3, 3), 2, 1, block_images=block_images), vjp(g)[0])


@pytest.mark.parametrize("shapes", [((4, 3, 9, 9, 6), (3, 3, 6, 5)),
                                    ((2, 5, 96, 96, 64), (3, 3, 64, 4))])  # the weight gradient scans
def test_jit_and_vmap(shapes):
    x, k = data(*shapes, seed=4)  # a leading vmapped axis

    def loss(impl):
        def f(x, k):
            return jnp.sum(conv.conv2d(x, k, 2, 1, impl=impl) ** 2)
        return f

    for in_axes, kk in [((0, None), k), ((0, 0), jnp.stack([k * (i + 1) for i in range(x.shape[0])]))]:
        grad_fn = jax.vmap(jax.grad(loss("im2col"), argnums=(0, 1)), in_axes=in_axes)
        assert ("scan" in str(jax.make_jaxpr(grad_fn)(x, kk))) == (x.shape[2] > 9)
        ref = jax.vmap(jax.grad(loss("xla"), argnums=(0, 1)), in_axes=in_axes)(x, kk)
        out = jax.jit(jax.vmap(jax.grad(loss("im2col"), argnums=(0, 1)), in_axes=in_axes))(x, kk)
        for a, b in zip(out, ref, strict=True):
            close(a, b)
        ys = jax.vmap(lambda x, k: conv.conv2d(x, k, 2, 1, impl="im2col"), in_axes=in_axes)(x, kk)
        close(ys, jax.vmap(lambda x, k: conv.conv2d(x, k, 2, 1, impl="xla"), in_axes=in_axes)(x, kk))


def test_bfloat16_follows_inputs():
    x, k = data((2, 8, 8, 4), (3, 3, 4, 6), seed=5)
    xb, kb = x.astype(jnp.bfloat16), k.astype(jnp.bfloat16)
    y, dx, dk = grads("im2col", xb, kb, 1, 1)
    assert y.dtype == dx.dtype == dk.dtype == jnp.bfloat16
    y32, dx32, dk32 = grads("xla", xb.astype(f32), kb.astype(f32), 1, 1)
    for a, b in [(y, y32), (dx, dx32), (dk, dk32)]:
        close(np.asarray(a, f32), b, rtol=3e-2)


def test_impl_selection(monkeypatch):
    x, k = data((1, 5, 5, 2), (3, 3, 2, 2))

    def uses_custom_vjp():
        forward = str(jax.make_jaxpr(lambda k: conv.conv2d(x, k, 1, 1))(k))
        backward = str(jax.make_jaxpr(jax.grad(lambda k: conv.conv2d(x, k, 1, 1).sum()))(k))
        assert ("custom_vjp_call" in forward) == ("dot_general" in backward)
        return "custom_vjp_call" in forward

    monkeypatch.delenv(conv.ENV_VAR, raising=False)
    auto = "im2col" if jax.default_backend() == "cpu" else "xla"  # im2col on the CPU only
    assert conv.impl_setting() == "auto" and conv.resolved_impl() == auto and uses_custom_vjp() == (auto == "im2col")
    monkeypatch.setenv(conv.ENV_VAR, "xla")
    assert conv.resolved_impl() == "xla" and not uses_custom_vjp()
    with conv.use_impl("im2col"):  # the function beats the variable
        assert conv.resolved_impl() == "im2col" and uses_custom_vjp()
        with conv.use_impl("xla"):
            assert not uses_custom_vjp()
        assert uses_custom_vjp()
    assert conv.resolved_impl() == "xla"
    conv.set_impl("im2col")
    try:
        assert conv.resolved_impl() == "im2col"
    finally:
        conv.set_impl(None)
    assert conv.resolved_impl() == "xla"
    monkeypatch.setenv(conv.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="one of"):
        conv.resolved_impl()
    with pytest.raises(ValueError, match="one of"):
        conv.set_impl("fast")


def test_bad_arguments():
    x, k = data((1, 5, 5, 2), (3, 3, 3, 2))
    with pytest.raises(ValueError, match="channels"):
        conv.conv2d(x, k)
    with pytest.raises(ValueError, match="explicit"):
        conv.conv2d(x, k[:, :, :2], padding="SAME")
    with pytest.raises(ValueError, match="NHWC"):
        conv.conv2d(x[0], k)


@pytest.mark.parametrize("padding", [((1, 1), (1, 1)), "SAME", "VALID"])
def test_flax_conv_drop_in(padding):
    x, _ = data((2, 9, 9, 3), (1, 1, 1, 1), seed=6)
    ours = nn.Conv(4, (3, 3), (2, 2), padding, use_bias=True, conv_general_dilated=conv.conv_general_dilated)
    theirs = nn.Conv(4, (3, 3), (2, 2), padding, use_bias=True)
    variables = theirs.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, variables)

    def loss(module, v, x):
        return jnp.sum(module.apply(v, x) ** 2)

    with conv.use_impl("im2col"):
        a = jax.grad(lambda v, x: loss(ours, v, x), argnums=(0, 1))(variables, x)
    b = jax.grad(lambda v, x: loss(theirs, v, x), argnums=(0, 1))(variables, x)
    for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        close(u, w)
    # Cases outside NHWC/HWIO, ungrouped and undilated fall back to lax.
    grouped = nn.Conv(4, (3, 3), feature_group_count=2, conv_general_dilated=conv.conv_general_dilated)
    v = grouped.init(jax.random.key(1), jnp.ones((1, 6, 6, 4)))
    assert grouped.apply(v, jnp.ones((1, 6, 6, 4))).shape == (1, 6, 6, 4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bireal_resnet18", "resnet18"])
def test_model_gradients_equal_with_both_impls(name):
    model = models.create(name, 10, width=8, small_inputs=False, stage_sizes=(1, 1, 1, 1))
    x = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))  # the ImageNet stem: 7x7 s2, max-pool
    y = jnp.arange(3)
    variables = model.init(jax.random.key(1), x)
    trainable = {k: v for k, v in variables.items() if k != "batch_stats"}

    def loss(tr):
        logits, _ = model.apply({**tr, "batch_stats": variables["batch_stats"]}, x, train=True,
                                mutable=["batch_stats"])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    results = {}
    for impl in ("xla", "im2col"):
        with conv.use_impl(impl):
            results[impl] = jax.jit(jax.value_and_grad(loss))(trainable)
    np.testing.assert_allclose(float(results["im2col"][0]), float(results["xla"][0]), rtol=1e-6)
    leaves_x = jax.tree_util.tree_leaves_with_path(results["xla"][1])
    leaves_i = jax.tree.leaves(results["im2col"][1])
    assert len(leaves_x) == len(leaves_i)
    for (path, a), b in zip(leaves_x, leaves_i, strict=True):
        if float(np.max(np.abs(np.asarray(a)))) > 0:
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5,
                                       atol=1e-5 * float(np.max(np.abs(np.asarray(a)))),
                                       err_msg=jax.tree_util.keystr(path))


# ------------------------------------------------------------------------------ transposed convolution


def torch_conv_transpose(x, k, g, strides, padding):
    """F.conv_transpose2d (float64) and its gradients; asymmetric padding crops the full output."""
    import torch
    xt = torch.tensor(np.asarray(x, np.float64).transpose(0, 3, 1, 2), requires_grad=True)
    wt = torch.tensor(np.asarray(k, np.float64).transpose(2, 3, 0, 1), requires_grad=True)
    (top, bottom), (left, right) = conv.explicit_padding(padding)
    y = torch.nn.functional.conv_transpose2d(xt, wt, stride=strides)
    y = y[:, :, top:y.shape[2] - bottom, left:y.shape[3] - right]
    y.backward(torch.tensor(np.asarray(g, np.float64).transpose(0, 3, 1, 2)))
    return y.detach().numpy().transpose(0, 2, 3, 1), xt.grad.numpy().transpose(0, 2, 3, 1), \
        wt.grad.numpy().transpose(2, 3, 0, 1)


def transpose_grads(impl, x, k, strides, padding, ct_seed=99):
    """y, dx, dk of ``conv_transpose`` (jitted) for a fixed random cotangent."""
    def f(x, k):
        return conv.conv_transpose(x, k, strides, padding, impl=impl)
    shape = jax.eval_shape(f, x, k).shape
    ct = jnp.asarray(np.random.default_rng(ct_seed).normal(size=shape), x.dtype)
    y, vjp = jax.jit(lambda x, k: jax.vjp(f, x, k))(x, k)
    return (y, *vjp(ct)), ct


# (kernel, strides, padding, C_in): SimpleBaseline's 4x4 s2 p1 (C_in >= 32: per-tap weight-gradient
# matmuls, below: the concatenated im2col matrix); k % s != 0 (phases of 2 and 1 taps, odd output);
# k < s (a phase no tap reaches: zeros); p > k // s (phases that crop the input); asymmetric.
TRANSPOSE_CASES = [(4, 2, 1, 40), (4, 2, 1, 3), (3, 1, 1, 3), (3, 2, 0, 3), (2, 3, 0, 3), (5, 2, 3, 3),
                   (2, 2, 1, 3), ((3, 2), (2, 3), ((1, 0), (2, 1)), 3), (1, 1, 0, 3)]


@pytest.mark.parametrize("kernel,strides,padding,cin", TRANSPOSE_CASES)
def test_conv_transpose_matches_lax_and_torch(kernel, strides, padding, cin):
    """Forward, input and kernel gradients of the phase / im2col form equal lax's input-dilated
    convolution in float32 and float64 and PyTorch's conv_transpose2d in float64."""
    kh, kw = conv._pair(kernel, "kernel")
    rng = np.random.default_rng(7)
    x64, k64 = rng.normal(size=(2, 6, 5, cin)), rng.normal(size=(kh, kw, cin, 4))
    x, k = jnp.asarray(x64, jnp.float32), jnp.asarray(k64, jnp.float32)
    ours, ct = transpose_grads("im2col", x, k, strides, padding)
    ref, _ = transpose_grads("xla", x, k, strides, padding)
    assert ours[0].shape == ref[0].shape
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == jnp.float32
        close(a, b)
    with jax.enable_x64(True):
        x, k = jnp.asarray(x64), jnp.asarray(k64)
        ours, ct = transpose_grads("im2col", x, k, strides, padding)
        ref, _ = transpose_grads("xla", x, k, strides, padding)
        torch_ref = torch_conv_transpose(x, k, ct, strides, padding)
        for a, b, c in zip(ours, ref, torch_ref, strict=True):
            assert a.dtype == jnp.float64
            close(a, c, rtol=1e-12)
            close(b, c, rtol=1e-12)


def test_conv_transpose_jit_vmap_and_tiny_maps():
    """vmap over a leading axis (kernel shared or per example) of the jitted gradients; a 1x1
    input (the tiny-map im2col forward and input gradient)."""
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.normal(size=(3, 2, 5, 4, 6)).astype(f32))
    k = jnp.asarray(rng.normal(size=(4, 4, 6, 5)).astype(f32))

    def grad(impl, in_axes):
        def loss(x, k):
            return jnp.sum(jnp.sin(conv.conv_transpose(x, k, 2, 1, impl=impl)))
        return jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=in_axes))

    for in_axes, kk in [((0, None), k), ((0, 0), jnp.stack([k * (i + 1) for i in range(3)]))]:
        for a, b in zip(grad("im2col", in_axes)(x, kk), grad("xla", in_axes)(x, kk), strict=True):
            close(a, b)
    xs = jnp.asarray(rng.normal(size=(2, 1, 1, 6)).astype(f32))
    for a, b in zip(transpose_grads("im2col", xs, k, 2, 1)[0], transpose_grads("xla", xs, k, 2, 1)[0], strict=True):
        close(a, b)


def test_conv_transpose_bfloat16_and_selection(monkeypatch):
    x, k = data((2, 4, 3, 8), (4, 4, 8, 6), seed=9)
    (y, dx, dk), _ = transpose_grads("im2col", x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), 2, 1)
    assert y.dtype == dx.dtype == dk.dtype == jnp.bfloat16
    for a, b in zip((y, dx, dk), transpose_grads("xla", x, k, 2, 1)[0], strict=True):
        close(np.asarray(a, f32), b, rtol=3e-2)

    def form(**kw):
        jaxpr = str(jax.make_jaxpr(lambda x, k: conv.conv_transpose(x, k, 2, 1, **kw))(x, k))
        return "custom_vjp_call" in jaxpr, "lhs_dilation=(2, 2)" in jaxpr

    monkeypatch.delenv(conv.ENV_VAR, raising=False)
    assert form() == ((True, False) if jax.default_backend() == "cpu" else (False, True))
    assert form(impl="im2col") == (True, False)
    with conv.use_impl("xla"):
        assert form() == (False, True)
    # Negative padding (not PyTorch's) takes lax's path and still computes the full output + 1.
    y = conv.conv_transpose(x, k, 2, -1, impl="im2col")
    assert y.shape == (2, 12, 10, 6)
    close(y[:, 2:-2, 2:-2], conv.conv_transpose(x, k, 2, 1, impl="im2col"))
    with pytest.raises(ValueError, match="channels"):
        conv.conv_transpose(x, k[:, :, :3])
    with pytest.raises(ValueError, match="empty"):
        conv.conv_transpose(x[:, :1, :1], k, 1, 2)


def test_flax_conv_input_dilation_drop_in():
    """nn.Conv(input_dilation=2) with the drop-in is the transposed convolution (flipped kernel,
    PyTorch padding k - 1 - P), with the same values and gradients as lax's."""
    x, _ = data((2, 5, 4, 3), (1, 1, 1, 1), seed=10)
    kw = {"kernel_size": (4, 3), "input_dilation": 2, "padding": ((2, 1), (1, 2)), "use_bias": True}
    ours, theirs = nn.Conv(4, conv_general_dilated=conv.conv_general_dilated, **kw), nn.Conv(4, **kw)
    variables = theirs.init(jax.random.key(0), x)

    def loss(module, v, x):
        return jnp.sum(jnp.sin(module.apply(v, x)))

    with conv.use_impl("im2col"):
        assert "custom_vjp_call" in str(jax.make_jaxpr(lambda v: ours.apply(v, x))(variables))
        a = jax.grad(lambda v, x: loss(ours, v, x), argnums=(0, 1))(variables, x)
    b = jax.grad(lambda v, x: loss(theirs, v, x), argnums=(0, 1))(variables, x)
    for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        close(u, w)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["binary", "real"])
def test_pose_model_gradients_equal_with_both_impls(head):
    """SBPN (one backbone stage, 16-channel head): loss and every gradient (deconvolution kernels,
    the shared estimator's) equal with lax's transposed convolution and the phase / im2col one."""
    model = models.create("sbpn_resnet18", head=head, width=8, stage_sizes=(1,), small_inputs=True,
                          deconv_features=16)
    x = jax.random.normal(jax.random.key(0), (2, 6, 5, 3))
    target = jax.random.uniform(jax.random.key(1), (2, 48, 40, 17))
    variables = jax.jit(model.init)(jax.random.key(2, impl="rbg"), x)
    trainable = {k: v for k, v in variables.items() if k != "batch_stats"}

    def loss(tr):
        out, _ = model.apply({**tr, "batch_stats": variables["batch_stats"]}, x, train=True, mutable=["batch_stats"])
        return jnp.mean((out - target) ** 2)

    results = {}
    for impl in ("xla", "im2col"):
        with conv.use_impl(impl):
            results[impl] = jax.jit(jax.value_and_grad(loss))(trainable)
    np.testing.assert_allclose(float(results["im2col"][0]), float(results["xla"][0]), rtol=1e-6)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(results["xla"][1]),
                            jax.tree.leaves(results["im2col"][1]), strict=True):
        assert float(np.max(np.abs(np.asarray(a)))) > 0, jax.tree_util.keystr(path)
        close(b, a, rtol=1e-4)
