"""Learnable estimators: a small element-wise MLP f: R -> R^K whose parameters theta receive
cotangents, so the task loss trains them, as in BBC (He et al., arXiv 2205.07433).

``mlp`` and ``linear`` (``MetaConv_v2``) keep the hard sign forward and differentiate the gated
surrogate s(x; theta) = sum_k clip(f_k(x), -1, 1) (backward kernels in ``mlp_backward``);
``classifier`` (``MetaConv_v3``) lets f decide the sign. Each is one function
``fn(hp, theta, x, progress)``, one ``Hparams`` dataclass and one ``init(hp, key) -> theta``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from mlpbnn.estimators.base import F32, SIGN_ZERO, Array, Hparams, Progress, Theta, hparam, register, sign
from mlpbnn.estimators.mlp_backward import (
    ACTIVATIONS,
    BACKWARD_FORMS,
    chunked_vjp,
    default_backward,
    gated_mlp_vjp,
    mlp_apply,
)

INITS = ("torch", "positive")


def _torch_linear_init(key: Array, sizes: tuple[int, ...], bias: bool) -> Theta:
    """PyTorch ``nn.Linear`` default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    theta = {}
    keys = jax.random.split(key, 2 * (len(sizes) - 1))
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        bound = 1.0 / math.sqrt(fan_in)
        theta[f"w{i}"] = jax.random.uniform(keys[2 * i], (fan_in, fan_out), F32, -bound, bound)
        if bias:
            theta[f"b{i}"] = jax.random.uniform(keys[2 * i + 1], (fan_out,), F32, -bound, bound)
    return theta


def slope_at_zero(theta: Theta, activation: str = "tanh") -> Array:
    """d/dx sum_k f_k(x) at x = 0 (ignoring the gate): the MLP's effective STE slope there."""
    return jax.grad(lambda x: mlp_apply(theta, x, activation).sum())(jnp.zeros((), F32))


def _gated_init(key: Array, hidden: int, outputs: int, bias: bool, init: str, activation: str) -> Theta:
    theta = _torch_linear_init(key, (1, hidden, outputs), bias)
    if init == "positive":
        flip = jnp.where(slope_at_zero(theta, activation) < 0, -1.0, 1.0)
        theta["w1"] = theta["w1"] * flip
        if bias:
            theta["b1"] = theta["b1"] * flip
    return theta


# ------------------------------------------------------------------------------------------ gated MLP

@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _gated_mlp_sign(activation: str, zero: float, chunk: int, backward: str, theta: Theta, x: Array) -> Array:
    return sign(x, zero)


def _gated_mlp_sign_fwd(activation, zero, chunk, backward, theta, x):
    return sign(x, zero), (theta, x)


def _gated_mlp_sign_bwd(activation, zero, chunk, backward, res, g):
    theta, x = res
    if backward == "pallas":  # one fused kernel over the whole tensor
        from mlpbnn.estimators.mlp_pallas import gated_mlp_vjp_pallas  # lazy: Triton's import costs ~0.2 s

        return gated_mlp_vjp_pallas(theta, x, g, activation, chunk=chunk)
    form = default_backward() if backward == "auto" else backward  # resolved when traced
    vjp_fn = functools.partial(gated_mlp_vjp, activation=activation, form=form)
    return chunked_vjp(vjp_fn, theta, x, g, chunk)


_gated_mlp_sign.defvjp(_gated_mlp_sign_fwd, _gated_mlp_sign_bwd)


@dataclasses.dataclass(frozen=True)
class _GatedHparams(Hparams):
    """hidden, outputs: the MLP 1 -> hidden -> outputs; bias: add b0, b1 (not in the official code);
    init: ``torch`` or ``positive``; chunk, backward: speed only (all as in ``mlp``)."""

    hidden: int = hparam(100, minimum=1)
    outputs: int = hparam(2, minimum=1)
    bias: bool = False
    init: str = hparam("torch", choices=INITS)
    zero: float = hparam(1.0, choices=SIGN_ZERO)
    chunk: int = hparam(0, minimum=0)
    backward: str = hparam("auto", choices=("auto",) + BACKWARD_FORMS + ("pallas",))


@dataclasses.dataclass(frozen=True)
class MlpHparams(_GatedHparams):
    """The gated MLP's hparams and its hidden activation."""

    estimator: ClassVar[str] = "mlp"
    activation: str = hparam("tanh", choices=tuple(ACTIVATIONS))


@dataclasses.dataclass(frozen=True)
class LinearHparams(_GatedHparams):
    """The gated MLP's hparams; no activation (the identity)."""

    estimator: ClassVar[str] = "linear"


def mlp(hp: MlpHparams, theta: Theta, x: Array, progress: Progress = None) -> Array:
    """BBC's learnable MLP estimator (He et al., arXiv 2205.07433, official ``MetaConv_v2``).

    f(x) = W1^T act(W0^T x) per element, W0 = theta['w0'] of shape (1, hidden), W1 = theta['w1']
    of shape (hidden, outputs) (the transposes of ``Linear0.weight``/``Linear1.weight``);
    ``bias=True`` adds b0, b1 (f = W1^T act(W0^T x + b0) + b1; not in the official code).
    forward  q(x) = sign(x)
    backward the gradient of s(x; theta) = sum_k clip(f_k(x), -1, 1), to x and to theta:
             dq/dx = sum_k 1[|f_k(x)| < 1] f_k'(x),
             dq/dW1[j,k] = 1[|f_k(x)| < 1] act(W0[j] x),
             dq/dW0[j] = sum_k 1[|f_k(x)| < 1] W1[j,k] act'(W0[j] x) x.
    init: ``torch`` (nn.Linear default, W0 ~ U(-1,1), W1 ~ U(-0.1,0.1), as the official code) or
    ``positive`` (the same, with W1 negated where that makes the slope at 0 positive).
    chunk: elements per step of the backward scan (memory/speed only; ``chunked_vjp``); 0 picks
    it by backend when traced (``default_chunk``). backward: how the closed form is computed,
    ``matmul``, ``reduce`` or ``autodiff`` (``gated_mlp_vjp``; equal up to float rounding), or
    ``pallas``, one fused kernel (``mlp_pallas``; chunk is then its elements per program; not yet
    timed on a GPU, so ``auto``, which picks by backend when traced (``default_backward``), never
    chooses it). Timings: ``mlp_backward``.
    """
    return _gated_mlp_sign(hp.activation, hp.zero, hp.chunk, hp.backward, theta, x)


def mlp_init(hp: MlpHparams, key: Array) -> Theta:
    return _gated_init(key, hp.hidden, hp.outputs, hp.bias, hp.init, hp.activation)


def linear(hp: LinearHparams, theta: Theta, x: Array, progress: Progress = None) -> Array:
    """The linear special case of BBC's MLP (arXiv 2205.07433; ``MetaConv_v2`` with no nonlinearity).

    f(x) = W1^T W0^T x, so f_k(x) = c_k x with c = W0 W1 (plus biases if ``bias``).
    forward  q(x) = sign(x)
    backward dq/dx = sum_k c_k 1[|c_k x| < 1]: a learnable-slope, learnable-clip-range STE;
             theta receives the gradient of s(x; theta) = sum_k clip(c_k x, -1, 1).
    """
    return _gated_mlp_sign("identity", hp.zero, hp.chunk, hp.backward, theta, x)


def linear_init(hp: LinearHparams, key: Array) -> Theta:
    return _gated_init(key, hp.hidden, hp.outputs, hp.bias, hp.init, "identity")


# ------------------------------------------------------------------------------------------ classifier

@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _argmax_sign(activation: str, tie: float, theta: Theta, x: Array) -> Array:
    f = mlp_apply(theta, x.astype(F32), activation)
    one = jnp.ones((), x.dtype)
    d = f[..., 1] - f[..., 0]
    return jnp.where(d > 0, one, jnp.where(d < 0, -one, jnp.asarray(tie, x.dtype)))


def _argmax_sign_fwd(activation, tie, theta, x):
    return _argmax_sign(activation, tie, theta, x), (theta, x)


def _argmax_sign_bwd(activation, tie, res, g):
    theta, x = res
    _, vjp = jax.vjp(lambda th, v: mlp_apply(th, v, activation), theta, x.astype(F32))
    # ArgmaxWithGradient copies g to both logits; the map idx -> 2 idx - 1 contributes the 2.
    dtheta, dx = vjp(jnp.broadcast_to(2.0 * g.astype(F32)[..., None], x.shape + (2,)))
    return dtheta, dx.astype(x.dtype)


_argmax_sign.defvjp(_argmax_sign_fwd, _argmax_sign_bwd)


@dataclasses.dataclass(frozen=True)
class ClassifierHparams(Hparams):
    """hidden: 0 for one linear layer (1, 2), as v3, or the width of 1 -> hidden -> 2;
    tie: the output where f_1 = f_0."""

    estimator: ClassVar[str] = "classifier"
    hidden: int = hparam(0, minimum=0)
    activation: str = hparam("identity", choices=tuple(ACTIVATIONS))
    bias: bool = False
    tie: float = hparam(1.0, choices=(-1.0, 1.0))


def classifier(hp: ClassifierHparams, theta: Theta, x: Array, progress: Progress = None) -> Array:
    """Binarization as classification: BBC's argmax variant (arXiv 2205.07433, official
    ``MetaConv_v3``).

    A classifier f: R -> R^2 (one linear layer ``w0`` of shape (1, 2) by default, as v3; or
    1 -> hidden -> 2 with ``hidden > 0``) decides the sign:
    forward  q(x) = +1 if f_1(x) > f_0(x), -1 if f_1(x) < f_0(x), ``tie`` if equal
             (torch's argmax takes the first index on ties: ``tie=-1`` for parity).
    backward the gradient of s(x; theta) = 2 (f_0(x) + f_1(x)) to x and theta: the official
             ArgmaxWithGradient copies g to both logits and 2 idx - 1 multiplies it by 2.
    """
    return _argmax_sign(hp.activation, hp.tie, theta, x)


def classifier_init(hp: ClassifierHparams, key: Array) -> Theta:
    return _torch_linear_init(key, (1, 2) if hp.hidden == 0 else (1, hp.hidden, 2), hp.bias)


register("mlp", MlpHparams, mlp, mlp_init)
register("linear", LinearHparams, linear, linear_init)
# classifier's forward is the argmax of a learned function, not sign(x): not bit-packable.
register("classifier", ClassifierHparams, classifier, classifier_init, sign_forward=False)
