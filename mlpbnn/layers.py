"""Where the sign is applied: binary convolution, transposed convolution and dense layers, the
small real layers around them (LearnableBias, PReLU, RPReLU, a PyTorch-faithful BatchNorm), and
the tools that find the binary layers of a model and read their +-1 weights (``binary_layer_paths``, ``weight_signs``,
``flip_ratio``).

A binary layer computes ``conv(q_in(x), alpha * q_w(normalize(W)))`` with

- ``q_in``, ``q_w``: estimators (``mlpbnn.estimators``) for inputs and weights; either may be None
  (real inputs or real weights, e.g. the first stage of two-stage training);
- ``normalize``: per-output-channel centring ``W - mean(W)`` (the official BBC weight path;
  gradients flow through the mean), IR-Net standardisation, or none;
- ``alpha``: the per-output-channel scale, stop-gradient: ``mean`` = mean |W_c| (XNOR/Bi-Real/BBC),
  ``pow2`` = 2^round(log2 mean |W_c|) (IR-Net), or ``none``.

Learnable estimators keep theta in the ``estimator`` variable collection, so optimizers can treat
it separately. A network shares one theta for all its layers by passing the same
``EstimatorParams`` module to each layer (as the official code shares one ``meta_net``); a layer
given none creates its own (per-layer theta).

Layout is NHWC with HWIO kernels; convolutions go through ``mlpbnn.conv.conv2d`` (XLA's
forward, a fast im2col weight gradient on the CPU backend). Padding is explicit (PyTorch parity:
Flax 'SAME' pads stride-2 convolutions asymmetrically) and its value may be 0 or +-1
(binary-exact XNOR inference needs +-1 padding).

A layer is *binary* when its kernel goes through a weight estimator; it then computes its +-1
weights in its method ``binary_weights``. ``binary_layer_paths`` and ``weight_signs`` intercept
that method (``flax.linen.intercept_methods``), so they follow whatever the model does and use
each layer's own estimator (e.g. the ``classifier`` estimator's argmax, which is not ``sign``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mlpbnn.conv import check_window, conv2d, conv_transpose, explicit_padding
from mlpbnn.estimators import Theta
from mlpbnn.spec import (
    BINARY_INITS,
    ESTIMATOR_COLLECTION,
    INPUT_ROLE,
    REAL,
    WEIGHT_NORMS,
    WEIGHT_ROLE,
    WEIGHT_SCALES,
    BinarySpec,
    EstimatorParams,
    SharedTheta,
    layer_theta,
)

__all__ = ["ESTIMATOR_COLLECTION", "REAL", "WEIGHT_NORMS", "WEIGHT_SCALES", "AvgPool", "BatchNorm", "BinaryConv",
           "BinaryConvTranspose", "BinaryDense", "BinarySpec", "EstimatorParams", "GlobalAvgPool", "LearnableBias",
           "MaxPool", "PReLU", "RPReLU", "SharedTheta", "binarize_weights", "binary_layer_paths", "flip_ratio",
           "normalize_weights", "pad_nhwc", "prelu", "scale_weights", "weight_signs"]

Array = jax.Array
Dtype = Any


@jax.custom_vjp
def _scale_forward_only(alpha: Array, wb: Array) -> Array:
    return alpha * wb


def _scale_forward_only_fwd(alpha, wb):
    return alpha * wb, alpha


def _scale_forward_only_bwd(alpha, g):
    return jnp.zeros_like(alpha), g


_scale_forward_only.defvjp(_scale_forward_only_fwd, _scale_forward_only_bwd)


def normalize_weights(kernel: Array, weight_norm: str) -> Array:
    """The latent weights the estimator sees: ``kernel`` centred or standardised per output channel
    (the last axis), or as it is."""
    if weight_norm not in WEIGHT_NORMS:
        raise ValueError(f"weight_norm must be one of {WEIGHT_NORMS}, got {weight_norm!r}")
    axes = tuple(range(kernel.ndim - 1))
    w = kernel
    if weight_norm in ("center", "standardize"):
        w = w - jnp.mean(w, axis=axes, keepdims=True)
    if weight_norm == "standardize":
        # torch's Tensor.std is unbiased (IR-Net); the epsilon guards all-equal channels.
        w = w / (jnp.std(w, axis=axes, keepdims=True, ddof=1) + 1e-12)
    return w


def scale_weights(w: Array, wb: Array, weight_scale: str, scale_in_backward: bool = True) -> Array:
    """alpha * wb with the per-output-channel alpha of the normalised latent weights ``w``."""
    if weight_scale not in WEIGHT_SCALES:
        raise ValueError(f"weight_scale must be one of {WEIGHT_SCALES}, got {weight_scale!r}")
    if weight_scale == "none":
        return wb
    axes = tuple(range(w.ndim - 1))
    alpha = jax.lax.stop_gradient(jnp.mean(jnp.abs(w), axis=axes, keepdims=True))
    if weight_scale == "pow2":
        alpha = 2.0 ** jnp.round(jnp.log2(alpha))
    return alpha * wb if scale_in_backward else _scale_forward_only(alpha, wb)


def binarize_weights(kernel: Array, spec: BinarySpec, theta: Theta, progress: Array | float | None = None,
                     signs: Callable[[Array, Theta, Array | float | None], Array] | None = None) -> Array:
    """alpha * q_w(normalize(W)) as ``spec`` says; the output-channel axis is the last one (HWIO /
    (in, out)).

    ``spec.scale_in_backward``: the weight gradient is alpha * q_w'(W) (True: the official BBC
    ``MetaConv2d``, which multiplies the estimator's output by the detached scale) or q_w'(W)
    (False: Bi-Real's and ReActNet's ``HardBinaryConv``, whose clamp-STE bypasses the scale).
    With ``spec.weights=None`` the weights are real and used as they are (no normalisation, no
    scale), as in the first stage of two-stage training. ``signs(w, theta, progress)`` computes
    q_w (a binary layer passes its ``binary_weights`` method, which introspection intercepts;
    default: the spec's estimator).
    """
    if spec.weights is None:
        return kernel
    w = normalize_weights(kernel, spec.weight_norm)
    wb = signs(w, theta, progress) if signs is not None else spec.weights(theta, w, progress)
    return scale_weights(w, wb, spec.weight_scale, spec.scale_in_backward)


def _pairs(value: int | Sequence[int], n: int, what: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(value)
    if len(value) != n or not all(isinstance(v, int) for v in value):
        raise ValueError(f"{what} must be an int or {n} ints, got {value!r}")
    return value


def pad_nhwc(x: Array, padding: tuple[tuple[int, int], tuple[int, int]], value: float) -> Array:
    """Pads H and W of an NHWC tensor with a constant."""
    if not any(any(p) for p in padding):
        return x
    return jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)), constant_values=value)


class _BinaryLayer(nn.Module):
    """What the three binary layers share: the spec, the thetas, the kernel and bias, the input
    path (shift, estimator) and the binarized kernel. Subclasses give the kernel shape and the
    linear map (``_apply``)."""

    features: int
    _: dataclasses.KW_ONLY  # the subclasses' geometry follows ``features`` positionally
    spec: BinarySpec = BinarySpec()
    input_theta: SharedTheta | None = None
    weight_theta: SharedTheta | None = None
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable[..., Array] = nn.initializers.xavier_uniform()
    bias_init: Callable[..., Array] = nn.initializers.zeros

    def _kernel_shape(self, x: Array) -> tuple[int, ...]:
        raise NotImplementedError

    def _apply(self, x: Array, w: Array) -> Array:
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: Array, progress: Array | float | None = None) -> Array:
        spec = self.spec
        init = self.kernel_init if spec.init is None else BINARY_INITS[spec.init]
        kernel = self.param("kernel", init, self._kernel_shape(x), self.param_dtype)
        theta_in = layer_theta(self, spec.inputs, self.input_theta, INPUT_ROLE)
        theta_w = layer_theta(self, spec.weights, self.weight_theta, WEIGHT_ROLE)
        if spec.input_bias:
            x = LearnableBias(self.param_dtype, name="input_bias")(x)
        if spec.inputs is not None:
            x = spec.inputs(theta_in, x, progress)
        w = binarize_weights(kernel, spec, theta_w, progress, self.binary_weights)
        y = self._apply(x.astype(self.dtype), w.astype(self.dtype))
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype).astype(self.dtype)
        return y

    def binary_weights(self, w: Array, theta: Theta, progress: Array | float | None = None) -> Array:
        """The forward +-1 weights q_w(w) of the normalised latent weights ``w`` (before the scale);
        the method ``binary_layer_paths`` and ``weight_signs`` intercept."""
        return self.spec.weights(theta, w, progress)


class BinaryConv(_BinaryLayer):
    """2-D convolution on q_in(x) with weights alpha * q_w(normalize(W)); NHWC, HWIO kernel.

    Attributes:
      features: output channels.
      kernel_size, strides: ints or pairs.
      padding: explicit padding, int / (ph, pw) / ((top, bottom), (left, right)), filled with
        ``spec.pad_value`` after the input estimator.
      spec: how the layer binarizes (``mlpbnn.BinarySpec``; default the official BBC layer).
      input_theta, weight_theta: shared ``EstimatorParams`` for learnable estimators (or the theta
        values themselves, a mapping); None creates per-layer ones named ``input_estimator`` /
        ``weight_estimator`` in this layer's scope.
      dtype: computation dtype of the convolution (params stay ``param_dtype``).
      kernel_init: used unless ``spec.init`` names one.
    """

    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    padding: Any = 0

    def _kernel_shape(self, x: Array) -> tuple[int, ...]:
        if x.ndim != 4:
            raise ValueError(f"{self.name}: BinaryConv expects NHWC input, got shape {x.shape}")
        return (*_pairs(self.kernel_size, 2, "kernel_size"), x.shape[-1], self.features)

    def _apply(self, x: Array, w: Array) -> Array:
        x = pad_nhwc(x, explicit_padding(self.padding), self.spec.pad_value)
        return conv_nhwc(x, w, _pairs(self.strides, 2, "strides"))


def conv_nhwc(x: Array, kernel: Array, strides: tuple[int, int]) -> Array:
    """VALID NHWC x HWIO convolution (padding is applied by the caller); ``mlpbnn.conv.conv2d``,
    whose weight gradient is im2col matmuls on the CPU backend."""
    return conv2d(x, kernel, strides, 0)


class BinaryConvTranspose(_BinaryLayer):
    """Transposed 2-D convolution on q_in(x) with weights alpha * q_w(normalize(W)): PyTorch's
    ``ConvTranspose2d(C_in, features, k, s, p)`` (``output_padding=0``, ``groups=1``,
    ``dilation=1``), NHWC, the binary twin of ``BinaryConv``.

    The kernel is (kh, kw, C_in, C_out) with ``kernel[i, j, c, o] = torch_weight[c, o, i, j]``:
    the scatter form, in which input pixel (y, x) adds ``x[y, x, c] * kernel[i, j, c, o]`` to output
    pixel (s y + i - p, s x + j - p) (outputs outside [0, (H - 1) s + k - 2p) are cropped). Its last
    axis is the output channel, so centring and the scale alpha are per output channel as in
    ``BinaryConv`` (and fold into the following BatchNorm). The result is the convolution of the
    s-dilated input with the spatially flipped kernel and padding k - 1 - p per side (for k=4,
    s=2, p=1: padding 2, output 2H x 2W, as SimpleBaseline's deconvolutions, arXiv 1804.06208),
    computed by ``mlpbnn.conv.conv_transpose`` (on the CPU: sub-pixel phases, im2col kernel gradient).
    ``flip_kernel=True`` stores the kernel spatially flipped (Flax's ``nn.ConvTranspose`` layout,
    the gather form), as ``mlpbnn.binarize`` does for a user's ``nn.ConvTranspose``.

    ``spec.pad_value`` plays no part: a transposed convolution pads nothing in its scatter form
    (the dilation holes and border are structural zeros that no weight multiplies), so XNOR
    inference of +-1 inputs needs only a count of the taps that reach each border output.

    Attributes as ``BinaryConv``; ``padding`` is PyTorch's p (int, (ph, pw) or
    ((top, bottom), (left, right))): what is cropped from each side of the full transposed output
    (negative values add zero rows).
    """

    kernel_size: int | Sequence[int] = 4
    strides: int | Sequence[int] = 2
    padding: Any = 1
    flip_kernel: bool = False

    def _kernel_shape(self, x: Array) -> tuple[int, ...]:
        if x.ndim != 4:
            raise ValueError(f"{self.name}: BinaryConvTranspose expects NHWC input, got shape {x.shape}")
        return (*_pairs(self.kernel_size, 2, "kernel_size"), x.shape[-1], self.features)

    def _apply(self, x: Array, w: Array) -> Array:
        if self.flip_kernel:
            w = w[::-1, ::-1]
        return conv_transpose_nhwc(x, w, _pairs(self.strides, 2, "strides"), explicit_padding(self.padding))


def conv_transpose_nhwc(x: Array, kernel: Array, strides: tuple[int, int],
                        padding: tuple[tuple[int, int], tuple[int, int]]) -> Array:
    """PyTorch's ``conv_transpose2d`` of NHWC ``x`` with the scatter-form kernel (kh, kw, C_in,
    C_out) and PyTorch padding ``padding`` (cropped per side): ``mlpbnn.conv.conv_transpose``,
    equal to the stride-1 convolution of the ``strides``-dilated input with the flipped kernel and
    padding k - 1 - p, but with fast gradients on the CPU backend."""
    return conv_transpose(x, kernel, strides, padding)


class BinaryDense(_BinaryLayer):
    """Dense layer on q_in(x) with weights alpha * q_w(normalize(W)); kernel (in, out), over the
    last axis of x. Attributes as ``BinaryConv`` (no padding); ``use_bias`` defaults to True like
    ``nn.Dense``."""

    _: dataclasses.KW_ONLY
    use_bias: bool = True

    def _kernel_shape(self, x: Array) -> tuple[int, ...]:
        return (x.shape[-1], self.features)

    def _apply(self, x: Array, w: Array) -> Array:
        return jnp.dot(x, w)


class LearnableBias(nn.Module):
    """x + b with a per-channel b initialised at 0 (ReActNet's RSign/RPReLU shifts)."""

    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b = self.param("bias", nn.initializers.zeros, (x.shape[-1],), self.param_dtype)
        return x + b.astype(x.dtype)


def prelu(x: Array, slope: Array) -> Array:
    """max(0, x) + slope * min(0, x), slope broadcast over the last (channel) axis.

    The test is ``x > 0`` as in PyTorch's PReLU, so at exactly 0 the input gradient is the slope
    (not 1) and the slope gradient is x = 0."""
    return jnp.where(x > 0, x, slope.astype(x.dtype) * x)


class PReLU(nn.Module):
    """Per-channel PReLU (``torch.nn.PReLU(C)``), slope initialised at 0.25."""

    init_slope: float = 0.25
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        slope = self.param("slope", nn.initializers.constant(self.init_slope), (x.shape[-1],),
                           self.param_dtype)
        return prelu(x, slope)


class RPReLU(nn.Module):
    """ReActNet's RPReLU: PReLU(x + gamma) + zeta, per channel (gamma, zeta at 0, slope 0.25)."""

    init_slope: float = 0.25
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        gamma = self.param("gamma", nn.initializers.zeros, (c,), self.param_dtype)
        slope = self.param("slope", nn.initializers.constant(self.init_slope), (c,), self.param_dtype)
        zeta = self.param("zeta", nn.initializers.zeros, (c,), self.param_dtype)
        return prelu(x + gamma.astype(x.dtype), slope) + zeta.astype(x.dtype)


class BatchNorm(nn.Module):
    """Batch normalisation over all axes but the last, as ``torch.nn.BatchNorm2d`` computes it.

    Variables as Flax's ``nn.BatchNorm`` (params ``scale``, ``bias``; batch_stats ``mean``,
    ``var`` in float32), with the same ``momentum`` convention (running = momentum * running +
    (1 - momentum) * batch: PyTorch's momentum 0.1 is 0.9 here) and ``epsilon``. Two differences
    from Flax, both PyTorch's behaviour (Ioffe & Szegedy, arXiv 1502.03167, Algorithm 2, use the
    unbiased variance for inference too):

    - the running variance is updated with the *unbiased* batch variance, var * n / (n - 1),
      where n is the number of values per channel; the batch itself is normalised with the biased
      variance. (Flax uses the biased one: 1e-3 relative after one step at batch 2.)
    - the computation is always in at least float32, whatever ``dtype``; the output has that
      dtype (``dtype`` or the input's, promoted to at least float32): BN in bfloat16 would round
      the shortcut stream (README's mixed-precision policy).

    Statistics are two-pass (mean, then the mean of squared deviations), as PyTorch: the one-pass
    E[x^2] - E[x]^2 cancels badly when |mean| >> std. Under ``jax.jit`` over a sharded batch
    they are over the global batch.
    """

    use_running_average: bool | None = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    scale_init: Callable[..., Array] = nn.initializers.ones
    bias_init: Callable[..., Array] = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
        use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                             use_running_average)
        c = x.shape[-1]
        axes = tuple(range(x.ndim - 1))
        dtype = jnp.promote_types(x.dtype if self.dtype is None else self.dtype, jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            xf = x.astype(dtype)
            mean = jnp.mean(xf, axes)
            var = jnp.mean(lax.square(xf - mean), axes)
            if not self.is_initializing():
                n = x.size // c
                unbiased = var * (n / max(n - 1, 1))
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
        # The order of Flax's _normalize: (x - mean) * (rsqrt(var + eps) * scale) + bias.
        y = x - mean
        mul = lax.rsqrt(var + self.epsilon)
        if self.use_scale:
            mul = mul * self.param("scale", self.scale_init, (c,), self.param_dtype)
        y = y * mul
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (c,), self.param_dtype)
        return y.astype(dtype)


class MaxPool(nn.Module):
    """Max pooling, NHWC, explicit padding with -inf (PyTorch ``MaxPool2d(k, s, p)``)."""

    window: int = 3
    strides: int = 2
    padding: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        p = self.padding
        check_window(x.shape, (self.window,) * 2, ((p, p), (p, p)), f"{_path(self) or self.name}: MaxPool")
        return nn.max_pool(x, (self.window,) * 2, (self.strides,) * 2, ((p, p), (p, p)))


class AvgPool(nn.Module):
    """Average pooling without padding (PyTorch ``AvgPool2d(k, s)``)."""

    window: int = 2
    strides: int = 2

    @nn.compact
    def __call__(self, x: Array) -> Array:
        check_window(x.shape, (self.window,) * 2, ((0, 0), (0, 0)), f"{_path(self) or self.name}: AvgPool")
        return nn.avg_pool(x, (self.window,) * 2, (self.strides,) * 2, "VALID")


class GlobalAvgPool(nn.Module):
    """Mean over H and W: NHWC -> NC (``AdaptiveAvgPool2d(1)`` + flatten)."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return jnp.mean(x, axis=(1, 2))


# ------------------------------------------------------------------------------ binary layers of a model

_BINARY_WEIGHTS_METHOD = "binary_weights"


def _path(module: nn.Module) -> str:
    return "/".join(module.path)


def binary_layer_paths(model: nn.Module, *args: Any, **kwargs: Any) -> set[str]:
    """Module paths (``'layer1_0/binary_conv'``) of the layers of ``model`` whose kernel is binarized.

    Traces ``model.init(key, *args, **kwargs)`` with ``jax.eval_shape`` (no computation; ``args``
    may be arrays or ``jax.ShapeDtypeStruct``) and records every layer that computes +-1 weights
    (calls ``binary_weights``). A root-level binary layer has the path ``''``.
    """
    paths: set[str] = set()

    def interceptor(next_fun, call_args, call_kwargs, context):
        if context.method_name == _BINARY_WEIGHTS_METHOD:
            paths.add(_path(context.module))
        return next_fun(*call_args, **call_kwargs)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a, **kwargs), *args)
    return paths


def weight_signs(model: nn.Module, variables: Any, *args: Any, **kwargs: Any) -> dict[str, Array]:
    """The forward +-1 weights of every binary layer of ``model``, by module path.

    Each layer computes them itself (its estimator with its theta, its weight normalisation:
    the ``classifier`` estimator's argmax, ``sign(0)`` as configured), before the per-channel
    scale. ``args``/``kwargs`` are a call of the model (an example input, e.g. one image;
    ``train=False`` by the models' default). Runs ``model.apply`` and returns only the weights:
    inside ``jax.jit`` XLA removes the rest of the forward pass as dead code.
    """
    signs: dict[str, Array] = {}

    def interceptor(next_fun, call_args, call_kwargs, context):
        out = next_fun(*call_args, **call_kwargs)
        if context.method_name == _BINARY_WEIGHTS_METHOD:
            signs[_path(context.module)] = out
        return out

    with nn.intercept_methods(interceptor):
        model.apply(variables, *args, **kwargs)
    return signs


def flip_ratio(old_signs: dict[str, Array], new_signs: dict[str, Array]) -> Array:
    """Fraction of binary weights whose forward value changed between two ``weight_signs``
    results (larq's FlipRatio metric); 0 for a model without binary weights."""
    if old_signs.keys() != new_signs.keys():
        raise ValueError(f"different binary layers: {sorted(old_signs)} vs {sorted(new_signs)}")
    if not old_signs:
        return jnp.zeros((), jnp.float32)
    flips = sum(jnp.sum(old_signs[k] != new_signs[k]) for k in old_signs)
    return flips.astype(jnp.float32) / sum(a.size for a in old_signs.values())
