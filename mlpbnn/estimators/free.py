"""Parameter-free estimators: forward sign(x), backward a fixed (or scheduled) derivative.

Each is one function ``fn(hp, theta, x, progress)`` whose docstring holds its forward and backward
formula and its source, and one frozen ``Hparams`` dataclass. ``theta`` must be empty. Scheduled
hyper-parameters (EDE t and k, FDA n, ReSTE o) follow their papers' schedules when ``progress`` in
[0, 1] (the fraction of training done, possibly a traced scalar) is given.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import ClassVar

import jax.numpy as jnp

from mlpbnn.estimators.base import (
    F32,
    SIGN_ZERO,
    Array,
    Hparams,
    Progress,
    Theta,
    check_no_theta,
    hparam,
    register,
    surrogate,
)

# ------------------------------------------------------------------------------------------ STE

@dataclasses.dataclass(frozen=True)
class SteHparams(Hparams):
    """clip: gradient window |x| <= clip (None: unclipped); inclusive: <= (larq) or < (Bi-Real)."""

    estimator: ClassVar[str] = "ste"
    clip: float | None = hparam(1.0, positive=True)
    inclusive: bool = True
    zero: float = hparam(1.0, choices=SIGN_ZERO)


def _ste_derivative(x, clip, inclusive, unclipped):
    inside = jnp.where(inclusive > 0, jnp.abs(x) <= clip, jnp.abs(x) < clip)
    return jnp.where(unclipped > 0, jnp.ones_like(x), inside.astype(x.dtype))


def ste(hp: SteHparams, theta: Theta, x: Array, progress: Progress = None) -> Array:
    """Straight-through estimator, clipped identity (Hubara et al., arXiv 1602.02830; the STE of
    Bengio et al., arXiv 1308.3432; larq ``ste_sign``).

    forward  q(x) = sign(x)
    backward dq/dx = 1[|x| <= clip]   (``inclusive=True``, larq)
             dq/dx = 1[|x| <  clip]   (``inclusive=False``, BBC/Bi-Real ``BinActive``)
             dq/dx = 1                (``clip=None``, unclipped identity)
    """
    check_no_theta("ste", theta)
    return surrogate(_ste_derivative, x, hp.zero, clip=1.0 if hp.clip is None else hp.clip,
                     inclusive=float(hp.inclusive), unclipped=float(hp.clip is None))


# ------------------------------------------------------------------------------------------ ApproxSign

@dataclasses.dataclass(frozen=True)
class ApproxSignHparams(Hparams):
    estimator: ClassVar[str] = "approx_sign"
    zero: float = hparam(1.0, choices=SIGN_ZERO)


def _approx_sign_derivative(x):
    return jnp.maximum(2.0 - 2.0 * jnp.abs(x), 0.0)


def approx_sign(hp: ApproxSignHparams, theta: Theta, x: Array, progress: Progress = None) -> Array:
    """ApproxSign, the Bi-Real Net polynomial (Liu et al., arXiv 1808.00278; used on the
    activations by ReActNet, arXiv 2003.03488, and BBC, arXiv 2205.07433).

    forward  q(x) = sign(x)
    backward dq/dx = 2 + 2x on [-1, 0),  2 - 2x on [0, 1),  0 elsewhere  (= max(0, 2 - 2|x|)),
             the derivative of F(x) = -1 (x < -1), x^2 + 2x (x < 0), -x^2 + 2x (x < 1), 1 (x >= 1).
    """
    check_no_theta("approx_sign", theta)
    return surrogate(_approx_sign_derivative, x, hp.zero)


# ------------------------------------------------------------------------------------------ SwishSign

@dataclasses.dataclass(frozen=True)
class SwishSignHparams(Hparams):
    estimator: ClassVar[str] = "swish_sign"
    beta: float = hparam(5.0, positive=True)
    zero: float = hparam(1.0, choices=SIGN_ZERO)


def _swish_sign_derivative(x, beta):
    bx = beta * x
    # cosh overflows to inf for |beta x| > ~89, where the true derivative underflows to 0 anyway.
    return beta * (2.0 - bx * jnp.tanh(bx / 2.0)) / (1.0 + jnp.cosh(bx))


def swish_sign(hp: SwishSignHparams, theta: Theta, x: Array, progress: Progress = None) -> Array:
    """SwishSign (BNN+, Darabi et al., arXiv 1812.11800; larq ``swish_sign``, beta = 5).

    forward  q(x) = sign(x)
    backward dq/dx = beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x)),
             the derivative of 2 sigmoid(beta x) (1 + beta x (1 - sigmoid(beta x))) - 1.
    """
    check_no_theta("swish_sign", theta)
    return surrogate(_swish_sign_derivative, x, hp.zero, beta=hp.beta)


# ------------------------------------------------------------------------------------------ tanh

@dataclasses.dataclass(frozen=True)
class TanhHparams(Hparams):
    estimator: ClassVar[str] = "tanh"
    beta: float = hparam(1.0, positive=True)
    zero: float = hparam(1.0, choices=SIGN_ZERO)


def _tanh_derivative(x, beta, k):
    return k * beta * (1.0 - jnp.tanh(beta * x) ** 2)


def tanh(hp: TanhHparams, theta: Theta, x: Array, progress: Progress = None) -> Array:
    """The tanh soft sign at a fixed sharpness beta.

    forward  q(x) = sign(x)
    backward dq/dx = beta (1 - tanh^2(beta x)), the derivative of tanh(beta x).
    Source: the tanh soft quantizer of DSQ (Gong et al., "Differentiable Soft Quantization",
    arXiv 1908.05033), whose one-bit case is a tanh(k x) between the two levels. This is its plain
    form as a backward only: the forward stays the hard sign, beta is fixed, the tanh is neither
    rescaled nor clipped (DSQ rescales it to reach the levels at its clipping range, clips outside
    and evolves k during training). It equals IR-Net's EDE (``ede``, arXiv 1909.10788) with k = 1
    and t = beta held constant.
    """
    check_no_theta("tanh", theta)
    return surrogate(_tanh_derivative, x, hp.zero, beta=hp.beta, k=1.0)


# ------------------------------------------------------------------------------------------ EDE

@dataclasses.dataclass(frozen=True)
class EdeHparams(Hparams):
    """t, k: the values without progress (None: the schedule's start, t = t_min, k = max(1/t, 1));
    t_min, t_max: the schedule's range (IR-Net: 0.1 and 10)."""

    estimator: ClassVar[str] = "ede"
    t: float | None = hparam(None, positive=True)
    k: float | None = hparam(None, positive=True)
    t_min: float = hparam(0.1, positive=True)
    t_max: float = hparam(10.0, positive=True)
    zero: float = hparam(1.0, choices=SIGN_ZERO)

    def fixed(self) -> tuple[float, float]:
        """(t, k) when no progress is given."""
        t = self.t_min if self.t is None else self.t
        return t, (max(1.0 / t, 1.0) if self.k is None else self.k)


def ede_schedule(progress: Array | float, t_min: float, t_max: float) -> tuple[Array, Array]:
    """IR-Net's EDE schedule: t = t_min 10^(progress log10(t_max / t_min)), k = max(1/t, 1).

    t grows geometrically from t_min to t_max (progress = epoch / epochs in IR-Net's code)."""
    t = t_min * 10.0 ** (jnp.asarray(progress, F32) * math.log10(t_max / t_min))
    return t, jnp.maximum(1.0 / t, 1.0)


def ede(hp: EdeHparams, theta: Theta, x: Array, progress: Progress = None) -> Array:
    """Error Decay Estimator (IR-Net, Qin et al., arXiv 1909.10788, ``binaryfunction.py``).

    forward  q(x) = sign(x)
    backward dq/dx = k t (1 - tanh^2(t x)), the derivative of k tanh(t x).
    Scheduled (``ede_schedule``): t = t_min 10^(progress log10(t_max / t_min)), k = max(1/t, 1),
    with IR-Net's t_min = 0.1, t_max = 10: t grows geometrically from 0.1 to 10 while k falls
    from 10 to 1 (reached at t = 1, mid-training); the slope at 0, k t, stays 1 until then and
    grows with t to 10 after, while the window where the gradient is non-zero narrows.
    IR-Net's code (``htqin/IR-Net``) uses these values in its VGG-Small and ResNet-20 1w32a
    scripts and starts every layer at t = 0.1, k = 10; its ResNet-20 1w1a script alone uses
    t_min = 1e-3 (here ``ede(t_min=1e-3)``). It updates t and k once per epoch (progress =
    epoch / epochs); here progress is the fraction of steps done, so they change every step.
    Without progress: ``t``, ``k`` if given, else the schedule's start (t = t_min, k = max(1/t, 1)).
    """
    check_no_theta("ede", theta)
    t, k = hp.fixed() if progress is None else ede_schedule(progress, hp.t_min, hp.t_max)
    return surrogate(_tanh_derivative, x, hp.zero, beta=t, k=k)


# ------------------------------------------------------------------------------------------ FDA

@dataclasses.dataclass(frozen=True)
class FdaHparams(Hparams):
    """n: cosine terms i = 0..n (at the start when scheduled); n_end: at the end; omega: frequency."""

    estimator: ClassVar[str] = "fda"
    n: int = hparam(9, minimum=0)
    n_end: int = hparam(18, minimum=0)
    omega: float = hparam(0.1, positive=True)
    zero: float = hparam(1.0, choices=SIGN_ZERO)


def _fda_derivative(x, n, omega, n_max):
    # Terms i = 0..n with a traced n: sum the static maximum and mask (no dynamic shapes).
    total = jnp.zeros_like(x)
    for i in range(int(n_max) + 1):
        total = total + jnp.where(i <= n, jnp.cos((2 * i + 1) * omega * x), 0.0)
    return jnp.where(jnp.abs(x) <= 1.0, 4.0 * omega / math.pi * total, 0.0)


@functools.cache
def _fda_derivative_for(n_max: int) -> Callable[..., Array]:
    # One derivative object per static n_max: custom_vjp's static argument must hash stably.
    return functools.partial(_fda_derivative, n_max=n_max)


def fda_schedule(progress: Array | float, n: int, n_end: int) -> Array:
    """FDA's term schedule: n(p) = n + floor((n_end - n) p), 9 -> 18 as in BiBench."""
    return n + jnp.floor((n_end - n) * jnp.asarray(progress, F32))


def fda(hp: FdaHparams, theta: Theta, x: Array, progress: Progress = None) -> Array:
    """Fourier-series derivative approximation (FDA, Xu et al., arXiv 2103.00841; as BiBench,
    arXiv 2301.11233, ``fda.py``).

    forward  q(x) = sign(x)
    backward dq/dx = (4 omega / pi) sum_{i=0..n} cos((2i + 1) omega x) for |x| <= 1, else 0,
             the derivative of the truncated Fourier series of the square wave,
             (4 / pi) sum_i sin((2i + 1) omega x) / (2i + 1).
    Scheduled: n(p) = n + floor((n_end - n) p), 9 -> 18 as in BiBench. FDA's learnable
    noise-adaptation module is a separate network and is not part of this estimator.
    """
    check_no_theta("fda", theta)
    n_now = hp.n if progress is None else fda_schedule(progress, hp.n, hp.n_end)
    return surrogate(_fda_derivative_for(max(hp.n, hp.n_end)), x, hp.zero, n=n_now, omega=hp.omega)


# ------------------------------------------------------------------------------------------ ReSTE

@dataclasses.dataclass(frozen=True)
class ResteHparams(Hparams):
    """o: the power's order (at the end when scheduled); t: gradient window |x| <= t."""

    estimator: ClassVar[str] = "reste"
    o: float = hparam(3.0, positive=True)
    t: float = hparam(1.5, positive=True)
    zero: float = hparam(1.0, choices=SIGN_ZERO)


def _reste_derivative(x, o, t):
    a = jnp.abs(x)
    power = (1.0 / o) * jnp.maximum(a, 0.1) ** ((1.0 - o) / o)
    secant = 0.1 ** (1.0 / o) / 0.1
    return jnp.where(a <= 0.1, secant, jnp.where(a <= t, power, 0.0))


def reste_schedule(progress: Array | float, o: float) -> Array:
    """ReSTE's schedule: o(p) = 1 + (1 - cos(pi p / 2)) (o - 1), from 1 to o."""
    return 1.0 + (1.0 - jnp.cos(math.pi / 2.0 * jnp.asarray(progress, F32))) * (o - 1.0)


def reste(hp: ResteHparams, theta: Theta, x: Array, progress: Progress = None) -> Array:
    """Rectified straight-through estimator (ReSTE, Wu et al., arXiv 2308.06689,
    ``binarized_modules.py``).

    forward  q(x) = sign(x)
    backward dq/dx = (1/o) |x|^((1 - o)/o)   for 0.1 < |x| <= t
             dq/dx = 0.1^(1/o) / 0.1         for |x| <= 0.1 (secant of the power near 0)
             dq/dx = 0                       for |x| > t
             the derivative of sign(x) |x|^(1/o) (linear inside |x| <= 0.1).
    Scheduled: o(p) = 1 + (1 - cos(pi p / 2)) (o - 1), from the identity (o=1) to ``o``.
    """
    check_no_theta("reste", theta)
    o_now = hp.o if progress is None else reste_schedule(progress, hp.o)
    return surrogate(_reste_derivative, x, hp.zero, o=o_now, t=hp.t)


for _name, _hparams, _fn in (("ste", SteHparams, ste), ("approx_sign", ApproxSignHparams, approx_sign),
                             ("swish_sign", SwishSignHparams, swish_sign), ("tanh", TanhHparams, tanh),
                             ("ede", EdeHparams, ede), ("fda", FdaHparams, fda), ("reste", ResteHparams, reste)):
    register(_name, _hparams, _fn)
