"""mlpbnn.estimators.free: analytic backward on grids with the breakpoints, finite differences of
the soft functions, the papers' schedules (written out here from the papers, not from mlpbnn's
constants), PyTorch parity."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mlpbnn import estimators as E
from tests import torch_reference as ref

PARAM_FREE = ["approx_sign", "ede", "fda", "reste", "ste", "swish_sign", "tanh"]
f32 = np.float32


def grid() -> np.ndarray:
    """Every breakpoint of every estimator (0, +-0.1, +-1, +-1.5) plus random points."""
    points = np.array([0.0, 0.1, 1.0, 1.5, 0.05, 0.3, 0.99, 1.01, 2.0, 3.0], f32)
    rand = np.random.default_rng(0).uniform(-3, 3, 200).astype(f32)
    return np.concatenate([points, -points[1:], rand])


def surrogate_grad(est, theta, x, progress=None):
    return np.asarray(est.derivative(theta, jnp.asarray(x), progress))


# The papers' schedules, written out from their sources (progress p = epoch / epochs).

def irnet_ede(p):
    """IR-Net's EDE (arXiv 1909.10788) as its code schedules it (htqin/IR-Net, ``Log_UP`` in the
    VGG-Small and ResNet-20 1w32a scripts): t = 10^(log10 T_min + (log10 T_max - log10 T_min) p),
    i.e. T_min 10^(p log10(T_max / T_min)), and k = 1/t while t < 1, else 1; T_min, T_max = 0.1, 10."""
    t_min, t_max = 1e-1, 1e1
    t = 10 ** (math.log10(t_min) + (math.log10(t_max) - math.log10(t_min)) * p)
    return t, (1 / t if t < 1 else 1.0)


def bibench_fda_n(p):
    """BiBench's FDA layer (arXiv 2301.11233): n = 9 + int(9 epoch / epochs) terms beyond the first."""
    return 9 + int(9 * p)


def reste_o(p):
    """ReSTE (arXiv 2308.06689): o = 1 + (1 - cos(pi/2 epoch/epochs)) (o_end - 1), o_end = 3."""
    return 1 + (1 - math.cos(math.pi / 2 * p)) * (3 - 1)


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
        t = hp.get("t", 0.1)  # IR-Net's layers start at t = 0.1, k = 10
        k = hp.get("k", max(1 / t, 1.0))
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


@pytest.mark.parametrize("name,hp", [
    ("ste", {}), ("ste", {"inclusive": False}), ("ste", {"clip": 1.5}),
    ("approx_sign", {}), ("swish_sign", {}), ("swish_sign", {"beta": 2.0}),
    ("tanh", {}), ("tanh", {"beta": 3.0}), ("ede", {}), ("ede", {"t": 2.0, "k": 1.5}), ("ede", {"t": 0.5}),
    ("fda", {}), ("fda", {"n": 3, "omega": 0.5}), ("reste", {}), ("reste", {"o": 2.0, "t": 1.0}),
])
def test_gradient_matches_formula(name, hp):
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


@pytest.mark.parametrize("name", PARAM_FREE)
def test_theta_must_be_empty(name):
    with pytest.raises(ValueError, match=f"estimator '{name}' has no parameters"):
        E.get(name)({"w0": jnp.ones(1)}, jnp.ones(3))


# ------------------------------------------------------------------------------ schedules

@pytest.mark.parametrize("p", [0.0, 0.1, 0.25, 0.5, 0.6, 0.9, 1.0])
def test_ede_follows_irnet_schedule(p):
    t, k = irnet_ede(p)
    x = grid()
    got = surrogate_grad(E.get("ede"), {}, x, p)
    # atol relative to the peak k t: float32's 1 - tanh^2(t x) is 0 once tanh(t x) rounds to 1.
    np.testing.assert_allclose(got, expected_derivative("ede", x, t=t, k=k), rtol=2e-5, atol=2e-6 * k * t)
    np.testing.assert_allclose([float(v) for v in E.ede_schedule(p, 0.1, 10.0)], [t, k], rtol=1e-6)


def test_ede_schedule_values_and_fixed_default():
    # IR-Net: t from 0.1 to 10, k from 10 to 1, k = 1 from t = 1 (half-way) on.
    np.testing.assert_allclose(irnet_ede(0.0), (0.1, 10.0), rtol=1e-12)
    np.testing.assert_allclose(irnet_ede(0.5), (1.0, 1.0), rtol=1e-12)
    np.testing.assert_allclose(irnet_ede(1.0), (10.0, 1.0), rtol=1e-12)
    # Without progress, EDE is the schedule's start: IR-Net's layers' initial t = 0.1, k = 10.
    ede = E.get("ede")
    x = grid()
    np.testing.assert_allclose(surrogate_grad(ede, {}, x), surrogate_grad(ede, {}, x, 0.0), rtol=1e-6)
    np.testing.assert_allclose(surrogate_grad(ede, {}, x), expected_derivative("ede", x, t=0.1, k=10.0),
                               rtol=2e-5, atol=2e-6)
    # IR-Net's ResNet-20 1w1a script starts lower, T_min = 1e-3: slope k t = 1 at 0 still.
    low = E.get("ede", t_min=1e-3)
    t0 = 1e-3 * 10 ** (0.3 * math.log10(10 / 1e-3))
    np.testing.assert_allclose(surrogate_grad(low, {}, x, 0.3), expected_derivative("ede", x, t=t0, k=1 / t0),
                               rtol=2e-5, atol=2e-6)


def test_fda_and_reste_follow_their_schedules():
    x0 = jnp.zeros(1)
    fda = E.get("fda")
    for p in [0.0, 0.3, 0.5, 0.99, 1.0]:  # slope at 0 = 4 omega / pi (n + 1), omega = 0.1
        np.testing.assert_allclose(surrogate_grad(fda, {}, x0, p), [0.4 / math.pi * (bibench_fda_n(p) + 1)],
                                   rtol=1e-5)
    reste, x = E.get("reste"), grid()
    for p in [0.0, 0.4, 1.0]:
        np.testing.assert_allclose(surrogate_grad(reste, {}, x, p), expected_derivative("reste", x, o=reste_o(p)),
                                   rtol=2e-5, atol=2e-6)
    # At the start ReSTE is the clipped identity (o = 1) on |x| <= 1.5.
    np.testing.assert_allclose(surrogate_grad(reste, {}, jnp.array([0.05, 0.5, 1.4, 1.6]), 0.0), [1, 1, 1, 0],
                               rtol=1e-5)


def test_progress_may_be_traced():
    x = jnp.asarray(grid())
    for name, expected in [("ede", expected_derivative("ede", grid(), t=irnet_ede(0.7)[0], k=irnet_ede(0.7)[1])),
                           ("fda", expected_derivative("fda", grid(), n=bibench_fda_n(0.7))),
                           ("reste", expected_derivative("reste", grid(), o=reste_o(0.7)))]:
        est = E.get(name)
        got = jax.jit(lambda p, est=est: est.derivative({}, x, p))(jnp.float32(0.7))
        np.testing.assert_allclose(np.asarray(got), expected, rtol=5e-5, atol=5e-6, err_msg=name)


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
    ("ede", {"t": 0.1, "k": 10.0}, None),
    ("ede", dict(zip(("t", "k"), irnet_ede(0.3), strict=True)), 0.3),
    ("ede", dict(zip(("t", "k"), irnet_ede(0.8), strict=True)), 0.8),
    ("fda", {"n": 9}, None), ("fda", {"n": bibench_fda_n(0.7)}, 0.7),
    ("reste", {"o": 3.0}, None), ("reste", {"o": reste_o(0.4)}, 0.4),
])
def test_parity_with_torch(name, hp, progress):
    x = grid()
    g = np.random.default_rng(1).normal(size=x.shape).astype(f32)
    xt, yt = _torch_param_free(name, hp, x)
    (yt * torch.tensor(g, dtype=torch.float64)).sum().backward()
    est = E.get(name, **(hp if progress is None else {}))  # scheduled values come from progress
    y, vjp = jax.vjp(lambda v: est({}, v, progress), jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), yt.detach().numpy())
    np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(g))[0]), xt.grad.numpy(), rtol=1e-5, atol=1e-5)
