"""The learnable estimators' MLP and the backward kernels of BBC's gated surrogate.

BBC (He et al., arXiv 2205.07433) differentiates sign(x) as s(x; theta) = sum_k clip(f_k(x), -1, 1)
with f a small element-wise MLP shared by every binary layer. Its backward runs over every latent
weight of the network, so it is computed three ways (``BACKWARD_FORMS``, equal up to float rounding,
asserted in the tests), chosen per backend, and in chunks of elements (``chunked_vjp``):

- ``matmul``: written out with the hidden layer laid out (hidden, n) and theta's cotangents as
  matmuls over the elements (the CPU default);
- ``reduce``: the same, with theta's cotangents as broadcast products summed over the elements,
  which XLA fuses with the activation into reduction kernels (the GPU/TPU default);
- ``autodiff``: ``jax.vjp`` of ``mlp_apply``, which materialises the (n, hidden) layer.

A fourth, ``backward='pallas'`` (``mlp_pallas``: one fused kernel over the whole tensor), is chosen
by name only: ``auto`` never picks it until it has been timed on a GPU.

The per-backend defaults were measured fastest with ``bench/train_step.py --only-estimator``:
``bench/results/train_step_estimator.json`` (CPU) and ``bench/results/gpu/`` (an H200; TPUs take
the GPU choice, not measured there).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from mlpbnn.estimators.base import F32, Array, Theta

# The estimator's float32 matmuls at full precision: GPUs otherwise run float32 dots in TF32
# (10-bit mantissa), which puts ~1e-3 relative error into theta's gradient sums.
_HIGHEST = jax.lax.Precision.HIGHEST


def _mm(a: Array, b: Array) -> Array:
    return jnp.matmul(a, b, precision=_HIGHEST)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
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
            h = ACTIVATIONS[activation](h)
    return h


def _gated_mlp_vjp_autodiff(theta: Theta, x: Array, g: Array, activation: str) -> tuple[Theta, Array]:
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
    """The same cotangents as ``_gated_mlp_vjp_autodiff``, written out for
    f = W1^T act(W0^T x + b0) + b1.

    With the hidden layer laid out (hidden, n) (n contiguous), h = act(pre), d = act'(pre),
    G_k = g 1[|f_k| < 1] and V = W0^T * W1 (hidden, K):
      dx       = sum_k G_k sum_j V[j,k] d_j          (per-element reductions over j)
      dW1      = h G^T                               (reductions over the elements)
      dW0[j]   = sum_k W1[j,k] (d (x G)^T)[j,k],  db0[j] = sum_k W1[j,k] (d G^T)[j,k],  db1 = sum G
    so only h and d exist at (hidden, n); the (n, hidden) cotangents of autodiff do not.
    matmul=True computes the reductions over the elements as matmuls, False as broadcast products
    summed over n, which XLA fuses with act into reduction kernels that recompute h and d instead
    of storing them. For the identity activation everything is O(n K): f_k = c_k x + e_k with
    c = W0 W1, e = b0 W1 + b1.
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
    TPU (TPU unmeasured)."""
    return "matmul" if (backend or jax.default_backend()) == "cpu" else "reduce"


def gated_mlp_vjp(theta: Theta, x: Array, g: Array, activation: str,
                  form: str = "matmul") -> tuple[Theta, Array]:
    """Cotangents (to theta and x) of s(x; theta) = sum_k clip(f_k(x), -1, 1) times g, for flat
    float32 x and g. form: ``matmul`` or ``reduce`` (``_gated_mlp_vjp_direct``, the two-layer MLP;
    deeper MLPs fall back to autodiff) or ``autodiff`` (``_gated_mlp_vjp_autodiff``)."""
    if form not in BACKWARD_FORMS:
        raise ValueError(f"backward form must be one of {BACKWARD_FORMS}, got {form!r}")
    if form != "autodiff" and _is_two_layer(theta) and activation in ACTIVATIONS:
        return _gated_mlp_vjp_direct(theta, x, g, activation, matmul=form == "matmul")
    return _gated_mlp_vjp_autodiff(theta, x, g, activation)


# Elements per step of the MLP backward's scan when ``chunk=0`` (the default), by backend. On CPU a
# chunk's (hidden, chunk) layers stay in cache; on a GPU, 65536 elements keep the hidden layer
# (26 MB) inside an H200's L2 cache and bound the scratch memory. Both measured fastest among the
# sizes tried (bench/results/train_step_estimator.json, bench/results/gpu/train_step_gpu.json).
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
    work = jnp.promote_types(x.dtype, F32)
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
