"""mlpbnn.estimators.base: the hard sign, the parameter-free custom_vjp and the Hparams dataclass."""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlpbnn.estimators import base


def test_sign_value_at_zero():
    x = jnp.array([-2.0, -0.0, 0.0, 1e-30, 3.0])
    np.testing.assert_array_equal(np.asarray(base.sign(x)), [-1, 1, 1, 1, 1])  # -0.0 >= 0
    np.testing.assert_array_equal(np.asarray(base.sign(x, 0.0)), np.sign(np.asarray(x)))
    np.testing.assert_array_equal(np.asarray(base.sign(x, -1.0)), [-1, -1, -1, 1, 1])
    assert base.sign(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def _cubic_derivative(x, a):
    return a * x * x  # d/dx of a x^3 / 3, so that the test knows the exact backward


def test_surrogate_forward_sign_backward_formula_and_zero_hparam_cotangent():
    x = jnp.array([-1.5, -0.2, 0.0, 0.7, 2.0])
    g = jnp.array([1.0, -2.0, 0.5, 3.0, -1.0])

    def f(v, a):
        return jnp.sum(base.surrogate(_cubic_derivative, v, 1.0, a=a) * g)

    y = base.surrogate(_cubic_derivative, x, 0.0, a=2.0)
    np.testing.assert_array_equal(np.asarray(y), np.sign(np.asarray(x)))
    dx, da = jax.jit(jax.grad(f, argnums=(0, 1)))(x, jnp.float32(2.0))  # a traced hparam
    np.testing.assert_allclose(np.asarray(dx), np.asarray(g) * 2.0 * np.asarray(x) ** 2, rtol=1e-6)
    assert float(da) == 0.0


def test_surrogate_derivative_in_float32_under_bfloat16():
    x = jnp.array([0.3, 1.7, -2.9], jnp.bfloat16)
    dx = jax.grad(lambda v: jnp.sum(base.surrogate(_cubic_derivative, v, 1.0, a=1.0).astype(jnp.float32)))(x)
    assert dx.dtype == jnp.bfloat16
    expected = (np.asarray(x, np.float32) ** 2).astype(jnp.bfloat16)  # computed in f32, rounded once
    np.testing.assert_array_equal(np.asarray(dx), expected)


def test_check_no_theta():
    base.check_no_theta("ste", {})
    with pytest.raises(ValueError, match=r"estimator 'ste' has no parameters; pass theta=\{\}, got keys \['w0'\]"):
        base.check_no_theta("ste", {"w0": jnp.ones(1)})


@dataclasses.dataclass(frozen=True)
class Toy(base.Hparams):
    estimator: ClassVar[str] = "toy"
    scale: float = base.hparam(1.0, positive=True)
    count: int = base.hparam(3, minimum=0)
    mode: str = base.hparam("a", choices=("a", "b"))
    flag: bool = False
    limit: float | None = base.hparam(None, positive=True)


def test_hparams_normalise_types_so_equal_settings_hash_equal():
    toy = Toy(scale=2, count=4.0, limit=np.float32(0.5))
    assert type(toy.scale) is float and type(toy.count) is int and type(toy.limit) is float
    assert toy == Toy(scale=2.0, count=4, limit=0.5) and hash(toy) == hash(Toy(scale=2.0, count=4, limit=0.5))
    assert toy != Toy(scale=2.0, count=5, limit=0.5)
    assert Toy.names() == ("scale", "count", "mode", "flag", "limit")
    assert toy.as_dict() == {"scale": 2.0, "count": 4, "mode": "a", "flag": False, "limit": 0.5}
    with pytest.raises(dataclasses.FrozenInstanceError):
        toy.scale = 3.0  # type: ignore[misc]


@pytest.mark.parametrize("kwargs,message", [
    ({"scale": 0.0}, "hparam 'scale' of estimator 'toy' must be > 0, got 0.0"),
    ({"scale": float("nan")}, "hparam 'scale' of estimator 'toy' must be > 0, got nan"),
    ({"scale": True}, "hparam 'scale' of estimator 'toy' must be a number, got True"),
    ({"scale": "2"}, "hparam 'scale' of estimator 'toy' must be a number, got '2'"),
    ({"count": 2.5}, "hparam 'count' of estimator 'toy' must be an int, got 2.5"),
    ({"count": -1}, "hparam 'count' of estimator 'toy' must be >= 0, got -1"),
    ({"mode": "c"}, "hparam 'mode' of estimator 'toy' must be one of 'a', 'b', got 'c'"),
    ({"flag": 1}, "hparam 'flag' of estimator 'toy' must be a bool, got 1"),
    ({"limit": -1}, "hparam 'limit' of estimator 'toy' must be > 0, got -1.0"),
    ({"limit": "x"}, "hparam 'limit' of estimator 'toy' must be a number or None, got 'x'"),
])
def test_hparams_errors_say_what_is_accepted(kwargs, message):
    with pytest.raises(ValueError) as info:
        Toy(**kwargs)
    assert str(info.value) == message


def test_hparams_none_skips_the_checks_and_validate_runs_last():
    assert Toy(limit=None).limit is None

    @dataclasses.dataclass(frozen=True)
    class Ordered(base.Hparams):
        estimator: ClassVar[str] = "ordered"
        lo: float = 0.0
        hi: float = 1.0

        def validate(self) -> None:
            if not self.lo < self.hi:
                self.fail("hi", f"> lo = {self.lo}", self.hi)

    assert Ordered(lo=1, hi=2).hi == 2.0
    with pytest.raises(ValueError, match=r"hparam 'hi' of estimator 'ordered' must be > lo = 1.0, got 0.5"):
        Ordered(lo=1, hi=0.5)
