"""mlpbnn.estimators.registry: the ten estimators behind one signature (exact +-1 forward, jit,
vmap, bfloat16), names and hparams checked with messages naming the valid ones, the command-line
form, hashable and comparable Estimator objects."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlpbnn import estimators as E
from tests.test_estimators_free import grid

ALL = ["approx_sign", "classifier", "ede", "fda", "linear", "mlp", "reste", "ste", "swish_sign", "tanh"]
f32 = np.float32


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
    np.testing.assert_array_equal(np.asarray(E.get(name, zero=-1)(theta, x)), [-1.0, -1.0, 1.0])


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
    assert np.abs(np.asarray(eager[1])).sum() > 0  # the surrogate passes something


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


def test_non_float_input():
    with pytest.raises(ValueError, match="estimator 'ste' needs a floating-point input, got int32"):
        E.get("ste")({}, jnp.ones(3, jnp.int32))


# ------------------------------------------------------------------------------ names and hparams

def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError) as info:
        E.get("nope")
    assert str(info.value) == "unknown estimator 'nope'; valid names: " + ", ".join(ALL)


def test_unknown_hparam_lists_valid_ones():
    with pytest.raises(ValueError) as info:
        E.get("ste", beta=2.0)
    assert str(info.value) == "unknown hparam(s) ['beta'] for estimator 'ste'; valid: clip, inclusive, zero"
    with pytest.raises(ValueError, match=r"unknown hparam\(s\) \['t_0'\] for estimator 'ede'; "
                                         r"valid: k, t, t_max, t_min, zero$"):
        E.get("ede", t_0=1.0)


@pytest.mark.parametrize("name,hp,message", [
    ("swish_sign", {"beta": -1.0}, "hparam 'beta' of estimator 'swish_sign' must be > 0, got -1.0"),
    ("ede", {"t_min": 0}, "hparam 't_min' of estimator 'ede' must be > 0, got 0.0"),
    ("mlp", {"hidden": 0}, "hparam 'hidden' of estimator 'mlp' must be >= 1, got 0"),
    ("mlp", {"activation": "gelu"}, "hparam 'activation' of estimator 'mlp' must be one of 'tanh', 'relu', "
                                    "'identity', got 'gelu'"),
    ("ste", {"zero": 0.5}, "hparam 'zero' of estimator 'ste' must be one of -1.0, 0.0, 1.0, got 0.5"),
    ("ste", {"inclusive": "yes"}, "hparam 'inclusive' of estimator 'ste' must be a bool, got 'yes'"),
    ("fda", {"n": 2.5}, "hparam 'n' of estimator 'fda' must be an int, got 2.5"),
    ("fda", {"n_end": -1}, "hparam 'n_end' of estimator 'fda' must be >= 0, got -1"),
    ("mlp", {"init": "xavier"}, "hparam 'init' of estimator 'mlp' must be one of 'torch', 'positive', got 'xavier'"),
    ("classifier", {"tie": 0}, "hparam 'tie' of estimator 'classifier' must be one of -1.0, 1.0, got 0.0"),
    ("mlp", {"chunk": -1}, "hparam 'chunk' of estimator 'mlp' must be >= 0, got -1"),
    ("linear", {"chunk": 2.5}, "hparam 'chunk' of estimator 'linear' must be an int, got 2.5"),
    ("mlp", {"backward": "fast"}, "hparam 'backward' of estimator 'mlp' must be one of 'auto', 'matmul', "
                                  "'reduce', 'autodiff', 'pallas', got 'fast'"),
])
def test_bad_hparam_values(name, hp, message):
    with pytest.raises(ValueError) as info:
        E.get(name, **hp)
    assert str(info.value) == message


def test_each_estimator_has_its_hparams_dataclass():
    for name in ALL:
        est = E.get(name)
        assert type(est.hparams) is E.REGISTRY[name].hparams and est.hparams.estimator == name
        assert E.get(name, **est.kwargs) == est and list(est.kwargs) == list(est.hparams.names())
    with pytest.raises(ValueError, match="estimator 'ste' takes SteHparams, got TanhHparams"):
        E.Estimator("ste", E.TanhHparams())


def test_estimators_are_hashable_and_comparable():
    assert E.get("ste", clip=1) == E.get("ste", clip=1.0)
    assert hash(E.get("ste", clip=1)) == hash(E.get("ste", clip=1.0))
    assert E.get("mlp", hidden=10.0) == E.get("mlp", hidden=10) and E.get("mlp").kwargs["hidden"] == 100
    assert hash(E.get("mlp")) == hash(E.get("mlp"))
    assert E.get("mlp") != E.get("mlp", init="positive") and E.get("ste") != E.get("approx_sign")
    assert len({E.get("ede"), E.get("ede", t_min=0.1), E.get("ede", t_min=1e-3)}) == 2
    assert E.get(E.get("ede"), t=2.0) == E.get("ede", t=2.0) and E.get(E.get("ste")) == E.get("ste")
    assert repr(E.get("ste")) == "Estimator(ste, clip=1.0, inclusive=True, zero=1.0)"


def test_resolve():
    assert E.resolve({"name": "ede", "t": 2.0}) == E.get("ede", t=2.0)
    assert E.resolve("none") is None and E.resolve(None) is None and E.resolve({"name": "none"}) is None
    assert E.resolve(E.get("tanh")) == E.get("tanh")
    with pytest.raises(ValueError, match="'name' key"):
        E.resolve({"t": 2.0})


def test_parse_command_line_form():
    assert E.resolve("mlp(hidden=10, init='positive')") == E.get("mlp", hidden=10, init="positive")
    assert E.parse(" ede ") == E.get("ede") and E.parse("") is None
    assert E.parse("ste(clip=None, inclusive=False)") == E.get("ste", clip=None, inclusive=False)
    with pytest.raises(ValueError, match="key=literal"):
        E.parse("mlp(10)")
    with pytest.raises(ValueError, match="key=literal"):
        E.parse("mlp(hidden=n)")
    with pytest.raises(ValueError, match="expected NAME"):
        E.parse("mlp[3]")
    with pytest.raises(ValueError, match="unknown hparam"):
        E.parse("ste(beta=2)")
    with pytest.raises(ValueError, match="hparam 'hidden' of estimator 'mlp' must be an int, got 'ten'"):
        E.parse("mlp(hidden='ten')")
