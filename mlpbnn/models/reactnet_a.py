"""ReActNet-A: the binary MobileNetV1 of ReActNet (Liu et al., arXiv 2003.03488), the 69.4% top-1
backbone at 0.87e8 OPs (70.5% with AdamBNN's recipe, Liu et al., arXiv 2106.11309).

Structure as the released code (``liuzechun/ReActNet``, ``mobilenet/{1_step1,2_step2}/reactnet.py``;
``liuzechun/AdamBNN``, ``step{1,2}/reactnet.py``), whose parameter names the modules carry:

- ``feature_0``: a real 3x3 stride-2 conv ``conv1`` (padding 1, no bias) and ``bn1``; no activation.
- ``feature_1`` ... ``feature_13``: one block each, on the channel plan 32 -> 64, 128 x 2, 256 x 2,
  512 x 6, 1024 x 2 (``stage_sizes`` (1, 2, 2, 6, 2) of ``width * 2**(i + 1)`` channels); the first
  block of every stage but the first has stride 2 (blocks 2, 4, 6 and 12), block 1 doubles
  32 -> 64 at stride 1. A block on C input channels:

      out1 = move13(prelu1(move12(bn1(binary_3x3(sign(move11(x)))) + pool(x))))
      s    = sign(move21(out1))
      out2 = bn2(binary_pw(s)) + out1                                   (same channels)
           | concat(bn2_1(binary_pw_down1(s)) + out1, bn2_2(binary_pw_down2(s)) + out1)   (doubling)
      out  = move23(prelu2(move22(out2)))

  ``binary_3x3`` is a full (not depthwise) binary 3x3 conv C -> C with the block's stride,
  ``pool`` the 2x2 average pool of a stride-2 block (identity otherwise), the 1x1 convs binary
  C -> C; ``moveNN`` are learnable per-channel biases (RSign's and RPReLU's shifts), ``preluN``
  per-channel PReLUs. A doubling block signs its input once for both 1x1 convs (here each
  binary conv applies the input estimator to the same ``move21`` output: the same values and,
  the estimator being elementwise, the same summed gradients).
- the classifier head: global average pool and a real ``fc``.

Binary convs: the spec's estimators; the default is the paper's (ApproxSign on the inputs; on
the weights alpha * sign(W) with alpha = mean |W| per output channel, detached, and the gradient
of clamp(W, -1, 1), i.e. the clipped STE without the scale), latent weights U(0, 0.001) as the
released code. 29,343,592 parameters at 1000 classes.

``small_inputs`` (digits, Fashion-MNIST, 8-64 px): the stem has stride 1 and only the second and
third stages halve (28 -> 14 -> 7, 8 -> 4 -> 2), because ReActNet's shortcut pool floors an odd
size while its stride-2 conv rounds up, so a fourth halving of 7 px could not add them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlpbnn import layers as L
from mlpbnn.models.heads import torch_default_init
from mlpbnn.models.registry import register_model
from mlpbnn.models.resnet import ModuleDef, binary_conv_partial, conv_partial, norm_partial
from mlpbnn.spec import BinarySpec

Array = jax.Array

# ReActNet's HardBinaryConv (as reactnet_resnet18): clipped STE through clamp(W, -1, 1), no
# centring, mean |W| scale in the forward only, latent weights U(0, 0.001).
REACTNET_SPEC = BinarySpec(weights="ste", inputs="approx_sign", weight_norm="none", scale_in_backward=False,
                           init="reactnet")
STAGE_SIZES = (1, 2, 2, 6, 2)  # blocks per output width 64, 128, 256, 512, 1024 (13 blocks)


class ReActBlock(nn.Module):
    """One ReActNet-A block (the module docstring) from ``inplanes`` to ``planes`` channels
    (``planes`` is ``inplanes`` or twice it)."""

    inplanes: int
    planes: int
    norm: ModuleDef
    binary_conv: ModuleDef
    strides: int = 1

    @nn.compact
    def __call__(self, x: Array, progress: Array | float | None = None) -> Array:
        c = self.inplanes
        if x.shape[-1] != c or self.planes not in (c, 2 * c):
            raise ValueError(f"{self.name}: a block takes {c} channels to {c} or {2 * c}, got {x.shape[-1]} -> "
                             f"{self.planes}")
        out1 = L.LearnableBias(name="move11")(x)
        out1 = self.binary_conv(c, 3, self.strides, 1, name="binary_3x3")(out1, progress)
        out1 = self.norm(name="bn1")(out1)
        shortcut = L.AvgPool(2, 2)(x) if self.strides == 2 else x
        out1 = L.LearnableBias(name="move13")(L.PReLU(name="prelu1")(L.LearnableBias(name="move12")(out1 + shortcut)))
        signs_in = L.LearnableBias(name="move21")(out1)
        if self.planes == c:
            out2 = self.norm(name="bn2")(self.binary_conv(c, 1, 1, 0, name="binary_pw")(signs_in, progress)) + out1
        else:
            halves = [self.norm(name=f"bn2_{k}")(self.binary_conv(c, 1, 1, 0, name=f"binary_pw_down{k}")(
                signs_in, progress)) + out1 for k in (1, 2)]
            out2 = jnp.concatenate(halves, axis=-1)
        return L.LearnableBias(name="move23")(L.PReLU(name="prelu2")(L.LearnableBias(name="move22")(out2)))


class ReActNetABackbone(nn.Module):
    """ReActNet-A without its head: returns the output of every stage (of ``stage_sizes[i]``
    blocks of ``width * 2**(i + 1)`` channels), in order.

    Attributes:
      stage_sizes: blocks per stage, (1, 2, 2, 6, 2) for ReActNet-A; fewer for tests and small data.
      width: the stem's channels (32); a stage's width is ``width * 2**(i + 1)``.
      small_inputs: stride-1 stem and stride 2 only at stages 2 and 3 (the module docstring).
      spec: how every binary conv binarizes; learnable estimators share one theta per network
        unless ``spec.share`` is False.
      dtype: compute dtype of the convolutions (BN and the shortcut stream stay float32).
    """

    stage_sizes: Sequence[int] = STAGE_SIZES
    width: int = 32
    small_inputs: bool = False
    spec: BinarySpec = REACTNET_SPEC
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False, progress: Array | float | None = None) -> tuple[Array, ...]:
        if not self.stage_sizes or min(self.stage_sizes) < 1:
            raise ValueError(f"stage_sizes must name at least one stage of at least one block, got {self.stage_sizes}")
        norm = norm_partial(train, self.dtype)
        binary_conv = binary_conv_partial(self, self.spec, self.dtype)
        conv = conv_partial(self.dtype, torch_default_init)
        x = x.astype(self.dtype)
        x = _Stem(self.width, 1 if self.small_inputs else 2, conv, norm, name="feature_0")(x)
        features, index, inplanes = [], 1, self.width
        for i, n_blocks in enumerate(self.stage_sizes):
            planes = self.width * 2 ** (i + 1)
            for j in range(n_blocks):
                halves = j == 0 and i > 0 and not (self.small_inputs and i >= 3)
                block = ReActBlock(inplanes, planes if j == 0 else inplanes, norm, binary_conv, 2 if halves else 1,
                                   name=f"feature_{index}")
                x = block(x, progress)
                inplanes, index = planes, index + 1
            features.append(x)
        return tuple(features)


class _Stem(nn.Module):
    """``firstconv3x3``: a real 3x3 conv (padding 1, no bias) and BN, no activation."""

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return self.norm(name="bn1")(self.conv(self.features, (3, 3), self.strides, 1, name="conv1")(x))


register_model("reactnet_a", ReActNetABackbone, head="classifier", torch_layout="reactnet_a",
               defaults={"stage_sizes": STAGE_SIZES, "width": 32, "spec": REACTNET_SPEC})
