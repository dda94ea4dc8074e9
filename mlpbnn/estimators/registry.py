"""The estimators by name: ``get``, the command-line form ``NAME(k=v, ...)`` (``parse``), and the
``Estimator`` object that binds an estimator to its hyper-parameters."""

from __future__ import annotations

import ast
import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from mlpbnn.estimators import free, learned  # noqa: F401 - each registers its estimators
from mlpbnn.estimators.base import ESTIMATORS, F32, Array, Hparams, Progress, Spec, Theta

# Each estimator registers itself where it is defined (``base.register`` in free.py, learned.py).
REGISTRY = ESTIMATORS


def names() -> list[str]:
    """The registered estimator names."""
    return REGISTRY.names()


@dataclasses.dataclass(frozen=True)
class Estimator:
    """A named estimator with bound hyper-parameters; hashable and comparable, so usable as a flax
    module field or a static argument."""

    name: str
    hparams: Hparams

    def __post_init__(self) -> None:
        if self.name not in REGISTRY:
            raise ValueError(f"unknown estimator {self.name!r}; valid names: {', '.join(names())}")
        if type(self.hparams) is not REGISTRY[self.name].hparams:
            raise ValueError(f"estimator {self.name!r} takes {REGISTRY[self.name].hparams.__name__}, "
                             f"got {type(self.hparams).__name__}")

    @property
    def spec(self) -> Spec:
        return REGISTRY[self.name]

    @property
    def learnable(self) -> bool:
        return self.spec.init is not None

    @property
    def kwargs(self) -> dict[str, Any]:
        """The hparams as a dict (``get(est.name, **est.kwargs) == est``)."""
        return self.hparams.as_dict()

    def init(self, key: Array) -> Theta:
        """Initial theta ({} for parameter-free estimators)."""
        return {} if self.spec.init is None else self.spec.init(self.hparams, key)

    @functools.cached_property
    def theta_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = jax.eval_shape(self.init, jax.random.key(0))
        return {k: tuple(v.shape) for k, v in shapes.items()}

    def __call__(self, theta: Theta | None, x: Array, progress: Progress = None) -> Array:
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"estimator {self.name!r} needs a floating-point input, got {x.dtype}")
        theta = {} if theta is None else theta
        if self.learnable:
            got = {k: tuple(jnp.shape(v)) for k, v in theta.items()}
            if got != self.theta_shapes:
                raise ValueError(f"estimator {self.name!r} expects theta with shapes "
                                 f"{self.theta_shapes}, got {got}")
        return self.spec.fn(self.hparams, theta, x, progress)

    def derivative(self, theta: Theta | None, x: Array, progress: Progress = None) -> Array:
        """The surrogate derivative dq/dx, element-wise (the backward pass with g = 1)."""
        x = jnp.asarray(x, F32)
        _, vjp = jax.vjp(lambda v: self(theta, v, progress), x)
        return vjp(jnp.ones_like(x))[0]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"Estimator({self.name}{', ' if args else ''}{args})"


def get(name: str | Estimator, **hparams: Any) -> Estimator:
    """The estimator ``name`` with ``hparams`` overriding its defaults.

    Raises ValueError naming the valid names, the valid hparams of ``name``, or what a bad value
    should be.
    """
    if isinstance(name, Estimator):
        return name if not hparams else get(name.name, **{**name.kwargs, **hparams})
    if name not in REGISTRY:
        raise ValueError(f"unknown estimator {name!r}; valid names: {', '.join(names())}")
    cls = REGISTRY[name].hparams
    unknown = sorted(set(hparams) - set(cls.names()))
    if unknown:
        raise ValueError(f"unknown hparam(s) {unknown} for estimator {name!r}; "
                         f"valid: {', '.join(sorted(cls.names()))}")
    return Estimator(name, cls(**hparams))


def parse(spec: str) -> Estimator | None:
    """An Estimator from the command-line form ``name`` or ``name(k=v, ...)``, e.g.
    ``mlp(hidden=10, init='positive')``; ``''`` or ``'none'`` give None (real values)."""
    spec = spec.strip()
    if spec in ("", "none"):
        return None
    m = re.fullmatch(r"([A-Za-z_]\w*)\s*(?:\((.*)\))?", spec, flags=re.S)
    if not m:
        raise ValueError(f"cannot parse estimator {spec!r}; expected NAME or NAME(key=value, ...)")
    name, args = m.group(1), m.group(2)
    hparams: dict[str, Any] = {}
    if args and args.strip():
        try:
            call = ast.parse(f"f({args})", mode="eval").body
            hparams = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}  # type: ignore[attr-defined]
            if call.args or any(kw.arg is None for kw in call.keywords):  # type: ignore[attr-defined]
                raise ValueError("positional argument")
        except (SyntaxError, ValueError) as e:
            raise ValueError(f"cannot parse estimator {spec!r}: arguments must be key=literal ({e})") from None
    return get(name, **hparams)


def resolve(spec: str | Estimator | Mapping[str, Any] | None) -> Estimator | None:
    """An Estimator from a name or ``name(k=v)`` string, an Estimator, a {'name': ..., **hparams}
    mapping, or None."""
    if spec is None or isinstance(spec, Estimator):
        return spec
    if isinstance(spec, str):
        return parse(spec)
    spec = dict(spec)
    if "name" not in spec:
        raise ValueError(f"an estimator mapping needs a 'name' key, got keys {sorted(spec)}")
    name = spec.pop("name")
    return None if name in ("", "none") else get(name, **spec)
