"""mlpbnn.estimators.learned: BBC's gradient formulas for the MLP, the linear and classifier
variants, initialisation, parity with PyTorch modules of the official structure."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mlpbnn import estimators as E
from tests import torch_reference as ref
from tests.test_estimators_free import grid, surrogate_grad

f32 = np.float32


def big_theta(key):
    """An MLP theta with outputs beyond +-1 for |x| > ~0.2, so the gate is exercised."""
    theta = E.get("mlp").init(key)
    return {"w0": theta["w0"] * 3.0, "w1": theta["w1"] * 20.0}


def test_mlp_gradients_match_bbc_formulas():
    est = E.get("mlp")
    theta = big_theta(jax.random.key(3))
    rng = np.random.default_rng(3)
    x = rng.normal(0, 0.5, 300).astype(f32)
    g = rng.normal(0, 1, 300).astype(f32)
    dtheta, dx = jax.grad(lambda th, v: jnp.sum(est(th, v) * g), argnums=(0, 1))(theta, jnp.asarray(x))

    w0, w1 = np.asarray(theta["w0"], np.float64)[0], np.asarray(theta["w1"], np.float64)
    xd, gd = x.astype(np.float64), g.astype(np.float64)
    h = np.tanh(np.outer(xd, w0))                    # (N, H)
    f = h @ w1                                        # (N, 2)
    gate = (np.abs(f) < 1).astype(np.float64)
    assert 0.1 < gate.mean() < 0.9                    # the gate does something
    dx_ref = gd * np.einsum("nk,jk,nj,j->n", gate, w1, 1 - h ** 2, w0)
    dw1_ref = np.einsum("n,nk,nj->jk", gd, gate, h)
    dw0_ref = np.einsum("n,nk,jk,nj,n->j", gd, gate, w1, 1 - h ** 2, xd)
    np.testing.assert_allclose(np.asarray(dx), dx_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dtheta["w1"]), dw1_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dtheta["w0"])[0], dw0_ref, rtol=1e-4, atol=1e-4)


def test_mlp_is_learnable_slope_ste_near_zero():
    est = E.get("mlp")
    theta = est.init(jax.random.key(0))
    c = float(np.sum(np.asarray(theta["w0"])[0][:, None] * np.asarray(theta["w1"])))
    np.testing.assert_allclose(float(E.slope_at_zero(theta)), c, rtol=1e-5)
    np.testing.assert_allclose(surrogate_grad(est, theta, np.array([1e-3, -1e-3], f32)), [c, c], rtol=1e-4)


def test_linear_estimator_formula():
    est = E.get("linear", hidden=4)
    theta = {"w0": jnp.array([[0.5, -1.0, 2.0, 0.25]]), "w1": jnp.array([[1.0, 0.0], [0.5, 1.0],
                                                                        [1.0, 0.5], [-2.0, 2.0]])}
    c = np.asarray(theta["w0"])[0] @ np.asarray(theta["w1"])  # c = (2, 0.5)
    x = np.array([0.1, 0.3, 0.6, 1.5, 2.5, -0.7], f32)
    expected = sum(c[k] * (np.abs(c[k] * x) < 1) for k in range(2))
    np.testing.assert_allclose(surrogate_grad(est, theta, x), expected, rtol=1e-6)


def test_classifier_tie_and_decision():
    est = E.get("classifier")
    theta = {"w0": jnp.array([[1.0, -2.0]])}  # f1 - f0 = -3x: the classifier flips the sign
    x = jnp.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(np.asarray(est(theta, x)), [1.0, 1.0, -1.0])
    np.testing.assert_array_equal(np.asarray(E.get("classifier", tie=-1)(theta, x)), [1.0, -1.0, -1.0])


def test_classifier_gradient():
    est = E.get("classifier")
    theta = {"w0": jnp.array([[0.7, -0.2]])}
    x = jnp.array([0.3, -1.2, 2.0])
    g = jnp.array([1.0, -2.0, 0.5])
    dtheta, dx = jax.grad(lambda th, v: jnp.sum(est(th, v) * g), argnums=(0, 1))(theta, x)
    np.testing.assert_allclose(np.asarray(dx), 2 * (0.7 - 0.2) * np.asarray(g), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(dtheta["w0"]), [[2 * float(jnp.sum(g * x))] * 2], rtol=1e-6)


def test_mlp_init_distribution_and_positive_option():
    theta = E.get("mlp").init(jax.random.key(0))
    assert theta["w0"].shape == (1, 100) and theta["w1"].shape == (100, 2)
    assert float(jnp.abs(theta["w0"]).max()) <= 1.0 and float(jnp.abs(theta["w1"]).max()) <= 0.1
    slopes = [float(E.slope_at_zero(E.get("mlp").init(jax.random.key(i)))) for i in range(20)]
    assert min(slopes) < 0 < max(slopes)  # the official init gives either sign
    pos = E.get("mlp", init="positive")
    assert all(float(E.slope_at_zero(pos.init(jax.random.key(i)))) > 0 for i in range(20))
    lin = E.get("linear", init="positive")
    assert all(float(E.slope_at_zero(lin.init(jax.random.key(i)), "identity")) > 0 for i in range(20))
    with_bias = E.get("mlp", bias=True, hidden=8).init(jax.random.key(0))
    assert sorted(with_bias) == ["b0", "b1", "w0", "w1"]
    assert {k: v.shape for k, v in E.get("classifier").init(jax.random.key(0)).items()} == {"w0": (1, 2)}
    assert {k: v.shape for k, v in E.get("classifier", hidden=5).init(jax.random.key(0)).items()} == \
        {"w0": (1, 5), "w1": (5, 2)}


def test_bad_theta():
    with pytest.raises(ValueError, match=r"expects theta with shapes \{'w0': \(1, 100\), 'w1': \(100, 2\)\}"):
        E.get("mlp")({"w0": jnp.ones((1, 10)), "w1": jnp.ones((10, 2))}, jnp.ones(3))


# ------------------------------------------------------------------------------ PyTorch parity

@pytest.mark.parametrize("name", ["mlp", "linear"])
def test_mlp_parity_with_official_structure(name):
    nonlinear = "tanh" if name == "mlp" else "none"
    est = E.get(name)
    theta = big_theta(jax.random.key(5))
    rng = np.random.default_rng(5)
    x = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(f32)     # a conv weight tensor, OIHW-like
    g = rng.normal(0, 1, x.shape).astype(f32)
    net = ref.meta_net_from_theta(theta, nonlinear)
    xt = torch.tensor(x, requires_grad=True)
    # The official path has no direct x gradient: x reaches the loss through the MLP only.
    yt = net(xt)
    (yt.reshape(x.shape) * torch.tensor(g)).sum().backward()
    y, vjp = jax.vjp(lambda th, v: est(th, v), theta, jnp.asarray(x))
    dtheta, dx = vjp(jnp.asarray(g))
    np.testing.assert_array_equal(np.asarray(y), yt.detach().reshape(x.shape).numpy())
    np.testing.assert_allclose(np.asarray(dx), xt.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dtheta["w0"]), net.network.Linear0.weight.grad.numpy().T,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dtheta["w1"]), net.network.Linear1.weight.grad.numpy().T,
                               rtol=1e-5, atol=1e-5)


def test_classifier_parity_with_official_argmax_variant():
    net = ref.MetaClassifier()
    theta = {"w0": jnp.asarray(net.network.Linear0.weight.detach().numpy().T)}
    est = E.get("classifier", tie=-1)
    x = np.concatenate([grid(), [0.0]]).astype(f32)
    g = np.random.default_rng(2).normal(size=x.shape).astype(f32)
    xt = torch.tensor(x, requires_grad=True)
    yt = net(xt)
    (yt * torch.tensor(g)).sum().backward()
    y, vjp = jax.vjp(lambda th, v: est(th, v), theta, jnp.asarray(x))
    dtheta, dx = vjp(jnp.asarray(g))
    np.testing.assert_array_equal(np.asarray(y), yt.detach().numpy())
    np.testing.assert_allclose(np.asarray(dx), xt.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dtheta["w0"]), net.network.Linear0.weight.grad.numpy().T,
                               rtol=1e-5, atol=1e-4)
