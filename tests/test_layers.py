"""Binary layers: parity with an independent PyTorch BBC conv (forward and every gradient, the
MLP's included), weight paths, padding, shared/per-layer theta, small real layers, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlpbnn import complexity, models
from mlpbnn import estimators as E
from mlpbnn import layers as L
from tests import torch_reference as ref

MLP, APPROX = E.get("mlp"), E.get("approx_sign")
BBC = L.BinarySpec(weights=MLP, inputs=APPROX)  # the official BBC layer


def _conv_setup(stride, pad_value, cin=5, cout=6, hw=9, seed=0):
    torch.manual_seed(seed)
    conv = ref.MetaConv(cin, cout, stride=stride, padding=1, pad_value=pad_value)
    meta = ref.MetaNet()
    layer = L.BinaryConv(cout, 3, stride, 1, spec=L.BinarySpec(weights=MLP, inputs=APPROX, pad_value=pad_value))
    x = np.random.default_rng(seed).normal(0, 1, (2, hw, hw, cin)).astype(np.float32)
    variables = {
        "params": {"kernel": jnp.asarray(ref.oihw_to_hwio(conv.weights))},
        "estimator": {"weight_estimator": {
            "w0": jnp.asarray(meta.network.Linear0.weight.detach().numpy().T),
            "w1": jnp.asarray(meta.network.Linear1.weight.detach().numpy().T)}},
    }
    return conv, meta, layer, x, variables


@pytest.mark.parametrize("stride,pad_value", [(1, 0.0), (2, 0.0), (2, 1.0), (1, -1.0)])
def test_binary_conv_matches_torch_bbc_conv(stride, pad_value):
    conv, meta, layer, x, variables = _conv_setup(stride, pad_value)
    xt = ref.nhwc_to_torch(x).requires_grad_(True)
    # Official block: BinaryActivation (ApproxSign) on the input, MetaConv2d with the shared net.
    yt = conv(ref.with_soft_gradient(xt, ref.approx_sign_soft(xt)), meta)
    g = np.random.default_rng(9).normal(0, 1, yt.shape).astype(np.float32)
    (yt * torch.tensor(g)).sum().backward()

    def f(v, xx):
        return layer.apply(v, xx)

    y, vjp = jax.vjp(f, variables, jnp.asarray(x))
    dv, dx = vjp(jnp.asarray(g).transpose(0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(y).transpose(0, 3, 1, 2), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), xt.grad.permute(0, 2, 3, 1).numpy(),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dv["params"]["kernel"]), ref.oihw_to_hwio(conv.weights.grad),
                               rtol=1e-5, atol=1e-5)
    est_grads = dv["estimator"]["weight_estimator"]
    np.testing.assert_allclose(np.asarray(est_grads["w0"]), meta.network.Linear0.weight.grad.numpy().T,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(est_grads["w1"]), meta.network.Linear1.weight.grad.numpy().T,
                               rtol=1e-5, atol=1e-5)


def test_binary_conv_jit_and_vmap_match_eager():
    _, _, layer, x, variables = _conv_setup(2, 0.0)

    def loss(v, xx):
        return jnp.sum(layer.apply(v, xx) ** 2)

    eager = jax.grad(loss, argnums=(0, 1))(variables, x)
    jitted = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables, x)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    per_example = jax.vmap(lambda xx: layer.apply(variables, xx[None])[0])(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(per_example), np.asarray(layer.apply(variables, x)), rtol=1e-6)


# ------------------------------------------------------------------------------ transposed convolution


def _torch_binary_deconv(x, w, meta, stride, padding):
    """PyTorch: sign(x) with Bi-Real's ApproxSign gradient, weights (C_in, C_out, k, k) centred and
    scaled per output channel (dims 0, 2, 3), the meta net's sign, ``conv_transpose2d``."""
    xb = ref.with_soft_gradient(x, ref.approx_sign_soft(x))
    wc = w - w.mean(dim=(0, 2, 3), keepdim=True)
    scale = wc.abs().mean(dim=(0, 2, 3), keepdim=True).detach()
    return F.conv_transpose2d(xb, meta(wc) * scale, stride=stride, padding=padding)


@pytest.mark.parametrize("k,stride,padding", [(4, 2, 1), (3, 1, 1), (3, 2, 0), (2, 3, 0)])
def test_binary_conv_transpose_matches_torch(k, stride, padding):
    """Forward: F.conv_transpose2d(sign(x), sign(w_c) * mean|w_c|) exactly as written out, and the
    PyTorch layer; backward: dx, the latent weights' and the shared MLP's gradients."""
    torch.manual_seed(0)
    cin, cout = 6, 5
    w = torch.nn.init.xavier_uniform_(torch.empty(cin, cout, k, k)).requires_grad_(True)
    meta = ref.MetaNet()
    layer = L.BinaryConvTranspose(cout, k, stride, padding, spec=BBC)
    x = np.random.default_rng(0).normal(0, 1, (2, 5, 4, cin)).astype(np.float32)
    xt = ref.nhwc_to_torch(x).requires_grad_(True)
    yt = _torch_binary_deconv(xt, w, meta, stride, padding)
    wc = w.detach() - w.detach().mean(dim=(0, 2, 3), keepdim=True)
    written = F.conv_transpose2d(torch.sign(xt.detach()), torch.where(wc >= 0, 1.0, -1.0)
                                 * wc.abs().mean(dim=(0, 2, 3), keepdim=True), stride=stride, padding=padding)
    g = np.random.default_rng(9).normal(0, 1, yt.shape).astype(np.float32)
    (yt * torch.tensor(g)).sum().backward()
    variables = {"params": {"kernel": jnp.asarray(w.detach().numpy().transpose(2, 3, 0, 1))},
                 "estimator": {"weight_estimator": {"w0": jnp.asarray(meta.network.Linear0.weight.detach().numpy().T),
                                                    "w1": jnp.asarray(meta.network.Linear1.weight.detach().numpy().T)}}}
    y, vjp = jax.vjp(lambda v, xx: layer.apply(v, xx), variables, jnp.asarray(x))
    dv, dx = vjp(jnp.asarray(g).transpose(0, 2, 3, 1))
    assert y.shape == (2, (5 - 1) * stride + k - 2 * padding, (4 - 1) * stride + k - 2 * padding, cout)
    np.testing.assert_allclose(np.asarray(y).transpose(0, 3, 1, 2), written.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y).transpose(0, 3, 1, 2), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), xt.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dv["params"]["kernel"]), w.grad.numpy().transpose(2, 3, 0, 1),
                               rtol=1e-4, atol=1e-5)
    est = dv["estimator"]["weight_estimator"]
    assert float(np.abs(np.asarray(est["w1"])).sum()) > 0
    np.testing.assert_allclose(np.asarray(est["w0"]), meta.network.Linear0.weight.grad.numpy().T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(est["w1"]), meta.network.Linear1.weight.grad.numpy().T, rtol=1e-4, atol=1e-5)


def test_real_conv_transpose_and_flax_conv_transpose_match_torch():
    """Without estimators: PyTorch's ConvTranspose2d(4, 2, 1) (weight (C_in, C_out, 4, 4), kernel
    w.transpose(2, 3, 0, 1)). Flax's nn.ConvTranspose computes the same with the spatially
    flipped kernel and padding k - 1 - p = 2 per side (pose.md section 6's [UNVERIFIED] item)."""
    torch.manual_seed(1)
    deconv = torch.nn.ConvTranspose2d(6, 5, 4, 2, 1, bias=False)
    x = np.random.default_rng(1).normal(0, 1, (2, 5, 3, 6)).astype(np.float32)
    with torch.no_grad():
        yt = deconv(ref.nhwc_to_torch(x)).permute(0, 2, 3, 1).numpy()
    w = deconv.weight.detach().numpy()
    ours = L.BinaryConvTranspose(5, spec=L.REAL).apply({"params": {"kernel": w.transpose(2, 3, 0, 1)}}, x)
    flax_ct = nn.ConvTranspose(5, (4, 4), (2, 2), padding=((2, 2), (2, 2)), use_bias=False)
    theirs = flax_ct.apply({"params": {"kernel": w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)}}, x)
    assert yt.shape == (2, 10, 6, 5)
    np.testing.assert_allclose(np.asarray(ours), yt, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(theirs), yt, rtol=1e-5, atol=1e-5)
    assert "estimator" not in L.BinaryConvTranspose(5, spec=L.REAL).init(jax.random.key(0), x)


def test_binary_conv_transpose_shared_theta_values_and_errors():
    """A mapping of theta values (a head reading its backbone's theta) is used as given; wrong
    shapes and non-NHWC inputs are refused."""
    x = jax.random.normal(jax.random.key(0), (1, 3, 3, 4))
    own = L.BinaryConvTranspose(2, spec=BBC)
    v = own.init(jax.random.key(1), x)
    theta = v["estimator"]["weight_estimator"]
    shared = L.BinaryConvTranspose(2, spec=BBC, weight_theta=theta)
    sv = shared.init(jax.random.key(1), x)
    assert "estimator" not in sv
    np.testing.assert_array_equal(np.asarray(shared.apply({"params": v["params"]}, x)), np.asarray(own.apply(v, x)))
    bad = L.BinaryConvTranspose(2, spec=BBC, weight_theta={"w0": jnp.zeros((1, 3))})
    with pytest.raises(ValueError, match="shared theta has shapes"):
        bad.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="NHWC"):
        L.BinaryConvTranspose(2, spec=L.REAL).init(jax.random.key(0), jnp.ones((3, 3, 4)))


def test_binary_dense_matches_torch():
    torch.manual_seed(1)
    meta = ref.MetaNet()
    w = torch.empty(7, 12)
    torch.nn.init.xavier_uniform_(w)
    w.requires_grad_(True)
    b = torch.zeros(7, requires_grad=True)
    x = np.random.default_rng(1).normal(0, 1, (4, 12)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    wc = w - w.mean(1, keepdim=True)
    wb = meta(wc) * wc.abs().mean(1, keepdim=True).detach()
    yt = F.linear(ref.with_soft_gradient(xt, ref.approx_sign_soft(xt)), wb, b)
    yt.pow(2).sum().backward()
    layer = L.BinaryDense(7, spec=BBC)
    v = {"params": {"kernel": jnp.asarray(w.detach().numpy().T), "bias": jnp.zeros(7)},
         "estimator": {"weight_estimator": {"w0": jnp.asarray(meta.network.Linear0.weight.detach().numpy().T),
                                            "w1": jnp.asarray(meta.network.Linear1.weight.detach().numpy().T)}}}
    y = layer.apply(v, x)
    dv, dx = jax.grad(lambda vv, xx: jnp.sum(layer.apply(vv, xx) ** 2), argnums=(0, 1))(v, x)
    np.testing.assert_allclose(np.asarray(y), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), xt.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dv["params"]["kernel"]), w.grad.numpy().T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dv["estimator"]["weight_estimator"]["w1"]),
                               meta.network.Linear1.weight.grad.numpy().T, rtol=1e-5, atol=1e-4)


def test_weight_paths():
    k = jax.random.normal(jax.random.key(0), (3, 3, 4, 5)) * 0.05 + 0.01
    ste = E.get("ste")
    wb = L.binarize_weights(k, L.BinarySpec(weights=ste), {})
    wc = k - k.mean(axis=(0, 1, 2), keepdims=True)
    np.testing.assert_allclose(np.asarray(wb), np.asarray(jnp.abs(wc).mean((0, 1, 2)) * jnp.sign(wc)), rtol=1e-6)
    p2 = L.binarize_weights(k, L.BinarySpec(weights=ste, weight_scale="pow2"), {})
    mags = np.unique(np.abs(np.asarray(p2)))
    np.testing.assert_allclose(np.log2(mags), np.round(np.log2(mags)), atol=1e-6)  # powers of two
    raw = L.binarize_weights(k, L.BinarySpec(weights=ste, weight_norm="none", weight_scale="none"), {})
    np.testing.assert_array_equal(np.asarray(raw), np.where(np.asarray(k) >= 0, 1.0, -1.0))
    # IR-Net standardisation: the latent weights seen by the estimator have unit std per channel.
    standardize = L.BinarySpec(weights=E.get("ste", clip=None), weight_norm="standardize", weight_scale="none")
    grads = jax.grad(lambda kk: jnp.sum(L.binarize_weights(kk, standardize, {}) * jnp.arange(5.0)))(k)
    assert np.all(np.isfinite(np.asarray(grads)))
    # Centring: its gradient has zero mean per output channel (the derivative of w - mean(w)).
    g = jax.grad(lambda kk: jnp.sum(L.binarize_weights(kk, L.BinarySpec(weights=ste), {})
                                    * jnp.arange(180.0).reshape(3, 3, 4, 5)))(k)
    np.testing.assert_allclose(np.asarray(g).mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    # No estimator: real weights as they are.
    assert L.binarize_weights(k, L.REAL, {}) is k


def test_real_paths_reduce_to_plain_convolution():
    layer = L.BinaryConv(4, 3, 1, 1, spec=L.REAL)  # no estimators: an ordinary conv with explicit padding
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    v = layer.init(jax.random.key(1), x)
    plain = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
    np.testing.assert_allclose(np.asarray(layer.apply(v, x)), np.asarray(plain.apply(v, x)), rtol=1e-5, atol=1e-6)
    assert "estimator" not in v


def test_plus_minus_one_padding_keeps_binary_inputs_binary():
    layer = L.BinaryConv(1, 3, 1, 1, spec=L.BinarySpec(weights="ste", inputs="ste", pad_value=1.0,
                                                    weight_scale="none", weight_norm="none"))
    x = jax.random.normal(jax.random.key(0), (1, 5, 5, 2))
    v = layer.init(jax.random.key(1), x)
    y = layer.apply(v, x)
    # With +-1 inputs and weights every output is a sum of 18 +-1 products: an even integer.
    np.testing.assert_array_equal(np.asarray(y) % 2, 0)
    padded = jnp.pad(jnp.sign(x), ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=1.0)
    direct = L.conv_nhwc(padded, jnp.sign(v["params"]["kernel"]), (1, 1))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(direct))


class _TwoConvs(nn.Module):
    share: bool

    @nn.compact
    def __call__(self, x):
        shared = L.EstimatorParams(MLP, name="weight_estimator") if self.share else None
        x = L.BinaryConv(4, 3, 1, 1, spec=BBC, weight_theta=shared)(x)
        return L.BinaryConv(4, 3, 1, 1, spec=BBC, weight_theta=shared)(x)


@pytest.mark.slow
def test_shared_and_per_layer_theta():
    x = jnp.ones((1, 5, 5, 3))
    shared = _TwoConvs(True).init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, shared["estimator"]) == {"weight_estimator": {"w0": (1, 100), "w1": (100, 2)}}
    per_layer = _TwoConvs(False).init(jax.random.key(0), x)
    assert sorted(per_layer["estimator"]) == ["BinaryConv_0", "BinaryConv_1"]
    assert "weight_estimator" in per_layer["estimator"]["BinaryConv_1"]
    # Both layers' gradients reach the one shared theta.
    xr = jax.random.normal(jax.random.key(2), (2, 5, 5, 3))
    g = jax.grad(lambda v: jnp.sum(_TwoConvs(True).apply(v, xr) ** 2))(shared)
    assert float(jnp.abs(g["estimator"]["weight_estimator"]["w1"]).sum()) > 0


@pytest.mark.slow
def test_learnable_input_estimator_gets_gradients():
    layer = L.BinaryConv(3, 3, 1, 1, spec=L.BinarySpec(weights="ste", inputs=E.get("linear", hidden=4)))
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 2))
    v = layer.init(jax.random.key(1), x)
    g = jax.grad(lambda vv: jnp.sum(layer.apply(vv, x) ** 2))(v)
    assert sorted(g["estimator"]) == ["input_estimator"]
    assert float(jnp.abs(g["estimator"]["input_estimator"]["w0"]).sum()) > 0


def test_prelu_rprelu_and_learnable_bias_match_torch():
    x = np.random.default_rng(0).normal(0, 1, (2, 4, 4, 3)).astype(np.float32)
    slope = np.array([0.1, 0.25, -0.3], np.float32)
    tp = torch.nn.PReLU(3)
    with torch.no_grad():
        tp.weight.copy_(torch.tensor(slope))
    expected = tp(ref.nhwc_to_torch(x)).permute(0, 2, 3, 1).detach().numpy()
    np.testing.assert_allclose(np.asarray(L.PReLU().apply({"params": {"slope": slope}}, x)), expected, rtol=1e-6)
    assert np.allclose(L.PReLU().init(jax.random.key(0), x)["params"]["slope"], 0.25)
    gamma, zeta = np.array([0.5, -0.5, 0.0], np.float32), np.array([1.0, 2.0, 3.0], np.float32)
    shifted = tp(ref.nhwc_to_torch(x + gamma)).permute(0, 2, 3, 1).detach().numpy() + zeta
    got = L.RPReLU().apply({"params": {"gamma": gamma, "slope": slope, "zeta": zeta}}, x)
    np.testing.assert_allclose(np.asarray(got), shifted, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(L.LearnableBias().apply({"params": {"bias": gamma}}, x)), x + gamma)


def test_bfloat16_compute_keeps_float32_params():
    layer = L.BinaryConv(4, 3, 1, 1, spec=BBC, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    v = layer.init(jax.random.key(1), x)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(v))
    y = layer.apply(v, x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    y32 = L.BinaryConv(4, 3, 1, 1, spec=BBC).apply(v, x)
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y32), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("kwargs,msg", [
    ({"padding": "SAME"}, "explicit"), ({"padding": (1, 2, 3)}, "padding"),
])
def test_bad_layer_arguments(kwargs, msg):
    layer = L.BinaryConv(4, spec=L.REAL, **kwargs)
    with pytest.raises(ValueError, match=msg):
        layer.init(jax.random.key(0), jnp.ones((1, 5, 5, 3)))


def test_bad_input_rank_and_mismatched_shared_theta():
    with pytest.raises(ValueError, match="NHWC"):
        L.BinaryConv(4).init(jax.random.key(0), jnp.ones((5, 5, 3)))

    class Bad(nn.Module):
        @nn.compact
        def __call__(self, x):
            shared = L.EstimatorParams(E.get("linear"), name="weight_estimator")
            return L.BinaryConv(4, spec=BBC, weight_theta=shared)(x)

    with pytest.raises(ValueError, match="shared estimator params are for"):
        Bad().init(jax.random.key(0), jnp.ones((1, 5, 5, 3)))


# ------------------------------------------------------------------------------ BatchNorm, PReLU at 0


@pytest.mark.parametrize("shape", [(2, 3, 2, 5), (2, 1, 1, 4)])
def test_batch_norm_matches_torch_over_train_steps(shape):
    """Three train steps at batch 2, then eval: outputs and running statistics as
    torch.nn.BatchNorm2d, whose running variance takes the unbiased batch variance (n / (n - 1);
    n = 12 and n = 2 values per channel here)."""
    n, h, w, c = shape
    rng = np.random.default_rng(0)
    scale, bias = rng.uniform(0.5, 1.5, c).astype(np.float32), rng.normal(0, 0.1, c).astype(np.float32)
    tb = torch.nn.BatchNorm2d(c)  # momentum 0.1, eps 1e-5
    with torch.no_grad():
        tb.weight.copy_(torch.tensor(scale))
        tb.bias.copy_(torch.tensor(bias))
    bn = L.BatchNorm(momentum=0.9, epsilon=1e-5)
    flax_bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5, use_fast_variance=False)
    v = {"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)},
         "batch_stats": {"mean": jnp.zeros(c), "var": jnp.ones(c)}}
    v_flax = v
    tb.train()
    for _ in range(3):
        x = (rng.normal(0, 1, shape) * rng.uniform(0.5, 3, c) + rng.normal(0, 2, c)).astype(np.float32)
        yt = tb(ref.nhwc_to_torch(x)).permute(0, 2, 3, 1).detach().numpy()
        y, state = bn.apply(v, x, use_running_average=False, mutable=["batch_stats"])
        v = {**v, **state}
        _, flax_state = flax_bn.apply(v_flax, x, use_running_average=False, mutable=["batch_stats"])
        v_flax = {**v_flax, **flax_state}
        np.testing.assert_allclose(np.asarray(y), yt, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(v["batch_stats"]["mean"]), tb.running_mean.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(v["batch_stats"]["var"]), tb.running_var.numpy(), rtol=1e-6)
    # Flax's own BatchNorm keeps the biased variance: this test would catch it.
    assert np.abs(np.asarray(v_flax["batch_stats"]["var"]) / tb.running_var.numpy() - 1).max() > 1e-3
    tb.eval()
    x = rng.normal(0, 1, shape).astype(np.float32)
    yt = tb(ref.nhwc_to_torch(x)).permute(0, 2, 3, 1).detach().numpy()
    np.testing.assert_allclose(np.asarray(bn.apply(v, x, use_running_average=True)), yt, rtol=1e-5, atol=1e-5)


def test_batch_norm_gradients_match_torch():
    rng = np.random.default_rng(1)
    x = rng.normal(1, 2, (2, 3, 3, 4)).astype(np.float32)
    g = rng.normal(0, 1, x.shape).astype(np.float32)
    tb = torch.nn.BatchNorm2d(4)
    xt = ref.nhwc_to_torch(x).requires_grad_(True)
    (tb(xt) * ref.nhwc_to_torch(g)).sum().backward()
    bn = L.BatchNorm(use_running_average=False)
    v = bn.init(jax.random.key(0), x)

    def f(params, xx):
        y, _ = bn.apply({**v, "params": params}, xx, mutable=["batch_stats"])
        return jnp.sum(y * g)

    dp, dx = jax.grad(f, argnums=(0, 1))(v["params"], jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(dx), xt.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dp["scale"]), tb.weight.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dp["bias"]), tb.bias.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_batch_norm_computes_in_float32_at_least():
    x = jax.random.normal(jax.random.key(0), (4, 3, 3, 5)) * 3 + 100  # |mean| >> std
    bn = L.BatchNorm(use_running_average=False, dtype=jnp.bfloat16)
    v = bn.init(jax.random.key(1), x)
    y, state = bn.apply(v, x.astype(jnp.bfloat16), mutable=["batch_stats"])
    assert y.dtype == jnp.float32 and state["batch_stats"]["var"].dtype == jnp.float32
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(v))
    # Two-pass statistics of the bf16 input, in float32: per channel, zero mean and unit variance.
    np.testing.assert_allclose(np.asarray(y).mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(y).var(axis=(0, 1, 2)), 1.0, rtol=1e-3)
    with jax.enable_x64(True):  # float64 parity runs stay float64
        x64 = jnp.asarray(np.asarray(x), jnp.float64)
        assert L.BatchNorm(use_running_average=False, dtype=jnp.float64).apply(
            v, x64, mutable=["batch_stats"])[0].dtype == jnp.float64


def test_prelu_gradient_at_zero_matches_torch():
    """PyTorch's PReLU tests x > 0: at exactly 0 the input gradient is the slope and the slope's
    gradient is 0 (x itself)."""
    x = np.array([[-1.5, 0.0, 2.0], [0.0, -0.0, 0.5]], np.float32).reshape(1, 2, 1, 3)
    slope = np.array([0.1, -0.3, 0.25], np.float32)
    g = np.array([[1.0, 2.0, -1.0], [0.5, 3.0, 1.0]], np.float32).reshape(1, 2, 1, 3)
    tp = torch.nn.PReLU(3)
    with torch.no_grad():
        tp.weight.copy_(torch.tensor(slope))
    xt = ref.nhwc_to_torch(x).requires_grad_(True)
    (tp(xt) * ref.nhwc_to_torch(g)).sum().backward()
    dp, dx = jax.grad(lambda p, xx: jnp.sum(L.PReLU().apply({"params": p}, xx) * g), argnums=(0, 1))(
        {"slope": jnp.asarray(slope)}, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(dx), xt.grad.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(np.asarray(dp["slope"]), tp.weight.grad.numpy(), rtol=1e-6)
    # x = [[-1.5, 0, 2], [0, -0, 0.5]]: the slope times g at the three zeros, not g.
    np.testing.assert_allclose(np.asarray(dx).reshape(2, 3), [[0.1, -0.6, -1.0], [0.05, -0.9, 1.0]], rtol=1e-6)


# ------------------------------------------------------------------------------ binary layers of a model

TINY = {"width": 8, "small_inputs": True, "stage_sizes": (1, 1, 1, 1)}


@pytest.mark.parametrize("name", [n for n in models.names()  # the binary ResNets (BHRNet: test_models_hrnet.py)
                                  if models.info(n).binary and "stage_sizes" in models.info(n).options])
@pytest.mark.parametrize("kw", [TINY, {}], ids=["tiny", "default"])
def test_binary_layer_paths_equal_the_complexity_count(name, kw):
    """The layers the complexity count gives 1-bit parameters (the trainer's former source); SBPN's
    binary deconvolutions among them."""
    model = models.create(name, **({"num_classes": 10} if models.info(name).head == "classifier" else {}), **kw)
    shape = (32, 32, 3)
    old = {layer.path for layer in complexity.count(model, shape).layers if layer.params_1bit}
    found = L.binary_layer_paths(model, jax.ShapeDtypeStruct((1, *shape), jnp.float32))
    assert found == old
    stages = model.backbone.stage_sizes
    if name == "reactnet_a":  # one binary 3x3 and one or two (doubling) 1x1 binary convs per block
        blocks = {p.split("/")[0] for p in found}
        assert blocks == {f"feature_{i + 1}" for i in range(sum(stages))}
        kinds = {p.split("/")[1] for p in found}
        assert "binary_3x3" in kinds and kinds <= {"binary_3x3", "binary_pw", "binary_pw_down1", "binary_pw_down2"}
        assert len(found) == sum(stages) + sum(f"{b}/binary_pw" in found for b in blocks) + 2 * sum(
            f"{b}/binary_pw_down1" in found for b in blocks)
        return
    head = {"deconv_layers_0", "deconv_layers_3", "deconv_layers_6"} if models.info(name).head == "heatmap" else set()
    assert found == {f"layer{i + 1}_{j}/binary_conv" for i, n in enumerate(stages) for j in range(n)} | head


def test_binary_layer_paths_of_real_models_and_stages():
    x = jnp.zeros((1, 12, 12, 3))
    assert L.binary_layer_paths(models.create("resnet18", 10, **TINY), x) == set()
    # Two-stage training's first stage: binary activations, real weights.
    assert L.binary_layer_paths(models.create("bireal_resnet18", 10, weight_estimator=None, **TINY), x) == set()
    # Binary weights, real activations: still binary kernels.
    assert len(L.binary_layer_paths(models.create("bireal_resnet18", 10, activation_estimator=None, **TINY), x)) == 4
    assert L.binary_layer_paths(_TwoConvs(True), jnp.ones((1, 5, 5, 3))) == {"BinaryConv_0", "BinaryConv_1"}
    dense = L.BinaryDense(3, spec=L.BinarySpec(weights="ste", inputs=None))
    assert L.binary_layer_paths(dense, jnp.ones((2, 4))) == {""}  # the root module


@pytest.mark.slow
def test_weight_signs_are_each_layers_forward():
    model = models.create("bireal_resnet18", 10, **TINY)  # centred weights, MLP estimator (forward sign)
    x = jnp.zeros((1, 12, 12, 3))
    v = model.init(jax.random.key(0), x)
    signs = jax.jit(lambda variables: L.weight_signs(model, variables, x))(v)
    assert set(signs) == L.binary_layer_paths(model, x)
    for path, s in signs.items():
        k = np.asarray(v["params"][path.split("/")[0]]["binary_conv"]["kernel"])
        np.testing.assert_array_equal(np.asarray(s), np.where(k - k.mean(axis=(0, 1, 2)) >= 0, 1.0, -1.0))
    reactnet = models.create("reactnet_resnet18", 10, **TINY)  # no centring
    v = reactnet.init(jax.random.key(0), x)
    v["params"]["layer1_0"]["binary_conv"]["kernel"] -= 5e-4  # latent init U(0, 1e-3): half negative now
    k = np.asarray(v["params"]["layer1_0"]["binary_conv"]["kernel"])
    signs = jax.jit(lambda variables: L.weight_signs(reactnet, variables, x))(v)
    np.testing.assert_array_equal(np.asarray(signs["layer1_0/binary_conv"]), np.where(k >= 0, 1.0, -1.0))


def test_flip_ratio_uses_the_classifier_estimators_forward():
    """The argmax ``classifier`` estimator (BBC's MetaConv_v3) decides the sign by comparing two
    logits f(w) = w w0: with w0 = (1, -1) it outputs -sign(w). A theta update that swaps the
    logits flips every weight while no latent weight changes sign."""
    model = models.create("bireal_resnet18", 10, weight_estimator="classifier", **TINY)
    x = jnp.zeros((1, 12, 12, 3))
    v = model.init(jax.random.key(0), x)
    v["estimator"]["weight_estimator"]["w0"] = jnp.array([[1.0, -1.0]])
    old = L.weight_signs(model, v, x)
    for path, s in old.items():
        k = np.asarray(v["params"][path.split("/")[0]]["binary_conv"]["kernel"])
        wc = k - k.mean(axis=(0, 1, 2))
        np.testing.assert_array_equal(np.asarray(s), -np.sign(wc))  # disagrees with sign(w) everywhere
    new_v = {**v, "estimator": {"weight_estimator": {"w0": jnp.array([[-1.0, 1.0]])}}}
    assert float(L.flip_ratio(old, L.weight_signs(model, new_v, x))) == 1.0
    # Flip some latent weights too: with the swapped logits, exactly those keep their forward value.
    params = jax.tree.map(lambda a: a, new_v["params"])
    kernel = params["layer1_0"]["binary_conv"]["kernel"]
    params["layer1_0"]["binary_conv"]["kernel"] = kernel.at[0].set(-kernel[0])  # 1 of 3 rows of the 3x3
    wc_old = np.asarray(kernel - kernel.mean(axis=(0, 1, 2)))
    wc_new = np.asarray(params["layer1_0"]["binary_conv"]["kernel"])
    wc_new = wc_new - wc_new.mean(axis=(0, 1, 2))
    layer1_same = np.sum(-np.sign(wc_old) == np.sign(wc_new))
    total = sum(a.size for a in old.values())
    expected = 1.0 - layer1_same / total
    got = jax.jit(lambda a, b: L.flip_ratio(L.weight_signs(model, a, x), L.weight_signs(model, b, x)))(
        v, {**new_v, "params": params})
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def test_weight_signs_under_jit_compile_without_the_forward_pass():
    model = models.create("bireal_resnet18", 10, **TINY)
    x = jnp.zeros((1, 12, 12, 3))
    v = model.init(jax.random.key(0), x)
    f = jax.jit(lambda variables: L.weight_signs(model, variables, x))
    hlo = f.lower(v).compile().as_text()
    assert "convolution" not in hlo  # XLA removed the network's forward as dead code
    for path, s in f(v).items():
        np.testing.assert_array_equal(np.asarray(s), np.asarray(L.weight_signs(model, v, x)[path]))


def test_flip_ratio_values_and_errors():
    a = {"a": jnp.array([1.0, -1.0, 1.0, 1.0]), "b": jnp.array([[1.0, 1.0], [-1.0, -1.0]])}
    b = {"a": jnp.array([1.0, 1.0, 1.0, -1.0]), "b": jnp.array([[1.0, 1.0], [-1.0, 1.0]])}
    assert float(L.flip_ratio(a, b)) == 3 / 8
    assert float(L.flip_ratio(a, a)) == 0.0
    assert float(L.flip_ratio({}, {})) == 0.0
    with pytest.raises(ValueError, match="different binary layers"):
        L.flip_ratio(a, {"a": a["a"]})


def test_too_small_input_is_refused_by_name():
    # At 16 px the ImageNet-stem Bi-Real's last stage gets a 1x1 map, which its 2x2 shortcut
    # pool would turn into an empty one (XLA returns it silently; PyTorch raises).
    model = models.create("bireal_resnet18", num_classes=10)
    with pytest.raises(ValueError, match=r"layer4_0/downsample_0: AvgPool: a 1x1 input .* too small"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
    with pytest.raises(ValueError, match="pool: MaxPool: a 1x1 input"):
        L.MaxPool(3, 2, 0, name="pool").init(jax.random.key(0), jnp.zeros((1, 1, 1, 2)))
    layer = L.BinaryConv(4, 3, 1, 0)
    with pytest.raises(ValueError, match="conv2d: a 2x2 input .* 3x3 window"):
        layer.init(jax.random.key(0), jnp.zeros((1, 2, 2, 2)))
    assert layer.init(jax.random.key(0), jnp.zeros((1, 3, 3, 2)))["params"]["kernel"].shape == (3, 3, 2, 4)
