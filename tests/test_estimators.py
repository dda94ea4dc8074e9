"""Estimators: exact +-1 forward, analytic backward on grids with the breakpoints, finite
differences of the soft functions, the BBC MLP's gradient formulas, PyTorch parity, jit/vmap."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mlpbnn import estimators as E
from tests import torch_reference as ref

ALL = ["approx_sign", "classifier", "ede", "fda", "linear", "mlp", "reste", "ste", "swish_sign", "tanh"]
PARAM_FREE = ["approx_sign", "ede", "fda", "reste", "ste", "swish_sign", "tanh"]
f32 = np.float32


def grid() -> np.ndarray:
    """Every breakpoint of every estimator (0, +-0.1, +-1, +-1.5) plus random points."""
    points = np.array([0.0, 0.1, 1.0, 1.5, 0.05, 0.3, 0.99, 1.01, 2.0, 3.0], f32)
    rand = np.random.default_rng(0).uniform(-3, 3, 200).astype(f32)
    return np.concatenate([points, -points[1:], rand])


def surrogate_grad(est, theta, x, progress=None):
    return np.asarray(est.derivative(theta, jnp.asarray(x), progress))


# Expected derivatives written from the papers' formulas (float32 thresholds, float64 math).
def expected_derivative(name: str, x: np.ndarray, **hp) -> np.ndarray:
    a = np.abs(x)
    xd = x.astype(np.float64)
    if name == "ste":
        clip = f32(hp.get("clip", 1.0))
        return (a <= clip if hp.get("inclusive", True) else a < clip).astype(np.float64)
    if name == "approx_sign":
        return np.where(xd < 0, 2 + 2 * xd, 2 - 2 * xd) * (a < 1)
    if name == "swish_sign":
        b = hp.get("beta", 5.0)
        return b * (2 - b * xd * np.tanh(b * xd / 2)) / (1 + np.cosh(b * xd))
    if name == "tanh":
        b = hp.get("beta", 1.0)
        return b * (1 - np.tanh(b * xd) ** 2)
    if name == "ede":
        t, k = hp.get("t", 0.1), hp.get("k", 10.0)
        return k * t * (1 - np.tanh(t * xd) ** 2)
    if name == "fda":
        n, w = hp.get("n", 9), hp.get("omega", 0.1)
        s = sum(np.cos((2 * i + 1) * w * xd) for i in range(n + 1))
        return 4 * w / math.pi * s * (a <= 1)
    if name == "reste":
        o, t = hp.get("o", 3.0), hp.get("t", 1.5)
        inner = a <= f32(0.1)
        power = (1 / o) * np.maximum(a, 0.1) ** ((1 - o) / o)
        return np.where(inner, 0.1 ** (1 / o) / 0.1, np.where(a <= f32(t), power, 0.0))
    raise KeyError(name)


def test_names_are_the_ten():
    assert E.names() == ALL


@pytest.mark.parametrize("name", ALL)
def test_forward_is_exactly_plus_minus_one(name):
    est = E.get(name)
    theta = est.init(jax.random.key(1))
    x = jnp.asarray(np.concatenate([grid(), np.zeros(3, f32)]))
    y = np.asarray(est(theta, x))
    assert set(np.unique(y)) <= {-1.0, 1.0}
    if name != "classifier":  # the classifier's sign is decided by its MLP
        np.testing.assert_array_equal(y, np.where(np.asarray(x) >= 0, 1.0, -1.0))


@pytest.mark.parametrize("name", [n for n in ALL if n != "classifier"])
def test_sign_zero_convention(name):
    est = E.get(name, zero=0)
    theta = est.init(jax.random.key(1))
    x = jnp.array([-2.0, 0.0, 3.0])
    np.testing.assert_array_equal(np.asarray(est(theta, x)), np.sign(np.asarray(x)))
    np.testing.assert_array_equal(np.asarray(E.get(name)(theta, x)), [-1.0, 1.0, 1.0])


def test_classifier_tie_and_decision():
    est = E.get("classifier")
    theta = {"w0": jnp.array([[1.0, -2.0]])}  # f1 - f0 = -3x: the classifier flips the sign
    x = jnp.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(np.asarray(est(theta, x)), [1.0, 1.0, -1.0])
    np.testing.assert_array_equal(np.asarray(E.get("classifier", tie=-1)(theta, x)), [1.0, -1.0, -1.0])


@pytest.mark.parametrize("name,hp", [
    ("ste", {}), ("ste", {"inclusive": False}), ("ste", {"clip": 1.5}),
    ("approx_sign", {}), ("swish_sign", {}), ("swish_sign", {"beta": 2.0}),
    ("tanh", {"beta": 3.0}), ("ede", {}), ("ede", {"t": 2.0, "k": 1.5}),
    ("fda", {}), ("fda", {"n": 3, "omega": 0.5}), ("reste", {}), ("reste", {"o": 2.0, "t": 1.0}),
])
def test_parameter_free_gradient_matches_formula(name, hp):
    x = grid()
    got = surrogate_grad(E.get(name, **hp), {}, x)
    np.testing.assert_allclose(got, expected_derivative(name, x, **hp), rtol=2e-5, atol=2e-6)


def test_unclipped_ste():
    x = grid()
    np.testing.assert_array_equal(surrogate_grad(E.get("ste", clip=None), {}, x), np.ones_like(x))


SOFT = {  # soft functions F with F' = backward, for finite differences away from breakpoints
    "approx_sign": lambda x: np.where(x < -1, -1, np.where(x < 0, x * x + 2 * x,
                                                           np.where(x < 1, -x * x + 2 * x, 1))),
    "swish_sign": lambda x: 2 / (1 + np.exp(-5 * x)) * (1 + 5 * x * (1 - 1 / (1 + np.exp(-5 * x)))) - 1,
    "tanh": np.tanh,
    "ede": lambda x: 10 * np.tanh(0.1 * x),
    "fda": lambda x: 4 / np.pi * sum(np.sin((2 * i + 1) * 0.1 * x) / (2 * i + 1) for i in range(10)),
    "reste": lambda x: np.sign(x) * np.abs(x) ** (1 / 3),
}


@pytest.mark.parametrize("name", sorted(SOFT))
def test_gradient_is_derivative_of_soft_function(name):
    x = np.array([-0.93, -0.61, -0.27, -0.13, 0.17, 0.42, 0.77, 0.95], np.float64)
    if name == "approx_sign":
        x = x[np.abs(x) > 0.05]
    h = 1e-6
    fd = (SOFT[name](x + h) - SOFT[name](x - h)) / (2 * h)
    np.testing.assert_allclose(surrogate_grad(E.get(name), {}, x.astype(f32)), fd, rtol=1e-4, atol=1e-4)


def test_schedules():
    x = jnp.zeros(1)
    # EDE: t from t_min to t_max; k = max(1/t, 1); slope at 0 = k t.
    ede = E.get("ede")
    np.testing.assert_allclose(surrogate_grad(ede, {}, x, 0.0), [1.0], rtol=1e-5)   # t=1e-3, k=1e3
    np.testing.assert_allclose(surrogate_grad(ede, {}, x, 1.0), [10.0], rtol=1e-5)  # t=10, k=1
    t, k = E.ede_schedule(0.25, 1e-3, 10.0)
    np.testing.assert_allclose([float(t), float(k)], [10 ** -2.0, 100.0], rtol=1e-5)
    # FDA: slope at 0 = 4 omega / pi (n + 1), n from 9 to 18.
    fda = E.get("fda")
    for p, n in [(0.0, 9), (0.5, 13), (1.0, 18)]:
        np.testing.assert_allclose(surrogate_grad(fda, {}, x, p), [0.4 / math.pi * (n + 1)], rtol=1e-5)
    # ReSTE: o from 1 (clipped identity) to o.
    reste = E.get("reste")
    xs = jnp.array([0.05, 0.5, 1.4, 1.6])
    np.testing.assert_allclose(surrogate_grad(reste, {}, xs, 0.0), [1, 1, 1, 0], rtol=1e-5)
    np.testing.assert_allclose(surrogate_grad(reste, {}, xs, 1.0), surrogate_grad(reste, {}, xs), rtol=1e-6)
    # Progress may be traced.
    g = jax.jit(lambda p: ede.derivative({}, x, p))(jnp.float32(1.0))
    np.testing.assert_allclose(np.asarray(g), [10.0], rtol=1e-5)


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
    assert E.get("ste").init(jax.random.key(0)) == {}
    with_bias = E.get("mlp", bias=True, hidden=8).init(jax.random.key(0))
    assert sorted(with_bias) == ["b0", "b1", "w0", "w1"]


# ------------------------------------------------------------------------------ PyTorch parity

def _torch_param_free(name, hp, x):
    # float64: autograd through the soft functions cancels badly in float32 (swish at |beta x| ~ 10)
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    if name == "ste" and not hp.get("inclusive", True):
        y = ref.ClippedIdentity.apply(xt)
    else:
        y = ref.with_soft_gradient(xt, ref.soft_functions(name, hp)(xt))
    return xt, y


@pytest.mark.parametrize("name,hp,progress", [
    ("ste", {}, None), ("ste", {"inclusive": False}, None), ("approx_sign", {}, None),
    ("swish_sign", {}, None), ("tanh", {"beta": 2.0}, None),
    ("ede", {"t": 0.1, "k": 10.0}, None), ("ede", {"t": 10 ** -0.6, "k": 10 ** 0.6}, 0.6),
    ("fda", {"n": 9}, None), ("fda", {"n": 15}, 0.7),
    ("reste", {"o": 3.0}, None), ("reste", {"o": 1 + (1 - math.cos(math.pi / 2 * 0.4)) * 2}, 0.4),
])
def test_parameter_free_parity_with_torch(name, hp, progress):
    x = grid()
    g = np.random.default_rng(1).normal(size=x.shape).astype(f32)
    xt, yt = _torch_param_free(name, hp, x)
    (yt * torch.tensor(g, dtype=torch.float64)).sum().backward()
    jax_hp = {k: v for k, v in hp.items() if progress is None}  # scheduled values come from progress
    if name == "ste":
        jax_hp = hp
    est = E.get(name, **jax_hp)
    y, vjp = jax.vjp(lambda v: est({}, v, progress), jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), yt.detach().numpy())
    np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(g))[0]), xt.grad.numpy(), rtol=1e-5, atol=1e-5)


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


# ------------------------------------------------------------------------------ transforms, dtypes

@pytest.mark.parametrize("name", ALL)
def test_jit_and_vmap(name):
    est = E.get(name)
    theta = est.init(jax.random.key(2))
    x = jnp.asarray(np.random.default_rng(4).normal(0, 0.7, (3, 16)).astype(f32))

    def loss(th, v, p):
        return jnp.sum(est(th, v, p) * jnp.arange(v.shape[-1], dtype=v.dtype))

    eager = jax.grad(loss, argnums=(0, 1))(theta, x, 0.3)
    jitted = jax.jit(jax.grad(loss, argnums=(0, 1)))(theta, x, jnp.float32(0.3))
    per_row = jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(None, 0, None))(theta, x, 0.3)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(per_row[1]), np.asarray(eager[1]), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(per_row[0]), jax.tree.leaves(eager[0]), strict=True):  # theta grads sum over rows
        np.testing.assert_allclose(np.asarray(a).sum(0), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_bfloat16_inputs(name):
    est = E.get(name)
    theta = est.init(jax.random.key(0))
    x = jnp.linspace(-2, 2, 33, dtype=jnp.bfloat16)
    y = est(theta, x)
    assert y.dtype == jnp.bfloat16 and set(np.unique(np.asarray(y, f32))) <= {-1.0, 1.0}
    dtheta, dx = jax.grad(lambda th, v: jnp.sum(est(th, v).astype(jnp.float32)), argnums=(0, 1))(theta, x)
    assert dx.dtype == jnp.bfloat16
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(dtheta))
    ref32 = est.derivative(theta, x.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(dx, f32), np.asarray(ref32), rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------------------ errors

def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown estimator 'nope'.*approx_sign.*tanh"):
        E.get("nope")


def test_unknown_hparam_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown hparam\(s\) \['beta'\].*'ste'.*clip, inclusive, zero"):
        E.get("ste", beta=2.0)


@pytest.mark.parametrize("name,hp,msg", [
    ("swish_sign", {"beta": -1.0}, "beta"), ("mlp", {"hidden": 0}, "hidden"),
    ("mlp", {"activation": "gelu"}, "activation"), ("ste", {"zero": 0.5}, "zero"),
    ("fda", {"n": 2.5}, "'n'"), ("mlp", {"init": "xavier"}, "init"), ("classifier", {"tie": 0}, "tie"),
    ("mlp", {"chunk": -1}, "chunk"), ("linear", {"chunk": 2.5}, "chunk"), ("mlp", {"backward": "fast"}, "backward"),
])
def test_bad_hparam_values(name, hp, msg):
    with pytest.raises(ValueError, match=msg):
        E.get(name, **hp)


def test_bad_theta_and_inputs():
    with pytest.raises(ValueError, match=r"expects theta with shapes \{'w0': \(1, 100\), 'w1': \(100, 2\)\}"):
        E.get("mlp")({"w0": jnp.ones((1, 10)), "w1": jnp.ones((10, 2))}, jnp.ones(3))
    with pytest.raises(ValueError, match="has no parameters"):
        E.get("ste")({"w0": jnp.ones(1)}, jnp.ones(3))
    with pytest.raises(ValueError, match="floating-point"):
        E.get("ste")({}, jnp.ones(3, jnp.int32))


def test_estimators_are_hashable_and_resolvable():
    assert E.get("ste", clip=1) == E.get("ste", clip=1.0)
    assert hash(E.get("mlp")) == hash(E.get("mlp"))
    assert E.resolve({"name": "ede", "t": 2.0}) == E.get("ede", t=2.0)
    assert E.resolve("none") is None and E.resolve(None) is None
    with pytest.raises(ValueError, match="'name' key"):
        E.resolve({"t": 2.0})


def test_parse_command_line_form():
    assert E.resolve("mlp(hidden=10, init='positive')") == E.get("mlp", hidden=10, init="positive")
    assert E.parse(" ede ") == E.get("ede") and E.parse("") is None
    with pytest.raises(ValueError, match="key=literal"):
        E.parse("mlp(10)")
    with pytest.raises(ValueError, match="key=literal"):
        E.parse("mlp(hidden=n)")
    with pytest.raises(ValueError, match="expected NAME"):
        E.parse("mlp[3]")
    with pytest.raises(ValueError, match="unknown hparam"):
        E.parse("ste(beta=2)")


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
    assert E.default_chunk("cpu") == E.CPU_CHUNK == 8192
    assert E.default_chunk("gpu") == E.default_chunk("tpu") == E.GPU_CHUNK
    assert (E.default_backward("cpu"), E.default_backward("gpu"), E.default_backward("tpu")) == \
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


def _plain_surrogate_grads(theta, x, g, activation):
    """Unchunked autodiff of s(x; theta) = sum_k clip(f_k(x), -1, 1), with the strict gate."""
    def s(th, v):
        f = E.mlp_apply(th, v, activation)
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
    gate = np.abs(np.asarray(E.mlp_apply(theta, x, activation))) < 1
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
    w0, w1 = np.asarray(theta["w0"], np.float64)[0], np.asarray(theta["w1"], np.float64)
    xd, gd = x.astype(np.float64), g.astype(np.float64)
    h = np.tanh(np.outer(xd, w0))
    gate_g = gd[:, None] * (np.abs(h @ w1) < 1)
    dpre = (1 - h ** 2) * (gate_g @ w1.T)
    expected = {"w0": (xd @ dpre)[None], "w1": h.T @ gate_g}
    np.testing.assert_allclose(np.asarray(dx), dpre @ w0, rtol=1e-5, atol=1e-5 * np.max(np.abs(dpre @ w0)))
    for k, ref_k in expected.items():
        np.testing.assert_allclose(np.asarray(dtheta[k]), ref_k, rtol=1e-5, atol=1e-5 * np.max(np.abs(ref_k)),
                                   err_msg=k)
