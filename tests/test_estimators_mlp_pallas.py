"""mlpbnn.estimators.mlp_pallas: the fused Pallas backward of BBC's gated MLP (and of ``linear``), run in
Pallas interpret mode on the CPU, equals plain autodiff of the surrogate to 1e-5 and float64 numpy at a
larger size; it also lowers to Triton for a CUDA target; its theta reduction has a fixed pairwise order;
``auto`` never picks it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlpbnn import estimators as E
from mlpbnn.estimators import mlp_backward as K
from mlpbnn.estimators import mlp_pallas as P
from tests.test_estimators_mlp_backward import _eqns, _plain_surrogate_grads, assert_matches_float64

f32 = np.float32


def _case(activation: str, bias: bool, seed: int = 11):
    theta = E.get("mlp", activation=activation, bias=bias).init(jax.random.key(seed))
    scale = {"w0": 3.0, "w1": 4.0 if activation == "relu" else 20.0}  # outputs beyond +-1 for some x
    theta = {k: v * scale.get(k, 1.0) for k, v in theta.items()}
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(0, 0.5, (7, 5, 11)).astype(f32))  # 385 elements: chunk 128 pads, 4 programs
    g = jnp.asarray(rng.normal(0, 1, x.shape).astype(f32))
    gate = np.abs(np.asarray(K.mlp_apply(theta, x, activation))) < 1
    assert 0.05 < gate.mean() < 0.95  # the gate does something
    return theta, x, g


def _assert_close(dtheta, dx, ref_theta, ref_dx):
    assert sorted(dtheta) == sorted(ref_theta)
    np.testing.assert_allclose(np.asarray(dx), np.asarray(ref_dx), rtol=1e-5, atol=1e-5)
    for k in ref_theta:
        scale = float(np.max(np.abs(np.asarray(ref_theta[k]))))
        np.testing.assert_allclose(np.asarray(dtheta[k]), np.asarray(ref_theta[k]), rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=k)


@pytest.mark.parametrize("activation,bias", [("tanh", False), ("tanh", True), ("relu", False), ("relu", True),
                                             ("identity", False), ("identity", True)])
def test_pallas_backward_equals_plain_autodiff(activation, bias):
    # Through the estimator (backward='pallas', 128 elements per program), every parameter included.
    theta, x, g = _case(activation, bias)
    est = E.get("mlp", activation=activation, bias=bias, backward="pallas", chunk=128)
    dtheta, dx = jax.jit(jax.grad(lambda th, v: jnp.sum(est(th, v) * g), argnums=(0, 1)))(theta, x)
    _assert_close(dtheta, dx, *_plain_surrogate_grads(theta, x, g, activation))


def test_linear_estimator_takes_the_identity_kernel():
    theta, x, g = _case("identity", False, seed=3)
    est = E.get("linear", backward="pallas", chunk=128)
    closed = jax.make_jaxpr(jax.grad(lambda th, v: jnp.sum(est(th, v) * g), argnums=(0, 1)))(theta, x)
    calls = [q for q in _eqns(closed.jaxpr) if q.primitive.name == "pallas_call"]
    assert len(calls) == 1 and calls[0].params["name"] == "linear_kernel"
    dtheta, dx = jax.grad(lambda th, v: jnp.sum(est(th, v) * g), argnums=(0, 1))(theta, x)
    _assert_close(dtheta, dx, *_plain_surrogate_grads(theta, x, g, "identity"))


def test_pallas_backward_at_default_chunk_against_float64():
    # 40,000 weights at the official init (several 8,192-element programs, a padded last one, the
    # default 32-element inner step), against float64 numpy.
    theta = E.get("mlp").init(jax.random.key(12))
    rng = np.random.default_rng(12)
    x = rng.uniform(-0.07, 0.07, 40_000).astype(f32)
    g = rng.normal(0, 1e-3, x.shape).astype(f32)
    dtheta, dx = jax.jit(lambda th, v, c: P.gated_mlp_vjp_pallas(th, v, c, "tanh"))(theta, jnp.asarray(x),
                                                                                   jnp.asarray(g))
    assert_matches_float64(theta, x, g, dtheta, dx)


def test_pallas_backward_under_vmap_equals_each_copy():
    # mlpbnn.study vmaps whole training steps: K thetas and tensors at once, one batched kernel.
    thetas, xs, gs = zip(*[_case("tanh", False, seed=s) for s in (1, 2, 3)], strict=True)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *thetas)
    fn = jax.vmap(lambda th, v, c: P.gated_mlp_vjp_pallas(th, v, c, "tanh", chunk=128))
    dtheta, dx = fn(stacked, jnp.stack(xs), jnp.stack(gs))
    for i, (th, v, c) in enumerate(zip(thetas, xs, gs, strict=True)):
        one_theta, one_dx = P.gated_mlp_vjp_pallas(th, v, c, "tanh", chunk=128)
        np.testing.assert_allclose(np.asarray(dx[i]), np.asarray(one_dx), rtol=1e-6, atol=1e-7)
        for k in one_theta:
            np.testing.assert_allclose(np.asarray(dtheta[k][i]), np.asarray(one_theta[k]), rtol=1e-6, atol=1e-7)


def test_tree_sum_has_a_fixed_pairwise_order():
    # Pairwise: (1e8 + -1e8) + (1 + 1) = 2 in float32; left to right would lose both ones (1e8 + 1 = 1e8).
    parts = jnp.asarray([[1e8], [1.0], [-1e8], [1.0]], jnp.float32)
    assert float(P.tree_sum(parts)[0]) == 2.0
    # Five rows are padded to eight with zeros: ((a + e) + c) + (b + d).
    parts = jnp.asarray([3.0, 5.0, 7.0, 11.0, 13.0], jnp.float32)[:, None] * jnp.ones((1, 4), jnp.float32)
    np.testing.assert_array_equal(np.asarray(P.tree_sum(parts)), np.full(4, 39.0, f32))


def test_auto_never_picks_pallas():
    assert {K.default_backward(b) for b in ("cpu", "gpu", "tpu")} == {"matmul", "reduce"}
    theta = E.get("mlp").init(jax.random.key(0))
    x = jnp.zeros((300,), f32)

    def prims(est):
        closed = jax.make_jaxpr(jax.grad(lambda th, v: jnp.sum(est(th, v)), argnums=(0, 1)))(theta, x)
        return {q.primitive.name for q in _eqns(closed.jaxpr)}

    assert "pallas_call" not in prims(E.get("mlp"))
    assert "pallas_call" in prims(E.get("mlp", backward="pallas"))


def test_deeper_mlp_falls_back_to_autodiff():
    theta = {"w0": jnp.asarray([[0.5, -1.0]], f32), "w1": jnp.asarray([[1.0, 2.0], [0.5, -1.0]], f32),
             "w2": jnp.asarray([[0.7, -0.2], [0.3, 0.9]], f32)}
    x = jnp.linspace(-2, 2, 50, dtype=f32)
    g = jnp.cos(x)
    dtheta, dx = P.gated_mlp_vjp_pallas(theta, x, g, "tanh")
    _assert_close(dtheta, dx, *_plain_surrogate_grads(theta, x, g, "tanh"))


@pytest.mark.parametrize("activation,bias", [("tanh", False), ("relu", True), ("identity", True)])
def test_kernel_lowers_to_triton(activation, bias):
    # Pallas's Triton lowering runs on any host: jaxpr -> Triton IR inside a CUDA custom call, at the
    # network's size (11.0M weights). What it does not check is Triton's own compilation to PTX.
    theta = E.get("mlp", activation=activation, bias=bias).init(jax.random.key(0))
    x = jax.ShapeDtypeStruct((11_000_000,), jnp.float32)
    fn = jax.jit(lambda th, v, c: P.gated_mlp_vjp_pallas(th, v, c, activation, interpret=False))
    triton = "__gpu$xla.gpu.triton"
    exported = jax.export.export(fn, platforms=["cuda"],
                                 disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(triton)])(theta, x, x)
    module = exported.mlir_module()
    assert module.count(f"@{triton}") == 1 and "grid_x = 1343" in module  # ceil(11e6 / 8192) programs
