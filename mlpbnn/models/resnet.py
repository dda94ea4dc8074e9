"""ResNets: full-precision ones in torchvision's structure, and the binary Bi-Real/BBC and
ReActNet ResNets of the paper's ImageNet results.

Module names follow the PyTorch originals with ``.`` written as ``_`` before an index
(``layer1.0.bn1`` is ``layer1_0/bn1``), so ``mlpbnn.convert`` maps names by rule. All padding
is explicit and symmetric, BN uses PyTorch's epsilon (1e-5) and momentum (0.1, i.e. Flax 0.9).
Inputs are NHWC images; ``__call__(x, train, progress)`` returns logits in at least float32
whatever the compute ``dtype`` (the loss is computed in float32 even under bfloat16).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlpbnn import layers as L
from mlpbnn.conv import conv_general_dilated
from mlpbnn.estimators import Estimator

Array = jax.Array

# PyTorch's default init for conv and linear weights (kaiming_uniform with a=sqrt(5)):
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)); torchvision's ResNet convs use kaiming_normal(fan_out).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
torchvision_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_bias_init(fan_in: int):
    bound = 1.0 / fan_in ** 0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


BINARY_INITS = {
    "xavier": nn.initializers.xavier_uniform(),  # official BBC MetaConv2d
    "reactnet": lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, 0.0, 1e-3),
}


def _at_least_f32(dtype: Any) -> Any:
    """float32 for bf16/f32 compute, float64 for f64 (parity tests in float64)."""
    return jnp.promote_types(dtype, jnp.float32)


def _norm(train: bool, dtype: Any, name: str, zero_scale: bool = False) -> nn.BatchNorm:
    # Two-pass variance as PyTorch: the fast E[x^2] - E[x]^2 cancels badly when |mean| >> std.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                        use_fast_variance=False,
                        param_dtype=jnp.float32, name=name,
                        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones)


def _conv(features: int, kernel: int, strides: int, padding: int, name: str, dtype: Any,
          init=torchvision_conv_init) -> nn.Conv:
    # Flax's Conv (parameter ``kernel``, HWIO) computing through mlpbnn.conv: on the CPU backend
    # its weight gradient is im2col matmuls instead of XLA:CPU's slow convolution gradient.
    return nn.Conv(features, (kernel, kernel), (strides, strides), ((padding, padding),) * 2,
                   use_bias=False, dtype=dtype, param_dtype=jnp.float32, kernel_init=init, name=name,
                   conv_general_dilated=conv_general_dilated)


def _logits(x: Array, num_classes: int, fan_in: int, dtype: Any) -> Array:
    fc = nn.Dense(num_classes, dtype=dtype, param_dtype=jnp.float32, kernel_init=torch_default_init,
                  bias_init=torch_bias_init(fan_in), name="fc")
    y = fc(x)
    return y.astype(jnp.promote_types(y.dtype, jnp.float32))


# -------------------------------------------------------------------------- full precision


class BasicBlock(nn.Module):
    """torchvision BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    planes: int
    strides: int = 1
    downsample: bool = False
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        out = _conv(self.planes, 3, self.strides, 1, "conv1", self.dtype)(x)
        out = nn.relu(_norm(train, self.dtype, "bn1")(out))
        out = _conv(self.planes, 3, 1, 1, "conv2", self.dtype)(out)
        out = _norm(train, self.dtype, "bn2", self.zero_init_residual)(out)
        if self.downsample:
            x = _conv(self.planes, 1, self.strides, 0, "downsample_0", self.dtype)(x)
            x = _norm(train, self.dtype, "downsample_1")(x)
        return nn.relu(out + x)


class Bottleneck(nn.Module):
    """torchvision Bottleneck (ResNet v1.5: the stride sits on the 3x3 conv)."""

    planes: int
    strides: int = 1
    downsample: bool = False
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        out = nn.relu(_norm(train, self.dtype, "bn1")(_conv(self.planes, 1, 1, 0, "conv1", self.dtype)(x)))
        out = _conv(self.planes, 3, self.strides, 1, "conv2", self.dtype)(out)
        out = nn.relu(_norm(train, self.dtype, "bn2")(out))
        out = _conv(self.planes * 4, 1, 1, 0, "conv3", self.dtype)(out)
        out = _norm(train, self.dtype, "bn3", self.zero_init_residual)(out)
        if self.downsample:
            x = _conv(self.planes * 4, 1, self.strides, 0, "downsample_0", self.dtype)(x)
            x = _norm(train, self.dtype, "downsample_1")(x)
        return nn.relu(out + x)


class ResNet(nn.Module):
    """Full-precision ResNet with torchvision's structure and parameter names.

    ``small_inputs``: 3x3 stride-1 stem without max-pool, for 8-64 px images.
    """

    stage_sizes: Sequence[int]
    block: str = "basic"
    num_classes: int = 1000
    width: int = 64
    small_inputs: bool = False
    zero_init_residual: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False, progress: Array | float | None = None) -> Array:
        block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[self.block]
        x = x.astype(self.dtype)
        if self.small_inputs:
            x = _conv(self.width, 3, 1, 1, "conv1", self.dtype)(x)
        else:
            x = _conv(self.width, 7, 2, 3, "conv1", self.dtype)(x)
        x = nn.relu(_norm(train, self.dtype, "bn1")(x))
        if not self.small_inputs:
            x = L.MaxPool(3, 2, 1, name="maxpool")(x)
        inplanes = self.width
        for i, n_blocks in enumerate(self.stage_sizes):
            planes = self.width * 2 ** i
            for j in range(n_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                downsample = j == 0 and (strides != 1 or inplanes != planes * block_cls.expansion)
                x = block_cls(planes, strides, downsample, self.zero_init_residual, self.dtype,
                              name=f"layer{i + 1}_{j}")(x, train)
                inplanes = planes * block_cls.expansion
        x = L.GlobalAvgPool(name="avgpool")(x)
        return _logits(x, self.num_classes, inplanes, self.dtype)


# -------------------------------------------------------------------------- binary


class BinaryBlock(nn.Module):
    """One binary 3x3 conv with its own real shortcut (Bi-Real's one-conv-per-block).

    bireal (official BBC): out = PReLU(BN(BinConv(q(x))) + shortcut(x))
    reactnet:             out = move2(PReLU(move1(BN(BinConv(q(move0(x)))) + shortcut(x))))
                          (move0 + sign is RSign; move1, PReLU, move2 is RPReLU)
    shortcut with downsampling: AvgPool(2, stride) -> real 1x1 conv -> BN, as
    ``downsample.0/1/2`` in the official code.
    """

    planes: int
    strides: int
    downsample: bool
    variant: str
    activation_estimator: Estimator | None
    weight_estimator: Estimator | None
    input_theta: L.EstimatorParams | None
    weight_theta: L.EstimatorParams | None
    weight_norm: str
    weight_scale: str
    scale_in_backward: bool
    binary_init: str
    pad_value: float
    dtype: Any

    @nn.compact
    def __call__(self, x: Array, train: bool, progress: Array | float | None) -> Array:
        out = L.LearnableBias(name="move0")(x) if self.variant == "reactnet" else x
        out = L.BinaryConv(self.planes, 3, self.strides, 1, pad_value=self.pad_value,
                           input_estimator=self.activation_estimator, weight_estimator=self.weight_estimator,
                           input_theta=self.input_theta, weight_theta=self.weight_theta,
                           weight_norm=self.weight_norm, weight_scale=self.weight_scale,
                           scale_in_backward=self.scale_in_backward, dtype=self.dtype,
                           kernel_init=BINARY_INITS[self.binary_init], name="binary_conv")(out, progress)
        out = _norm(train, _at_least_f32(self.dtype), "bn1")(out)
        residual = x
        if self.downsample:
            if self.strides > 1:
                residual = L.AvgPool(2, self.strides, name="downsample_0")(residual)
            residual = _conv(self.planes, 1, 1, 0, "downsample_1", self.dtype, torch_default_init)(residual)
            residual = _norm(train, _at_least_f32(self.dtype), "downsample_2")(residual)
        out = out + residual
        if self.variant == "reactnet":
            out = L.LearnableBias(name="move1")(out)
            out = L.PReLU(name="prelu")(out)
            return L.LearnableBias(name="move2")(out)
        return L.PReLU(name="nonlinear")(out)


class BinaryResNet(nn.Module):
    """Binary ResNet of the Bi-Real family: real stem and head, binary 3x3 convs.

    Mixed precision (``dtype=bfloat16``): the convolutions compute in ``dtype`` (a binary conv's
    +-1 inputs are exact in bf16), while BatchNorm, the real-valued shortcut stream and PReLU stay
    float32. Bi-Real's shortcuts carry what the binary convs lose, and rounding them to bf16 at
    every block flips the signs of pre-sign values near zero: measured on digits, the loss of a
    bf16 step then differs from float32 by 0.026 instead of 0.005.

    variant 'bireal' is the official BBC network (PReLU after the stem and after every add);
    'reactnet' adds ReActNet's learnable shifts (RSign, RPReLU) and has Bi-Real's stem
    (no PReLU). Learnable estimators share one theta per network unless ``share_estimator``
    is False (then each binary conv has its own).
    """

    stage_sizes: Sequence[int]
    num_classes: int = 1000
    width: int = 64
    small_inputs: bool = False
    variant: str = "bireal"
    activation_estimator: Estimator | None = None
    weight_estimator: Estimator | None = None
    share_estimator: bool = True
    weight_norm: str = "center"
    weight_scale: str = "mean"
    scale_in_backward: bool = True
    binary_init: str = "xavier"
    pad_value: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False, progress: Array | float | None = None) -> Array:
        if self.variant not in ("bireal", "reactnet"):
            raise ValueError(f"variant must be 'bireal' or 'reactnet', got {self.variant!r}")
        if self.binary_init not in BINARY_INITS:
            raise ValueError(f"binary_init must be one of {sorted(BINARY_INITS)}, got {self.binary_init!r}")
        shared = functools.partial(_shared_theta, self.share_estimator)
        input_theta = shared(self.activation_estimator, "input_estimator")
        weight_theta = shared(self.weight_estimator, "weight_estimator")
        x = x.astype(self.dtype)
        if self.small_inputs:
            x = _conv(self.width, 3, 1, 1, "conv1", self.dtype, torch_default_init)(x)
        else:
            x = _conv(self.width, 7, 2, 3, "conv1", self.dtype, torch_default_init)(x)
        x = _norm(train, _at_least_f32(self.dtype), "bn1")(x)
        if self.variant == "bireal":
            x = L.PReLU(name="nonlinear")(x)
        if not self.small_inputs:
            x = L.MaxPool(3, 2, 1, name="maxpool")(x)
        inplanes = self.width
        for i, n_blocks in enumerate(self.stage_sizes):
            planes = self.width * 2 ** i
            for j in range(n_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                downsample = j == 0 and (strides != 1 or inplanes != planes)
                x = BinaryBlock(planes, strides, downsample, self.variant, self.activation_estimator,
                                self.weight_estimator, input_theta, weight_theta, self.weight_norm,
                                self.weight_scale, self.scale_in_backward, self.binary_init, self.pad_value,
                                self.dtype,
                                name=f"layer{i + 1}_{j}")(x, train, progress)
                inplanes = planes
        x = L.GlobalAvgPool(name="avgpool")(x)
        return _logits(x, self.num_classes, inplanes, self.dtype)


def _shared_theta(share: bool, estimator: Estimator | None, name: str) -> L.EstimatorParams | None:
    if not share or estimator is None or not estimator.learnable:
        return None
    return L.EstimatorParams(estimator, name=name)
