"""Sign functions with surrogate gradients: the estimator zoo.

Every estimator has one signature,

    est = get(name, **hparams)        # unknown name or hparam -> ValueError naming the valid ones
    theta = est.init(key)             # {} for parameter-free estimators
    y = est(theta, x, progress=None)  # forward: exactly +-1; jax.grad gives the surrogate

so binary layers never need to know which estimator they use. Each estimator is one pure
function below, whose docstring holds its forward and backward formula and its source. The
forward pass is always a hard +-1 (``sign(0)`` is ``zero``, +1 by default so a binary network
stays binary; ``zero=0`` reproduces ``torch.sign``/``jnp.sign``). The backward pass is written as
a ``jax.custom_vjp`` whose derivative is the formula, so the forward never evaluates a soft
function and the gradient is exactly the documented one.

Scheduled hyper-parameters (EDE t and k, FDA n, ReSTE o) follow their papers' schedules when
``progress`` in [0, 1] (fraction of training done, may be a traced scalar) is given, and use the
fixed values from ``get()`` otherwise.

Learnable estimators (``mlp``, ``linear``, ``classifier``) carry their parameters in ``theta`` and
receive cotangents for it, so the task loss trains them, as in BBC (He et al., arXiv 2205.07433).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Theta = dict[str, Array]

_F32 = jnp.float32
# The estimator's float32 matmuls at full precision: GPUs otherwise run float32 dots in TF32
# (10-bit mantissa), which puts ~1e-3 relative error into theta's gradient sums.
_HIGHEST = jax.lax.Precision.HIGHEST


def _mm(a: Array, b: Array) -> Array:
    return jnp.matmul(a, b, precision=_HIGHEST)


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
    d = derivative(x.astype(jnp.promote_types(x.dtype, _F32)), **hp)  # float32 even under bf16; f64 stays
    return g * d.astype(g.dtype), jax.tree.map(jnp.zeros_like, hp)


_sign_surrogate.defvjp(_sign_surrogate_fwd, _sign_surrogate_bwd)


def _surrogate(derivative: Callable[..., Array], x: Array, zero: float, **hp: Any) -> Array:
    hp = {k: jnp.asarray(v, _F32) for k, v in hp.items()}
    return _sign_surrogate(derivative, float(zero), x, hp)


def _check_no_theta(name: str, theta: Any) -> None:
    if theta:
        raise ValueError(f"estimator {name!r} has no parameters; pass theta={{}}, got keys {sorted(theta)}")


# --------------------------------------------------------------------------------------------
# Parameter-free estimators.


def _ste_derivative(x, clip, inclusive, unclipped):
    inside = jnp.where(inclusive > 0, jnp.abs(x) <= clip, jnp.abs(x) < clip)
    return jnp.where(unclipped > 0, jnp.ones_like(x), inside.astype(x.dtype))


def ste(theta: Theta, x: Array, progress: Array | float | None = None, *,
        clip: float | None = 1.0, inclusive: bool = True, zero: float = 1.0) -> Array:
    """Straight-through estimator, clipped identity (Hubara et al. 2016; larq ``ste_sign``).

    forward  q(x) = sign(x)
    backward dq/dx = 1[|x| <= clip]   (``inclusive=True``, larq)
             dq/dx = 1[|x| <  clip]   (``inclusive=False``, BBC/Bi-Real ``BinActive``)
             dq/dx = 1                (``clip=None``, unclipped identity)
    """
    _check_no_theta("ste", theta)
    return _surrogate(_ste_derivative, x, zero, clip=1.0 if clip is None else clip,
                      inclusive=float(inclusive), unclipped=float(clip is None))


def _approx_sign_derivative(x):
    return jnp.maximum(2.0 - 2.0 * jnp.abs(x), 0.0)


def approx_sign(theta: Theta, x: Array, progress: Array | float | None = None, *,
                zero: float = 1.0) -> Array:
    """ApproxSign, the Bi-Real Net polynomial (Liu et al. 2018; ReActNet, BBC activations).

    forward  q(x) = sign(x)
    backward dq/dx = 2 + 2x on [-1, 0),  2 - 2x on [0, 1),  0 elsewhere  (= max(0, 2 - 2|x|)),
             the derivative of F(x) = -1 (x < -1), x^2 + 2x (x < 0), -x^2 + 2x (x < 1), 1 (x >= 1).
    """
    _check_no_theta("approx_sign", theta)
    return _surrogate(_approx_sign_derivative, x, zero)


def _swish_sign_derivative(x, beta):
    bx = beta * x
    # cosh overflows to inf for |beta x| > ~89, where the true derivative underflows to 0 anyway.
    return beta * (2.0 - bx * jnp.tanh(bx / 2.0)) / (1.0 + jnp.cosh(bx))


def swish_sign(theta: Theta, x: Array, progress: Array | float | None = None, *,
               beta: float = 5.0, zero: float = 1.0) -> Array:
    """SwishSign (BNN+, Darabi et al. 2018; larq ``swish_sign``).

    forward  q(x) = sign(x)
    backward dq/dx = beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x)),
             the derivative of 2 sigmoid(beta x) (1 + beta x (1 - sigmoid(beta x))) - 1.
    """
    _check_no_theta("swish_sign", theta)
    return _surrogate(_swish_sign_derivative, x, zero, beta=beta)


def _tanh_derivative(x, beta, k):
    return k * beta * (1.0 - jnp.tanh(beta * x) ** 2)


def tanh(theta: Theta, x: Array, progress: Array | float | None = None, *,
         beta: float = 1.0, zero: float = 1.0) -> Array:
    """Generic tanh soft sign.

    forward  q(x) = sign(x)
    backward dq/dx = beta (1 - tanh^2(beta x)), the derivative of tanh(beta x).
    """
    _check_no_theta("tanh", theta)
    return _surrogate(_tanh_derivative, x, zero, beta=beta, k=1.0)


def ede_schedule(progress: Array | float, t_min: float, t_max: float) -> tuple[Array, Array]:
    """IR-Net's EDE schedule: t = 10^(log10 t_min + (log10 t_max - log10 t_min) p), k = max(1/t, 1)."""
    lo, hi = math.log10(t_min), math.log10(t_max)
    t = 10.0 ** (lo + (hi - lo) * jnp.asarray(progress, _F32))
    return t, jnp.maximum(1.0 / t, 1.0)


def ede(theta: Theta, x: Array, progress: Array | float | None = None, *,
        t: float = 0.1, k: float = 10.0, t_min: float = 1e-3, t_max: float = 10.0,
        zero: float = 1.0) -> Array:
    """Error Decay Estimator (IR-Net, Qin et al. CVPR 2020, ``binaryfunction.py``).

    forward  q(x) = sign(x)
    backward dq/dx = k t (1 - tanh^2(t x)), the derivative of k tanh(t x).
    Fixed (no progress): t=0.1, k=10, the initial values of IR-Net's layers.
    Scheduled: t = 10^(log10 t_min + (log10 t_max - log10 t_min) progress), k = max(1/t, 1),
    with IR-Net's code values t_min=1e-3, t_max=10 (the paper text is said to use 0.1).
    """
    _check_no_theta("ede", theta)
    if progress is not None:
        t, k = ede_schedule(progress, t_min, t_max)
    return _surrogate(_tanh_derivative, x, zero, beta=t, k=k)


def _fda_derivative(x, n, omega, n_max):
    # Terms i = 0..n with a traced n: sum the static maximum and mask (no dynamic shapes).
    total = jnp.zeros_like(x)
    for i in range(int(n_max) + 1):
        total = total + jnp.where(i <= n, jnp.cos((2 * i + 1) * omega * x), 0.0)
    return jnp.where(jnp.abs(x) <= 1.0, 4.0 * omega / math.pi * total, 0.0)


def fda_schedule(progress: Array | float, n: int, n_end: int) -> Array:
    """FDA's term schedule: n(p) = n + floor((n_end - n) p)."""
    return n + jnp.floor((n_end - n) * jnp.asarray(progress, _F32))


def fda(theta: Theta, x: Array, progress: Array | float | None = None, *,
        n: int = 9, n_end: int = 18, omega: float = 0.1, zero: float = 1.0) -> Array:
    """Fourier-series derivative approximation (FDA, Xu et al. NeurIPS 2021; BiBench ``fda.py``).

    forward  q(x) = sign(x)
    backward dq/dx = (4 omega / pi) sum_{i=0..n} cos((2i + 1) omega x) for |x| <= 1, else 0,
             the derivative of the truncated Fourier series of the square wave,
             (4 / pi) sum_i sin((2i + 1) omega x) / (2i + 1).
    Scheduled: n(p) = n + floor((n_end - n) p), 9 -> 18 as in BiBench. FDA's learnable
    noise-adaptation module is a separate network and is not part of this estimator.
    """
    _check_no_theta("fda", theta)
    n_now = n if progress is None else fda_schedule(progress, n, n_end)
    return _surrogate(_fda_derivative_for(max(n, n_end)), x, zero, n=n_now, omega=omega)


@functools.cache
def _fda_derivative_for(n_max: int) -> Callable[..., Array]:
    # One derivative object per static n_max: custom_vjp's static argument must hash stably.
    return functools.partial(_fda_derivative, n_max=n_max)


def _reste_derivative(x, o, t):
    a = jnp.abs(x)
    power = (1.0 / o) * jnp.maximum(a, 0.1) ** ((1.0 - o) / o)
    secant = 0.1 ** (1.0 / o) / 0.1
    return jnp.where(a <= 0.1, secant, jnp.where(a <= t, power, 0.0))


def reste_schedule(progress: Array | float, o: float) -> Array:
    """ReSTE's schedule: o(p) = 1 + (1 - cos(pi p / 2)) (o - 1), from 1 to o."""
    return 1.0 + (1.0 - jnp.cos(math.pi / 2.0 * jnp.asarray(progress, _F32))) * (o - 1.0)


def reste(theta: Theta, x: Array, progress: Array | float | None = None, *,
          o: float = 3.0, t: float = 1.5, zero: float = 1.0) -> Array:
    """Rectified straight-through estimator (ReSTE, Wu et al. ICCV 2023, ``binarized_modules.py``).

    forward  q(x) = sign(x)
    backward dq/dx = (1/o) |x|^((1 - o)/o)   for 0.1 < |x| <= t
             dq/dx = 0.1^(1/o) / 0.1         for |x| <= 0.1 (secant of the power near 0)
             dq/dx = 0                       for |x| > t
             the derivative of sign(x) |x|^(1/o) (linear inside |x| <= 0.1).
    Scheduled: o(p) = 1 + (1 - cos(pi p / 2)) (o - 1), from the identity (o=1) to ``o``.
    """
    _check_no_theta("reste", theta)
    o_now = o if progress is None else reste_schedule(progress, o)
    return _surrogate(_reste_derivative, x, zero, o=o_now, t=t)


# --------------------------------------------------------------------------------------------
# Learnable estimators: a small element-wise MLP f: R -> R^K with parameters theta.

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "identity": lambda h: h,
}


def mlp_apply(theta: Theta, x: Array, activation: str) -> Array:
    """f(x) for every element: x of shape S -> S + (K,); layers w0, w1, ... (bias b_i if present)."""
    h = x[..., None]
    depth = sum(1 for k in theta if k.startswith("w"))
    for i in range(depth):
        h = _mm(h, theta[f"w{i}"])
        if f"b{i}" in theta:
            h = h + theta[f"b{i}"]
        if i < depth - 1:
            h = _ACTIVATIONS[activation](h)
    return h


def _torch_linear_init(key: Array, sizes: tuple[int, ...], bias: bool) -> Theta:
    """PyTorch ``nn.Linear`` default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    theta = {}
    keys = jax.random.split(key, 2 * (len(sizes) - 1))
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        bound = 1.0 / math.sqrt(fan_in)
        theta[f"w{i}"] = jax.random.uniform(keys[2 * i], (fan_in, fan_out), _F32, -bound, bound)
        if bias:
            theta[f"b{i}"] = jax.random.uniform(keys[2 * i + 1], (fan_out,), _F32, -bound, bound)
    return theta


def slope_at_zero(theta: Theta, activation: str = "tanh") -> Array:
    """d/dx sum_k f_k(x) at x = 0 (ignoring the gate): the MLP's effective STE slope there."""
    return jax.grad(lambda x: mlp_apply(theta, x, activation).sum())(jnp.zeros((), _F32))


def _gated_mlp_vjp(theta: Theta, x: Array, g: Array, activation: str) -> tuple[Theta, Array]:
    """Cotangents of s(x; theta) = sum_k clip(f_k(x), -1, 1) for flat float32 x and g, by autodiff
    of ``mlp_apply`` (the plain form: it materialises the (n, hidden) layer and its cotangent)."""
    f, vjp = jax.vjp(lambda th, v: mlp_apply(th, v, activation), theta, x)
    # Strict gate as in the official GatedLinear: the derivative of clip(f_k, -1, 1).
    return vjp(g[..., None] * (jnp.abs(f) < 1.0).astype(f.dtype))


def _is_two_layer(theta: Theta) -> bool:
    return set(theta) <= {"w0", "w1", "b0", "b1"} and "w0" in theta and "w1" in theta \
        and theta["w0"].shape[0] == 1


def _gated_mlp_vjp_direct(theta: Theta, x: Array, g: Array, activation: str,
                          matmul: bool = True) -> tuple[Theta, Array]:
    """The same cotangents as ``_gated_mlp_vjp``, written out for f = W1^T act(W0^T x + b0) + b1.

    With the hidden layer laid out (hidden, n) (n contiguous), h = act(pre), d = act'(pre),
    G_k = g 1[|f_k| < 1] and V = W0^T * W1 (hidden, K):
      dx       = sum_k G_k sum_j V[j,k] d_j          (per-element reductions over j)
      dW1      = h G^T                               (reductions over the elements)
      dW0[j]   = sum_k W1[j,k] (d (x G)^T)[j,k],  db0[j] = sum_k W1[j,k] (d G^T)[j,k],  db1 = sum G
    so only h and d exist at (hidden, n); the (n, hidden) cotangents of autodiff do not.
    matmul=True computes the reductions over the elements as matmuls (fastest on CPU), False as
    broadcast products summed over n, which XLA fuses with act into reduction kernels that
    recompute h and d instead of storing them (GPU/TPU). For the identity activation everything
    is O(n K): f_k = c_k x + e_k with c = W0 W1, e = b0 W1 + b1.
    """
    w0, w1 = theta["w0"][0], theta["w1"]                          # (H,), (H, K)
    b0, b1 = theta.get("b0"), theta.get("b1")
    v = w0[:, None] * w1                                          # (H, K)
    if activation == "identity":
        e = jnp.zeros(w1.shape[1], x.dtype) if b0 is None else _mm(b0, w1)
        e = e if b1 is None else e + b1
        f = jnp.sum(v, 0)[:, None] * x[None, :] + e[:, None]      # (K, n)
        G = g[None, :] * (jnp.abs(f) < 1.0).astype(f.dtype)
        sg, sxg = jnp.sum(G, 1), _mm(G, x)                        # (K,), (K,)
        dx = _mm(jnp.sum(v, 0), G)
        out = {"w0": _mm(w1, sxg)[None], "w1": w0[:, None] * sxg[None] + (0.0 if b0 is None else b0[:, None] * sg)}
        if b0 is not None:
            out["b0"] = _mm(w1, sg)
        if b1 is not None:
            out["b1"] = sg
        return out, dx
    pre = w0[:, None] * x[None, :]                                # (H, n)
    if b0 is not None:
        pre = pre + b0[:, None]
    if activation == "tanh":
        h = jnp.tanh(pre)
        d = 1.0 - h * h
    elif activation == "relu":
        h = jax.nn.relu(pre)
        d = (pre > 0).astype(pre.dtype)
    else:
        raise ValueError(f"unknown activation {activation!r}")
    f = jnp.sum(w1[:, :, None] * h[:, None, :], 0)                # (K, n)
    if b1 is not None:
        f = f + b1[:, None]
    G = g[None, :] * (jnp.abs(f) < 1.0).astype(f.dtype)              # (K, n)
    dx = jnp.sum(G * jnp.sum(v[:, :, None] * d[:, None, :], 0), 0)
    k = w1.shape[1]
    xg = x[None, :] * G
    z = xg if b0 is None else jnp.concatenate([xg, G], 0)           # (K, n), or (2K, n) with b0
    if matmul:
        m, dw1 = _mm(d, z.T), _mm(h, G.T)                          # (H, K or 2K), (H, K)
    else:
        m, dw1 = jnp.sum(d[:, None, :] * z[None], -1), jnp.sum(h[:, None, :] * G[None], -1)
    out = {"w0": jnp.sum(w1 * m[:, :k], 1)[None], "w1": dw1}
    if b0 is not None:
        out["b0"] = jnp.sum(w1 * m[:, k:], 1)
    if b1 is not None:
        out["b1"] = jnp.sum(G, 1)
    return out, dx


BACKWARD_FORMS = ("matmul", "reduce", "autodiff")


def default_backward(backend: str | None = None) -> str:
    """The MLP backward's form for ``backward='auto'``: ``matmul`` on CPU, ``reduce`` on GPU and
    TPU (measured on CPU and an H200; the TPU choice follows the GPU's, unmeasured)."""
    return "matmul" if (backend or jax.default_backend()) == "cpu" else "reduce"


def gated_mlp_vjp(theta: Theta, x: Array, g: Array, activation: str,
                  form: str = "matmul") -> tuple[Theta, Array]:
    """Cotangents (to theta and x) of s(x; theta) = sum_k clip(f_k(x), -1, 1) times g, for flat
    float32 x and g. form: ``matmul`` or ``reduce`` (``_gated_mlp_vjp_direct``, the two-layer MLP;
    deeper MLPs fall back to autodiff) or ``autodiff`` (``_gated_mlp_vjp``)."""
    if form not in BACKWARD_FORMS:
        raise ValueError(f"backward form must be one of {BACKWARD_FORMS}, got {form!r}")
    if form != "autodiff" and _is_two_layer(theta) and activation in _ACTIVATIONS:
        return _gated_mlp_vjp_direct(theta, x, g, activation, matmul=form == "matmul")
    return _gated_mlp_vjp(theta, x, g, activation)


# Elements per step of the MLP backward's scan when ``chunk=0`` (the default), by backend. On
# CPU a chunk's (hidden, chunk) layers stay in cache: 8192 measured fastest (bench/train_step.py).
# On an H200, 65536 (26 MB of hidden layer, inside its 60 MB L2) measured fastest with the
# ``reduce`` form: 10.4 ms for bireal_resnet18's 11M weights against 11.1 ms at 2^20 and 11.3 ms
# at 2^22 (bench/results/gpu/), and it bounds the scratch memory.
CPU_CHUNK = 8192
GPU_CHUNK = 65536


def default_chunk(backend: str | None = None) -> int:
    """The MLP backward's chunk for ``chunk=0``: CPU_CHUNK on CPU, GPU_CHUNK on GPU and TPU (TPU
    unmeasured)."""
    return CPU_CHUNK if (backend or jax.default_backend()) == "cpu" else GPU_CHUNK


def chunked_vjp(vjp_fn: Callable[[Theta, Array, Array], tuple[Theta, Array]], theta: Theta,
                x: Array, g: Array, chunk: int) -> tuple[Theta, Array]:
    """Runs an element-wise estimator's backward over ``chunk`` elements at a time.

    The MLP's hidden layer then exists for one chunk only (``chunk * hidden`` floats) instead of
    for the whole tensor; theta's cotangents are summed over chunks, x's are concatenated.
    Padding elements carry g = 0 and so contribute nothing. ``chunk=0``: ``default_chunk()``.
    """
    chunk = chunk or default_chunk()
    shape, dtype = x.shape, x.dtype
    # float32 whatever the compute dtype (bf16 included); float64 stays float64 (parity tests).
    work = jnp.promote_types(x.dtype, _F32)
    xf, gf = x.reshape(-1).astype(work), g.reshape(-1).astype(work)
    n = xf.shape[0]
    if n <= chunk:
        dtheta, dx = vjp_fn(theta, xf, gf)
        return dtheta, dx.reshape(shape).astype(dtype)
    pad = -n % chunk
    xs = jnp.pad(xf, (0, pad)).reshape(-1, chunk)
    gs = jnp.pad(gf, (0, pad)).reshape(-1, chunk)

    def body(acc, xg):
        dtheta, dx = vjp_fn(theta, *xg)
        return jax.tree.map(jnp.add, acc, dtheta), dx

    dtheta, dx = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, theta), (xs, gs))
    return dtheta, dx.reshape(-1)[:n].reshape(shape).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _gated_mlp_sign(activation: str, zero: float, chunk: int, backward: str, theta: Theta, x: Array) -> Array:
    return sign(x, zero)


def _gated_mlp_sign_fwd(activation, zero, chunk, backward, theta, x):
    return sign(x, zero), (theta, x)


def _gated_mlp_sign_bwd(activation, zero, chunk, backward, res, g):
    theta, x = res
    form = default_backward() if backward == "auto" else backward  # resolved when traced
    vjp_fn = functools.partial(gated_mlp_vjp, activation=activation, form=form)
    return chunked_vjp(vjp_fn, theta, x, g, chunk)


_gated_mlp_sign.defvjp(_gated_mlp_sign_fwd, _gated_mlp_sign_bwd)


def mlp(theta: Theta, x: Array, progress: Array | float | None = None, *,
        hidden: int = 100, outputs: int = 2, activation: str = "tanh", bias: bool = False,
        init: str = "torch", zero: float = 1.0, chunk: int = 0, backward: str = "auto") -> Array:
    """BBC's learnable MLP estimator (He et al. 2022, official ``MetaConv_v2``).

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
    The backward is computed in closed form (``gated_mlp_vjp``: hidden layer laid out (hidden, n),
    theta's cotangents as reductions over the elements), equal to autodiff of s up to float rounding.
    chunk: elements per step of the backward scan (memory/speed only; see ``chunked_vjp``);
    0 picks it by backend when traced (``default_chunk``: 8192 on CPU, 65536 on GPU/TPU).
    backward: how the closed form is computed, ``matmul``, ``reduce`` or ``autodiff`` (see
    ``gated_mlp_vjp``; same values up to float rounding); ``auto`` picks by backend when traced
    (``default_backward``: matmul on CPU, reduce on GPU/TPU; measured fastest on CPU and on an
    H200, bench/train_step.py; TPUs take the GPU choice, not measured there).
    """
    return _gated_mlp_sign(activation, float(zero), int(chunk), backward, theta, x)


def _mlp_init(key: Array, *, hidden: int, outputs: int, bias: bool, init: str,
              activation: str = "tanh") -> Theta:
    theta = _torch_linear_init(key, (1, hidden, outputs), bias)
    if init == "positive":
        flip = jnp.where(slope_at_zero(theta, activation) < 0, -1.0, 1.0)
        theta["w1"] = theta["w1"] * flip
        if bias:
            theta["b1"] = theta["b1"] * flip
    return theta


def linear(theta: Theta, x: Array, progress: Array | float | None = None, *,
           hidden: int = 100, outputs: int = 2, bias: bool = False, init: str = "torch",
           zero: float = 1.0, chunk: int = 0, backward: str = "auto") -> Array:
    """The linear special case of BBC's MLP (``MetaConv_v2`` with no nonlinearity).

    f(x) = W1^T W0^T x, so f_k(x) = c_k x with c = W0 W1 (plus biases if ``bias``).
    forward  q(x) = sign(x)
    backward dq/dx = sum_k c_k 1[|c_k x| < 1]: a learnable-slope, learnable-clip-range STE;
             theta receives the gradient of s(x; theta) = sum_k clip(c_k x, -1, 1).
    """
    return _gated_mlp_sign("identity", float(zero), int(chunk), backward, theta, x)


def _linear_init(key: Array, *, hidden: int, outputs: int, bias: bool, init: str) -> Theta:
    return _mlp_init(key, hidden=hidden, outputs=outputs, bias=bias, init=init, activation="identity")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _argmax_sign(activation: str, tie: float, theta: Theta, x: Array) -> Array:
    f = mlp_apply(theta, x.astype(_F32), activation)
    one = jnp.ones((), x.dtype)
    d = f[..., 1] - f[..., 0]
    return jnp.where(d > 0, one, jnp.where(d < 0, -one, jnp.asarray(tie, x.dtype)))


def _argmax_sign_fwd(activation, tie, theta, x):
    return _argmax_sign(activation, tie, theta, x), (theta, x)


def _argmax_sign_bwd(activation, tie, res, g):
    theta, x = res
    _, vjp = jax.vjp(lambda th, v: mlp_apply(th, v, activation), theta, x.astype(_F32))
    # ArgmaxWithGradient copies g to both logits; the map idx -> 2 idx - 1 contributes the 2.
    dtheta, dx = vjp(jnp.broadcast_to(2.0 * g.astype(_F32)[..., None], x.shape + (2,)))
    return dtheta, dx.astype(x.dtype)


_argmax_sign.defvjp(_argmax_sign_fwd, _argmax_sign_bwd)


def classifier(theta: Theta, x: Array, progress: Array | float | None = None, *,
               hidden: int = 0, activation: str = "identity", bias: bool = False,
               tie: float = 1.0) -> Array:
    """Binarization as classification: the argmax variant (official ``MetaConv_v3``).

    A classifier f: R -> R^2 (one linear layer ``w0`` of shape (1, 2) by default, as v3; or
    1 -> hidden -> 2 with ``hidden > 0``) decides the sign:
    forward  q(x) = +1 if f_1(x) > f_0(x), -1 if f_1(x) < f_0(x), ``tie`` if equal
             (torch's argmax takes the first index on ties: ``tie=-1`` for parity).
    backward the gradient of s(x; theta) = 2 (f_0(x) + f_1(x)) to x and theta: the official
             ArgmaxWithGradient copies g to both logits and 2 idx - 1 multiplies it by 2.
    """
    return _argmax_sign(activation, float(tie), theta, x)


def _classifier_init(key: Array, *, hidden: int, bias: bool, activation: str = "identity") -> Theta:
    sizes = (1, 2) if hidden == 0 else (1, hidden, 2)
    return _torch_linear_init(key, sizes, bias)


# --------------------------------------------------------------------------------------------
# Registry and the Estimator object.


@dataclasses.dataclass(frozen=True)
class _Spec:
    fn: Callable[..., Array]
    init: Callable[..., Theta] | None  # None: parameter-free
    check: Callable[[dict], None]


def _positive(*names: str) -> Callable[[dict], None]:
    def check(hp: dict) -> None:
        for n in names:
            if hp[n] is not None and not hp[n] > 0:
                raise ValueError(f"hparam {n!r} must be > 0, got {hp[n]!r}")
    return check


def _check_zero(hp: dict) -> None:
    if hp.get("zero", 0.0) not in (-1.0, 0.0, 1.0):
        raise ValueError(f"hparam 'zero' (the value of sign(0)) must be -1, 0 or +1, got {hp['zero']!r}")


def _check_mlp(hp: dict) -> None:
    if int(hp.get("hidden", 1)) != hp.get("hidden", 1) or hp.get("hidden", 1) < 0:
        raise ValueError(f"hparam 'hidden' must be a non-negative int, got {hp['hidden']!r}")
    if "outputs" in hp and (int(hp["outputs"]) != hp["outputs"] or hp["outputs"] < 1):
        raise ValueError(f"hparam 'outputs' must be a positive int, got {hp['outputs']!r}")
    if hp.get("activation", "tanh") not in _ACTIVATIONS:
        raise ValueError(f"hparam 'activation' must be one of {sorted(_ACTIVATIONS)}, "
                         f"got {hp['activation']!r}")
    if hp.get("init", "torch") not in ("torch", "positive"):
        raise ValueError(f"hparam 'init' must be 'torch' or 'positive', got {hp['init']!r}")
    if "tie" in hp and hp["tie"] not in (-1.0, 1.0):
        raise ValueError(f"hparam 'tie' must be -1 or +1, got {hp['tie']!r}")


def _all(*checks: Callable[[dict], None]) -> Callable[[dict], None]:
    def check(hp: dict) -> None:
        for c in checks:
            c(hp)
    return check


def _check_mlp_hidden(hp: dict) -> None:
    _check_mlp(hp)
    if hp["hidden"] < 1:
        raise ValueError(f"hparam 'hidden' must be >= 1, got {hp['hidden']!r}")


def _check_ints(*names: str) -> Callable[[dict], None]:
    def check(hp: dict) -> None:
        for n in names:
            if int(hp[n]) != hp[n] or hp[n] < 0:
                raise ValueError(f"hparam {n!r} must be a non-negative int, got {hp[n]!r}")
    return check


def _check_backward(hp: dict) -> None:
    if hp["backward"] not in ("auto",) + BACKWARD_FORMS:
        raise ValueError(f"hparam 'backward' must be one of {('auto',) + BACKWARD_FORMS}, got {hp['backward']!r}")


_check_learnable = _all(_check_zero, _check_mlp_hidden, _check_ints("chunk"), _check_backward)

_REGISTRY: dict[str, _Spec] = {
    "ste": _Spec(ste, None, _all(_check_zero, _positive("clip"))),
    "approx_sign": _Spec(approx_sign, None, _check_zero),
    "swish_sign": _Spec(swish_sign, None, _all(_check_zero, _positive("beta"))),
    "tanh": _Spec(tanh, None, _all(_check_zero, _positive("beta"))),
    "ede": _Spec(ede, None, _all(_check_zero, _positive("t", "k", "t_min", "t_max"))),
    "fda": _Spec(fda, None, _all(_check_zero, _positive("omega"), _check_ints("n", "n_end"))),
    "reste": _Spec(reste, None, _all(_check_zero, _positive("o", "t"))),
    "mlp": _Spec(mlp, _mlp_init, _check_learnable),
    "linear": _Spec(linear, _linear_init, _check_learnable),
    "classifier": _Spec(classifier, _classifier_init, _check_mlp),
}


def names() -> list[str]:
    """The registered estimator names."""
    return sorted(_REGISTRY)


def _defaults(fn: Callable[..., Array]) -> dict[str, Any]:
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


@dataclasses.dataclass(frozen=True)
class Estimator:
    """A named estimator with bound hyper-parameters; hashable, so usable as a static argument."""

    name: str
    hparams: tuple[tuple[str, Any], ...]

    @property
    def spec(self) -> _Spec:
        return _REGISTRY[self.name]

    @property
    def learnable(self) -> bool:
        return self.spec.init is not None

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.hparams)

    def init(self, key: Array) -> Theta:
        """Initial theta ({} for parameter-free estimators)."""
        if self.spec.init is None:
            return {}
        wanted = inspect.signature(self.spec.init).parameters
        return self.spec.init(key, **{k: v for k, v in self.hparams if k in wanted})

    @functools.cached_property
    def theta_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = jax.eval_shape(self.init, jax.random.key(0))
        return {k: tuple(v.shape) for k, v in shapes.items()}

    def __call__(self, theta: Theta | None, x: Array, progress: Array | float | None = None) -> Array:
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"estimator {self.name!r} needs a floating-point input, got {x.dtype}")
        theta = {} if theta is None else theta
        if self.learnable:
            got = {k: tuple(jnp.shape(v)) for k, v in theta.items()}
            if got != self.theta_shapes:
                raise ValueError(f"estimator {self.name!r} expects theta with shapes "
                                 f"{self.theta_shapes}, got {got}")
        return self.spec.fn(theta, x, progress, **self.kwargs)

    def derivative(self, theta: Theta | None, x: Array, progress: Array | float | None = None) -> Array:
        """The surrogate derivative dq/dx, element-wise (the backward pass with g = 1)."""
        x = jnp.asarray(x, _F32)
        _, vjp = jax.vjp(lambda v: self(theta, v, progress), x)
        return vjp(jnp.ones_like(x))[0]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams)
        return f"Estimator({self.name}{', ' if args else ''}{args})"


def get(name: str, **hparams: Any) -> Estimator:
    """The estimator ``name`` with ``hparams`` overriding its defaults.

    Raises ValueError naming the valid names, or the valid hparams of ``name``.
    """
    if isinstance(name, Estimator):
        return name if not hparams else get(name.name, **{**name.kwargs, **hparams})
    if name not in _REGISTRY:
        raise ValueError(f"unknown estimator {name!r}; valid names: {', '.join(names())}")
    spec = _REGISTRY[name]
    defaults = _defaults(spec.fn)
    unknown = sorted(set(hparams) - set(defaults))
    if unknown:
        raise ValueError(f"unknown hparam(s) {unknown} for estimator {name!r}; "
                         f"valid: {', '.join(sorted(defaults))}")
    hp = {**defaults, **hparams}
    for k, v in hp.items():  # floats as floats so that equal settings hash equal
        if isinstance(v, int) and not isinstance(v, bool) and isinstance(defaults[k], float):
            hp[k] = float(v)
    spec.check(hp)
    return Estimator(name, tuple(sorted(hp.items())))


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
