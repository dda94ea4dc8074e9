"""BBC's gated-MLP backward as one fused Pallas kernel: Triton on GPUs, interpret mode elsewhere.

BBC (He et al., arXiv 2205.07433) differentiates sign(x) as s(x; theta) = sum_k clip(f_k(x), -1, 1)
with f(x) = W1^T act(W0^T x + b0) + b1 applied to every element. ``mlp_backward`` computes its
backward with XLA ops; on an H200 the best of those (``reduce``) took 10.4 ms over 11.0M weights
(``bench/results/gpu/``), against ~0.4 ms of arithmetic: XLA splits it into several reduction
kernels that each recompute or re-read the hidden layer. Here it is one pass over the elements:

- the grid runs over chunks of ``chunk`` elements; a program walks its chunk ``sub`` elements at
  a time, with the (sub, hidden) tile of pre-activations, act and act' in registers (tanh computed
  there, never stored: the hidden layer is never materialised in memory);
- it writes the cotangent to x of its elements, and one row per theta cotangent of partial sums
  over its chunk (float32 accumulators carried through the loop, with Kahan's compensation);
- the partial sums of all programs are reduced in float32 by a fixed pairwise tree (``tree_sum``:
  elementwise adds of halves), so theta's gradient is bitwise the same on every run.

The ``linear`` estimator (identity activation, f_k = c_k x + e_k) has no hidden layer: its kernel
carries the two sums per output (sum x G_k, sum G_k) from which theta's cotangents follow in
O(hidden K). Selected with ``backward='pallas'`` on ``mlp``/``linear``; ``backward='auto'`` does
not pick it (unmeasured on a GPU so far). Off the GPU it runs in Pallas interpret mode, which
checks the kernel's logic (tests) but is slow: use it on a GPU only.

Formulas (G_k = g 1[|f_k| < 1], the strict gate of the official ``GatedLinear``;
Wg[n, j] = sum_k G_k[n] W1[j, k]; dW = act'(pre) Wg):
  dx = sum_j dW[:, j] W0[j],  dW0[j] = sum_n x dW[n, j],  db0[j] = sum_n dW[n, j],
  dW1[j, k] = sum_n act(pre)[n, j] G_k[n],  db1[k] = sum_n G_k[n].
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from mlpbnn.estimators.base import F32, Array, Theta
from mlpbnn.estimators.mlp_backward import _is_two_layer, chunked_vjp, gated_mlp_vjp

# Elements per inner step (a (SUB, hidden) tile per program) and per program (its partial sums
# are one row each). Both powers of two, as Triton's block shapes must be. Untuned: the defaults a
# GPU session should start from (bench/train_step.py --only-estimator --forms pallas).
SUB = 32
LINEAR_SUB = 1024
CHUNK = 8192
NUM_WARPS = 4


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def tree_sum(parts: Array) -> Array:
    """Sum over axis 0 by a fixed pairwise tree (pad to a power of two, add the two halves,
    repeat): the order of the float additions does not depend on the backend's reduction
    strategy, so the result is the same on every run."""
    n = parts.shape[0]
    m = _pow2(n)
    if m != n:
        parts = jnp.concatenate([parts, jnp.zeros((m - n, *parts.shape[1:]), parts.dtype)])
    while parts.shape[0] > 1:
        half = parts.shape[0] // 2
        parts = parts[:half] + parts[half:]
    return parts[0]


def _activation(pre: Array, activation: str) -> tuple[Array, Array]:
    """(act(pre), act'(pre)) in registers."""
    if activation == "tanh":
        h = jnp.tanh(pre)
        return h, 1.0 - h * h
    if activation == "relu":
        pos = pre > 0
        return jnp.where(pos, pre, 0.0), jnp.where(pos, 1.0, 0.0).astype(pre.dtype)
    raise ValueError(f"the Pallas MLP kernel supports activations 'tanh' and 'relu', got {activation!r}")


def _kahan(acc: tuple[Array, Array], term: Array) -> tuple[Array, Array]:
    """acc + term with Kahan's compensation (Kahan 1965): the (sum, lost low bits) pair keeps a
    chunk's running float32 sum accurate to a few ulp whatever the number of steps, where theta's
    cotangents cancel (x and g take both signs) and a plain running sum loses digits."""
    total, comp = acc
    y = term - comp
    t = total + y
    return t, (t - total) - y


def _mlp_kernel(x_ref, g_ref, w0_ref, w1t_ref, b0_ref, b1_ref, dx_ref, part_ref, *, activation: str, outputs: int,
                sub: int, bias0: bool, bias1: bool):
    """One program: ``chunk`` elements, ``sub`` at a time. part_ref (rows, hidden): rows 0..K-1 the
    partial dW1^T, K dW0, K+1 db0, K+2 db1 (in lanes 0..K-1), the rest zero."""
    chunk = x_ref.shape[0]
    hp = w0_ref.shape[0]
    dtype = x_ref.dtype
    w0 = w0_ref[...]
    w1 = [w1t_ref[k, :] for k in range(outputs)]          # W1[:, k] as (hidden,) rows
    b0 = b0_ref[...] if bias0 else None
    b1 = [b1_ref[k] for k in range(outputs)] if bias1 else None

    def body(i, carry):
        acc_w1, acc_w0, acc_b0, acc_b1 = carry            # Kahan (sum, compensation) pairs
        at = pl.ds(pl.multiple_of(i * sub, sub), sub)
        x, g = x_ref[at], g_ref[at]
        pre = x[:, None] * w0[None, :]
        if bias0:
            pre = pre + b0[None, :]
        h, d = _activation(pre, activation)
        wg = jnp.zeros_like(pre)
        new_w1, new_b1 = [], []
        for k in range(outputs):
            f = jnp.sum(h * w1[k][None, :], axis=1)
            if bias1:
                f = f + b1[k]
            gk = jnp.where(jnp.abs(f) < 1.0, g, 0.0)        # the strict gate of clip(f_k, -1, 1)
            wg = wg + gk[:, None] * w1[k][None, :]
            new_w1.append(_kahan(acc_w1[k], jnp.sum(h * gk[:, None], axis=0)))
            new_b1.append(_kahan(acc_b1[k], jnp.sum(gk)))
        dw = d * wg
        dx_ref[at] = jnp.sum(dw * w0[None, :], axis=1)
        acc_w0 = _kahan(acc_w0, jnp.sum(dw * x[:, None], axis=0))
        if bias0:
            acc_b0 = _kahan(acc_b0, jnp.sum(dw, axis=0))
        return tuple(new_w1), acc_w0, acc_b0, tuple(new_b1)

    zeros_h = (jnp.zeros((hp,), dtype),) * 2
    zero = (jnp.zeros((), dtype),) * 2
    init = ((zeros_h,) * outputs, zeros_h, zeros_h, (zero,) * outputs)
    acc_w1, acc_w0, acc_b0, acc_b1 = jax.lax.fori_loop(0, chunk // sub, body, init)
    for k in range(outputs):
        part_ref[k, :] = acc_w1[k][0]
    part_ref[outputs, :] = acc_w0[0]
    part_ref[outputs + 1, :] = acc_b0[0]
    lanes = jax.lax.broadcasted_iota(jnp.int32, (hp,), 0)
    row = zeros_h[0]
    for k in range(outputs):
        row = jnp.where(lanes == k, acc_b1[k][0], row)
    part_ref[outputs + 2, :] = row
    for r in range(outputs + 3, part_ref.shape[0]):
        part_ref[r, :] = zeros_h[0]


def _linear_kernel(x_ref, g_ref, c_ref, e_ref, dx_ref, part_ref, *, outputs: int, sub: int):
    """One program of the identity form: dx = sum_k c_k G_k; part_ref (2, lanes): row 0 the partial
    sum x G_k, row 1 the partial sum G_k, output k in lane k."""
    chunk = x_ref.shape[0]
    dtype = x_ref.dtype
    c = [c_ref[k] for k in range(outputs)]
    e = [e_ref[k] for k in range(outputs)]

    def body(i, carry):
        sxg, sg = carry                                   # Kahan (sum, compensation) pairs
        at = pl.ds(pl.multiple_of(i * sub, sub), sub)
        x, g = x_ref[at], g_ref[at]
        dx = jnp.zeros_like(x)
        new_sxg, new_sg = [], []
        for k in range(outputs):
            gk = jnp.where(jnp.abs(c[k] * x + e[k]) < 1.0, g, 0.0)
            dx = dx + c[k] * gk
            new_sxg.append(_kahan(sxg[k], jnp.sum(x * gk)))
            new_sg.append(_kahan(sg[k], jnp.sum(gk)))
        dx_ref[at] = dx
        return tuple(new_sxg), tuple(new_sg)

    zero = ((jnp.zeros((), dtype),) * 2,) * outputs
    sxg, sg = jax.lax.fori_loop(0, chunk // sub, body, (zero, zero))
    lanes = jax.lax.broadcasted_iota(jnp.int32, (part_ref.shape[1],), 0)
    for r, sums in enumerate((sxg, sg)):
        row = jnp.zeros((part_ref.shape[1],), dtype)
        for k in range(outputs):
            row = jnp.where(lanes == k, sums[k][0], row)
        part_ref[r, :] = row


def _grid(n: int, chunk: int, sub: int) -> tuple[int, int]:
    """(chunk, programs): chunk a power of two >= sub, no larger than needed for n elements."""
    chunk = min(_pow2(max(chunk, sub)), max(_pow2(n), sub))
    return chunk, -(-n // chunk)


def _call(kernel, inputs, n_pad: int, chunk: int, part_shape: tuple[int, int], dtype, interpret: bool,
          num_warps: int) -> tuple[Array, Array]:
    programs = n_pad // chunk
    elem = pl.BlockSpec((chunk,), lambda i: (i,))
    whole = [pl.BlockSpec(a.shape, (lambda i, nd=a.ndim: (0,) * nd)) for a in inputs[2:]]
    return pl.pallas_call(
        kernel,
        grid=(programs,),
        in_specs=[elem, elem, *whole],
        out_specs=[elem, pl.BlockSpec((None, *part_shape), lambda i: (i, 0, 0))],
        out_shape=[jax.ShapeDtypeStruct((n_pad,), dtype), jax.ShapeDtypeStruct((programs, *part_shape), dtype)],
        compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name=kernel.func.__name__.strip("_"),
    )(*inputs)


def gated_mlp_vjp_pallas(theta: Theta, x: Array, g: Array, activation: str, *, chunk: int = 0, sub: int = 0,
                         interpret: bool | None = None, num_warps: int = NUM_WARPS) -> tuple[Theta, Array]:
    """Cotangents (to theta and x) of s(x; theta) = sum_k clip(f_k(x), -1, 1) times g, for the
    two-layer MLP (theta ``w0`` (1, H), ``w1`` (H, K), optional ``b0``, ``b1``) and any shape of x.

    chunk: elements per program (0: ``CHUNK``; rounded to a power of two, shrunk for small x);
    sub: elements per inner step (0: ``SUB``, ``LINEAR_SUB`` for the identity); interpret: Pallas
    interpret mode (None: everywhere but on a GPU). Work is in float32 (float64 stays float64);
    x's cotangent comes back in x's dtype, theta's in theta's. Deeper MLPs take the chunked
    autodiff form (``mlp_backward``).
    """
    if not _is_two_layer(theta):
        return chunked_vjp(functools.partial(gated_mlp_vjp, activation=activation, form="autodiff"), theta, x, g, 0)
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    shape, out_dtype = x.shape, x.dtype
    work = jnp.promote_types(x.dtype, F32)
    xf, gf = x.reshape(-1).astype(work), g.reshape(-1).astype(work)
    n = xf.shape[0]
    w0, w1 = theta["w0"][0].astype(work), theta["w1"].astype(work)   # (H,), (H, K)
    b0, b1 = theta.get("b0"), theta.get("b1")
    hidden, outputs = w1.shape
    identity = activation == "identity"
    chunk, programs = _grid(n, chunk or CHUNK, sub or (LINEAR_SUB if identity else SUB))
    sub = min(sub or (LINEAR_SUB if identity else SUB), chunk)
    n_pad = programs * chunk
    # Padding elements carry g = 0: their gates pass nothing, so they add nothing to any sum.
    xs, gs = jnp.pad(xf, (0, n_pad - n)), jnp.pad(gf, (0, n_pad - n))
    if identity:
        c = w0 @ w1                                                   # f_k = c_k x + e_k
        e = jnp.zeros(outputs, work) if b0 is None else b0.astype(work) @ w1
        e = e if b1 is None else e + b1.astype(work)
        lanes = _pow2(outputs)
        pad_k = (0, lanes - outputs)
        kernel = functools.partial(_linear_kernel, outputs=outputs, sub=sub)
        dx, parts = _call(kernel, [xs, gs, jnp.pad(c, pad_k), jnp.pad(e, pad_k)], n_pad, chunk, (2, lanes),
                          work, interpret, num_warps)
        sums = tree_sum(parts)
        sxg, sg = sums[0, :outputs], sums[1, :outputs]
        out = {"w0": (w1 @ sxg)[None], "w1": w0[:, None] * sxg[None] + (0.0 if b0 is None else b0[:, None] * sg)}
        if b0 is not None:
            out["b0"] = w1 @ sg
        if b1 is not None:
            out["b1"] = sg
    else:
        hp = max(_pow2(hidden), _pow2(outputs))                     # padded hidden units: zero weights
        pad_h = (0, hp - hidden)
        rows = _pow2(outputs + 3)
        w1t = jnp.pad(w1.T, ((0, _pow2(outputs) - outputs), pad_h))   # (K', H')
        b0p = jnp.pad(b0.astype(work), pad_h) if b0 is not None else jnp.zeros(hp, work)
        b1p = jnp.pad(b1.astype(work), (0, _pow2(outputs) - outputs)) if b1 is not None \
            else jnp.zeros(_pow2(outputs), work)
        kernel = functools.partial(_mlp_kernel, activation=activation, outputs=outputs, sub=sub,
                                   bias0=b0 is not None, bias1=b1 is not None)
        dx, parts = _call(kernel, [xs, gs, jnp.pad(w0, pad_h), w1t, b0p, b1p], n_pad, chunk, (rows, hp),
                          work, interpret, num_warps)
        sums = tree_sum(parts)
        out = {"w0": sums[outputs, :hidden][None], "w1": sums[:outputs, :hidden].T}
        if b0 is not None:
            out["b0"] = sums[outputs + 1, :hidden]
        if b1 is not None:
            out["b1"] = sums[outputs + 2, :outputs]
    out = {k: v.astype(theta[k].dtype) for k, v in out.items()}
    return out, dx[:n].reshape(shape).astype(out_dtype)
