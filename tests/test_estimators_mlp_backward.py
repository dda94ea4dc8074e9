"""mlpbnn.estimators.mlp_backward: every backward form and chunking equals plain autodiff of BBC's
gated surrogate; per-backend defaults; full-precision matmuls; a network-scale check in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlpbnn import estimators as E
from mlpbnn.estimators import mlp_backward as K
from tests.test_estimators_learned import big_theta

f32 = np.float32


@pytest.mark.parametrize("name", ["mlp", "linear"])
def test_chunked_backward_equals_single_pass(name):
    theta = big_theta(jax.random.key(7))
    x = jnp.asarray(np.random.default_rng(7).normal(0, 0.4, (5, 7, 11)).astype(f32))  # 385 elements
    g = jnp.asarray(np.random.default_rng(8).normal(0, 1, x.shape).astype(f32))

    def grads(chunk):
        est = E.get(name, chunk=chunk)
        return jax.grad(lambda th, v: jnp.sum(est(th, v) * g), argnums=(0, 1))(theta, x)

    whole, chunked = grads(1 << 20), grads(64)  # 64 does not divide 385: padding is exercised
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(chunked), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


def _eqns(jaxpr):
    """Every equation of a jaxpr, nested ones (scan bodies, custom_vjp calls) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for v in eqn.params.values():
            for sub in v if isinstance(v, (list, tuple)) else [v]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


def test_backward_defaults_are_per_backend_and_dots_are_full_precision():
    assert K.default_chunk("cpu") == K.CPU_CHUNK == 8192
    assert K.default_chunk("gpu") == K.default_chunk("tpu") == K.GPU_CHUNK == 65536
    assert (K.default_backward("cpu"), K.default_backward("gpu"), K.default_backward("tpu")) == \
        ("matmul", "reduce", "reduce")
    est = E.get("mlp")
    assert est.kwargs["chunk"] == 0 and est.kwargs["backward"] == "auto"
    theta = est.init(jax.random.key(0))
    x = jnp.zeros((20_000,), f32)

    def eqns(e):
        closed = jax.make_jaxpr(jax.grad(lambda th, v: jnp.sum(e(th, v)), argnums=(0, 1)))(theta, x)
        return list(_eqns(closed.jaxpr))

    prims = [q.primitive.name for q in eqns(est)]
    if jax.default_backend() == "cpu":  # 20,000 elements scanned in 3 chunks of 8192, as matmuls
        assert [q.params["length"] for q in eqns(est) if q.primitive.name == "scan"] == [3]
        assert "dot_general" in prims
    else:  # one chunk (< 65536 elements), as fused reductions: no scan, no matmul
        assert "scan" not in prims and "dot_general" not in prims
    # Every matmul of the estimator at HIGHEST precision (no TF32 on GPUs).
    dots = [q for q in eqns(E.get("mlp", backward="matmul")) if q.primitive.name == "dot_general"]
    assert dots and all(q.params["precision"] is not None and set(q.params["precision"]) == {jax.lax.Precision.HIGHEST}
                        for q in dots), [q.params["precision"] for q in dots]


def test_unknown_form_names_the_valid_ones():
    theta = E.get("mlp").init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"backward form must be one of \('matmul', 'reduce', 'autodiff'\)"):
        K.gated_mlp_vjp(theta, jnp.zeros(3), jnp.ones(3), "tanh", form="fast")


def _plain_surrogate_grads(theta, x, g, activation):
    """Unchunked autodiff of s(x; theta) = sum_k clip(f_k(x), -1, 1), with the strict gate."""
    def s(th, v):
        f = K.mlp_apply(th, v, activation)
        gate = jax.lax.stop_gradient((jnp.abs(f) < 1.0).astype(f.dtype))
        return jnp.sum(gate * f, axis=-1)  # the derivative of clip(f, -1, 1) with a strict gate
    _, vjp = jax.vjp(s, theta, x)
    return vjp(g)


@pytest.mark.parametrize("activation,bias", [("tanh", False), ("tanh", True), ("relu", False), ("relu", True),
                                             ("identity", False), ("identity", True)])
@pytest.mark.parametrize("chunk,backward", [(64, "matmul"), (1 << 20, "matmul"), (64, "reduce"),
                                            (1 << 20, "reduce"), (64, "autodiff")])
def test_mlp_backward_equals_plain_autodiff(activation, bias, chunk, backward):
    # The written-out backward (hidden layer as (hidden, n), theta reductions as matmuls or fused
    # reductions, O(n) for the identity), and the chunked autodiff one, against plain unchunked
    # jax.vjp of the surrogate, every parameter included.
    est = E.get("mlp", activation=activation, bias=bias, chunk=chunk, backward=backward)
    theta = est.init(jax.random.key(11))
    scale = {"w0": 3.0, "w1": 4.0 if activation == "relu" else 20.0}  # outputs beyond +-1 for some x
    theta = {k: v * scale.get(k, 1.0) for k, v in theta.items()}
    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.normal(0, 0.5, (7, 5, 11)).astype(f32))  # 385 elements: chunk 64 pads
    g = jnp.asarray(rng.normal(0, 1, x.shape).astype(f32))
    gate = np.abs(np.asarray(K.mlp_apply(theta, x, activation))) < 1
    assert 0.05 < gate.mean() < 0.95  # the gate does something
    dtheta, dx = jax.jit(jax.grad(lambda th, v: jnp.sum(est(th, v) * g), argnums=(0, 1)))(theta, x)
    ref_theta, ref_dx = _plain_surrogate_grads(theta, x, g, activation)
    assert sorted(dtheta) == sorted(ref_theta)
    np.testing.assert_allclose(np.asarray(dx), np.asarray(ref_dx), rtol=1e-5, atol=1e-5)
    for k in ref_theta:
        scale = float(np.max(np.abs(np.asarray(ref_theta[k]))))
        np.testing.assert_allclose(np.asarray(dtheta[k]), np.asarray(ref_theta[k]), rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=k)


@pytest.mark.parametrize("backward", ["auto", "reduce"])
def test_mlp_backward_at_network_scale(backward):
    # A ResNet-18 layer1 conv's weights (147,456) at the official init: the default chunked
    # backward (and the fused-reduction form, the GPU default) against float64 numpy. (Plain
    # float32 autodiff sums theta's cotangents over the whole tensor in one reduction and is
    # itself ~1e-5 off here; the chunked sums are closer.)
    est = E.get("mlp", backward=backward)
    theta = est.init(jax.random.key(12))
    rng = np.random.default_rng(12)
    x = rng.uniform(-0.07, 0.07, 147_456).astype(f32)
    g = rng.normal(0, 1e-3, x.shape).astype(f32)
    dtheta, dx = jax.jit(jax.grad(lambda th, v: jnp.sum(est(th, v) * g), argnums=(0, 1)))(theta, jnp.asarray(x))
    assert_matches_float64(theta, x, g, dtheta, dx)


def assert_matches_float64(theta, x, g, dtheta, dx, rtol=1e-5):
    """The tanh MLP's gated backward (no biases) in float64 numpy, written from the BBC formulas:
    h = tanh(x w0), gate |h w1| < 1, dx = ((1 - h^2) (g_gated w1^T)) w0."""
    w0, w1 = np.asarray(theta["w0"], np.float64)[0], np.asarray(theta["w1"], np.float64)
    xd, gd = np.asarray(x, np.float64), np.asarray(g, np.float64)
    h = np.tanh(np.outer(xd, w0))
    gate_g = gd[:, None] * (np.abs(h @ w1) < 1)
    dpre = (1 - h ** 2) * (gate_g @ w1.T)
    expected = {"w0": (xd @ dpre)[None], "w1": h.T @ gate_g}
    np.testing.assert_allclose(np.asarray(dx), dpre @ w0, rtol=rtol, atol=rtol * np.max(np.abs(dpre @ w0)))
    for k, ref_k in expected.items():
        np.testing.assert_allclose(np.asarray(dtheta[k]), ref_k, rtol=rtol, atol=rtol * np.max(np.abs(ref_k)),
                                   err_msg=k)
