"""What every estimator shares: the hard sign, the custom_vjp of the parameter-free estimators, and
``Hparams``, the frozen dataclass that holds (and checks) an estimator's hyper-parameters."""

from __future__ import annotations

import dataclasses
import functools
import numbers
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, NoReturn

import jax
import jax.numpy as jnp

from mlpbnn.registry import Registry

Array = jax.Array
Theta = dict[str, Array]
Progress = Array | float | None  # fraction of training done, in [0, 1]; None: not scheduled
F32 = jnp.float32


def sign(x: Array, zero: float = 1.0) -> Array:
    """Hard sign with a chosen value at 0 (+1 by default; torch/jnp use 0, larq +1)."""
    one = jnp.ones((), x.dtype)
    if zero == 1.0:
        return jnp.where(x >= 0, one, -one)
    if zero == -1.0:
        return jnp.where(x > 0, one, -one)
    return jnp.where(x > 0, one, jnp.where(x < 0, -one, jnp.asarray(zero, x.dtype)))


# --------------------------------------------------------------------------------------------
# One custom_vjp serves every parameter-free estimator: forward sign(x), backward g * q'(x).
# Dynamic hyper-parameters (possibly traced, e.g. scheduled by progress) travel as a
# differentiable pytree with zero cotangents; only the derivative function is static.


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _sign_surrogate(derivative: Callable[..., Array], zero: float, x: Array, hp: dict) -> Array:
    return sign(x, zero)


def _sign_surrogate_fwd(derivative, zero, x, hp):
    return sign(x, zero), (x, hp)


def _sign_surrogate_bwd(derivative, zero, res, g):
    x, hp = res
    d = derivative(x.astype(jnp.promote_types(x.dtype, F32)), **hp)  # float32 even under bf16; f64 stays
    return g * d.astype(g.dtype), jax.tree.map(jnp.zeros_like, hp)


_sign_surrogate.defvjp(_sign_surrogate_fwd, _sign_surrogate_bwd)


def surrogate(derivative: Callable[..., Array], x: Array, zero: float, **hp: Any) -> Array:
    """sign(x) forward, g * derivative(x, **hp) backward. ``derivative`` must be hashable and stable
    (a module-level function), ``hp`` scalars or traced arrays."""
    hp = {k: jnp.asarray(v, F32) for k, v in hp.items()}
    return _sign_surrogate(derivative, float(zero), x, hp)


def check_no_theta(name: str, theta: Any) -> None:
    if theta:
        raise ValueError(f"estimator {name!r} has no parameters; pass theta={{}}, got keys {sorted(theta)}")


# --------------------------------------------------------------------------------------------
# Hyper-parameters: one frozen dataclass per estimator. Frozen and made of scalars and strings,
# so an Estimator holding one is hashable (a flax module field, a static jit argument).


def hparam(default: Any, *, choices: Iterable[Any] | None = None, minimum: float | None = None,
           positive: bool = False) -> Any:
    """A field of an ``Hparams`` dataclass with declarative checks: ``choices`` (the allowed values),
    ``minimum`` (inclusive) or ``positive`` (> 0). None, where the type allows it, skips them."""
    meta = {"choices": None if choices is None else tuple(choices), "minimum": minimum, "positive": positive}
    return dataclasses.field(default=default, metadata=meta)


def _allowed_types(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


_TYPE_WORDS = {bool: "a bool", int: "an int", float: "a number", str: "a string", type(None): "None"}


@dataclasses.dataclass(frozen=True)
class Hparams:
    """Base of every estimator's hyper-parameters.

    Values are normalised to their declared type on construction (ints to float for float fields,
    so that ``clip=1`` and ``clip=1.0`` give equal, equally hashed estimators; integral floats to
    int for int fields), then checked against each field's ``hparam`` metadata and ``validate``.
    Errors are ValueErrors naming the estimator, the hparam and what it accepts.
    """

    estimator: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = self._normalise(f.name, getattr(self, f.name), _allowed_types(hints[f.name]))
            object.__setattr__(self, f.name, value)
            if value is None:
                continue
            meta = f.metadata
            if meta.get("choices") is not None and value not in meta["choices"]:
                self.fail(f.name, f"one of {', '.join(repr(c) for c in meta['choices'])}", value)
            if meta.get("minimum") is not None and value < meta["minimum"]:
                self.fail(f.name, f">= {meta['minimum']}", value)
            if meta.get("positive") and not value > 0:  # also refuses nan
                self.fail(f.name, "> 0", value)
        self.validate()

    def _normalise(self, name: str, value: Any, allowed: tuple[Any, ...]) -> Any:
        if value is None and type(None) in allowed:
            return None
        is_bool = isinstance(value, bool)
        if bool in allowed and is_bool:
            return value
        if int in allowed and not is_bool:
            if isinstance(value, numbers.Integral):
                return int(value)
            if isinstance(value, numbers.Real) and float(value).is_integer():
                return int(value)
        if float in allowed and isinstance(value, numbers.Real) and not is_bool:
            return float(value)
        if str in allowed and isinstance(value, str):
            return value
        self.fail(name, " or ".join(_TYPE_WORDS.get(t, str(t)) for t in allowed), value)

    def validate(self) -> None:
        """Checks across fields; the per-field ones are declared with ``hparam``."""

    def fail(self, name: str, requirement: str, value: Any) -> NoReturn:
        raise ValueError(f"hparam {name!r} of estimator {self.estimator!r} must be {requirement}, got {value!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The hparam names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.names()}


SIGN_ZERO = (-1.0, 0.0, 1.0)  # the allowed values of sign(0)


@dataclasses.dataclass(frozen=True)
class Spec:
    """One registered estimator: its hparams dataclass, its function ``fn(hp, theta, x, progress)``,
    for learnable ones ``init(hp, key) -> theta`` (None: parameter-free), and whether its forward
    pass is sign(x) (with its ``zero``), which bit-packed inference reproduces (``classifier``'s is
    an argmax of a learned function)."""

    hparams: type[Hparams]
    fn: Callable[..., Array]
    init: Callable[[Any, Array], Theta] | None = None
    sign_forward: bool = True


ESTIMATORS: Registry[Spec] = Registry("estimator")


def register(name: str, hparams: type[Hparams], fn: Callable[..., Array],
             init: Callable[[Any, Array], Theta] | None = None, sign_forward: bool = True) -> None:
    """Registers estimator ``name`` (called where the estimator is defined)."""
    ESTIMATORS.register(name, Spec(hparams, fn, init, sign_forward))
