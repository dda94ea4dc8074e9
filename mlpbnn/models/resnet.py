"""ResNet backbones: full-precision ones in torchvision's structure (He et al., arXiv 1512.03385),
and the binary Bi-Real/BBC (Liu et al., arXiv 1808.00278; He et al., arXiv 2205.07433) and
ReActNet (Liu et al., arXiv 2003.03488) ResNets of the paper's ImageNet results.

Built from injected layers, as the flax ImageNet example: a backbone makes ``conv`` and ``norm``
partials (dtype, initialiser, train mode bound) and hands them to its blocks; one stem and stage
loop (``_ResNetBase``) serves both families, which differ only in their blocks and stem
activation. A backbone returns one feature map per stage; heads sit on top
(``mlpbnn.models.heads.Classifier``: global average pool + ``fc``).

Module names follow the PyTorch originals with ``.`` written as ``_`` before an index
(``layer1.0.bn1`` is ``layer1_0/bn1``), so ``mlpbnn.convert`` maps names by rule. All padding
is explicit and symmetric; BN is ``mlpbnn.layers.BatchNorm`` with PyTorch's epsilon (1e-5),
momentum (0.1, i.e. 0.9 in Flax's convention) and unbiased running variance.

Mixed precision (``dtype=bfloat16``): convolutions compute in ``dtype``; BatchNorm, and so the
shortcut stream, the ReLU/PReLU after it and the feature maps, stay float32. Bi-Real's shortcuts
carry what the binary convs lose, and rounding them to bf16 at every block flips the signs of
pre-sign values near zero: measured on digits, the loss of a bf16 step then differs from float32
by 0.026 instead of 0.005.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlpbnn import layers as L
from mlpbnn.conv import conv_general_dilated
from mlpbnn.models.heads import torch_default_init, torchvision_conv_init
from mlpbnn.models.registry import register_model
from mlpbnn.spec import INPUT_ROLE, WEIGHT_ROLE, BinarySpec, shared_theta

Array = jax.Array
ModuleDef = Callable[..., nn.Module]  # a Module class or a functools.partial of one

CONV_INITS = {"torch_default": torch_default_init, "torchvision": torchvision_conv_init}


def conv_partial(dtype: Any, kernel_init: Callable[..., Array]) -> ModuleDef:
    """Flax's Conv (parameter ``kernel``, HWIO, no bias) computing in ``dtype`` through
    ``mlpbnn.conv``: on the CPU backend its weight gradient is im2col matmuls instead of
    XLA:CPU's slow convolution gradient. Called as ``conv(features, (k, k), strides, padding)``."""
    return functools.partial(nn.Conv, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                             kernel_init=kernel_init, conv_general_dilated=conv_general_dilated)


def norm_partial(train: bool, dtype: Any) -> ModuleDef:
    """PyTorch's BatchNorm2d defaults; computes in at least float32 whatever ``dtype``."""
    return functools.partial(L.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             dtype=dtype, param_dtype=jnp.float32)


# -------------------------------------------------------------------------- blocks
# Every block is called as block(x, progress); the full-precision ones ignore progress.


class BasicBlock(nn.Module):
    """torchvision BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    planes: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    downsample: bool = False
    zero_init_residual: bool = False
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: Array, progress: Array | float | None = None) -> Array:
        out = self.conv(self.planes, (3, 3), self.strides, 1, name="conv1")(x)
        out = nn.relu(self.norm(name="bn1")(out))
        out = self.conv(self.planes, (3, 3), 1, 1, name="conv2")(out)
        out = self.norm(name="bn2", scale_init=_last_scale_init(self.zero_init_residual))(out)
        if self.downsample:
            x = self.conv(self.planes, (1, 1), self.strides, 0, name="downsample_0")(x)
            x = self.norm(name="downsample_1")(x)
        return nn.relu(out + x)


class Bottleneck(nn.Module):
    """torchvision Bottleneck (ResNet v1.5: the stride sits on the 3x3 conv)."""

    planes: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    downsample: bool = False
    zero_init_residual: bool = False
    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: Array, progress: Array | float | None = None) -> Array:
        out = nn.relu(self.norm(name="bn1")(self.conv(self.planes, (1, 1), 1, 0, name="conv1")(x)))
        out = self.conv(self.planes, (3, 3), self.strides, 1, name="conv2")(out)
        out = nn.relu(self.norm(name="bn2")(out))
        out = self.conv(self.planes * 4, (1, 1), 1, 0, name="conv3")(out)
        out = self.norm(name="bn3", scale_init=_last_scale_init(self.zero_init_residual))(out)
        if self.downsample:
            x = self.conv(self.planes * 4, (1, 1), self.strides, 0, name="downsample_0")(x)
            x = self.norm(name="downsample_1")(x)
        return nn.relu(out + x)


def _last_scale_init(zero: bool) -> Callable[..., Array]:
    return nn.initializers.zeros if zero else nn.initializers.ones


class BinaryBlock(nn.Module):
    """One binary 3x3 conv with its own real shortcut (Bi-Real's one-conv-per-block).

    bireal (official BBC): out = PReLU(BN(BinConv(q(x))) + shortcut(x))
    reactnet:             out = move2(PReLU(move1(BN(BinConv(q(move0(x)))) + shortcut(x))))
                          (move0 + sign is RSign; move1, PReLU, move2 is RPReLU)
    shortcut with downsampling: AvgPool(2, stride) -> real 1x1 conv -> BN, as
    ``downsample.0/1/2`` in the official code.

    ``binary_conv`` is a ``BinaryConv`` partial with the spec and shared thetas bound; ``conv``
    the real conv of the shortcut.
    """

    planes: int
    conv: ModuleDef
    norm: ModuleDef
    binary_conv: ModuleDef
    strides: int = 1
    downsample: bool = False
    variant: str = "bireal"
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: Array, progress: Array | float | None = None) -> Array:
        out = L.LearnableBias(name="move0")(x) if self.variant == "reactnet" else x
        out = self.binary_conv(self.planes, 3, self.strides, 1, name="binary_conv")(out, progress)
        out = self.norm(name="bn1")(out)
        residual = x
        if self.downsample:
            if self.strides > 1:
                residual = L.AvgPool(2, self.strides, name="downsample_0")(residual)
            residual = self.conv(self.planes, (1, 1), 1, 0, name="downsample_1")(residual)
            residual = self.norm(name="downsample_2")(residual)
        out = out + residual
        if self.variant == "reactnet":
            out = L.LearnableBias(name="move1")(out)
            out = L.PReLU(name="prelu")(out)
            return L.LearnableBias(name="move2")(out)
        return L.PReLU(name="nonlinear")(out)


def binary_conv_partial(owner: nn.Module, spec: BinarySpec, dtype: Any) -> ModuleDef:
    """The ``BinaryConv`` partial of a binary backbone (``BinaryResNetBackbone``, BHRNet's): its
    ``spec`` and compute dtype, and the thetas shared by all its binary layers
    (``spec.share``). Called inside the backbone's compact ``__call__`` (``owner``), so the shared
    thetas are the backbone's submodules ``input_estimator``/``weight_estimator``."""
    return functools.partial(L.BinaryConv, spec=spec, dtype=dtype,
                             input_theta=shared_theta(owner, spec, INPUT_ROLE),
                             weight_theta=shared_theta(owner, spec, WEIGHT_ROLE))


# -------------------------------------------------------------------------- backbones


class _ResNetBase(nn.Module):
    """The stem and stage loop of every ResNet here; subclasses give the blocks and the stem's
    activation.

    Stem: conv1 (7x7 stride 2, or 3x3 stride 1 with ``small_inputs`` for 8-64 px images), bn1,
    activation, max-pool (not with ``small_inputs``). Stage i has ``stage_sizes[i]`` blocks of
    ``width * 2**i`` planes, the first of stages 2+ with stride 2. Returns the output of every
    stage, in order.
    """

    stage_sizes: Sequence[int]
    width: int = 64
    small_inputs: bool = False
    dtype: Any = jnp.float32

    conv_init: ClassVar[str] = "torch_default"  # key of CONV_INITS: the real convs' initialiser

    def make_block(self, conv: ModuleDef, norm: ModuleDef) -> tuple[ModuleDef, int]:
        """The block partial (called as ``block(planes, strides=, downsample=, name=)``) and its
        expansion."""
        raise NotImplementedError

    def stem_activation(self, x: Array) -> Array:
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: Array, train: bool = False, progress: Array | float | None = None) -> tuple[Array, ...]:
        if not self.stage_sizes:
            raise ValueError("stage_sizes must name at least one stage")
        conv = conv_partial(self.dtype, CONV_INITS[self.conv_init])
        norm = norm_partial(train, self.dtype)
        block, expansion = self.make_block(conv, norm)
        x = x.astype(self.dtype)
        kernel, strides, padding = (3, 1, 1) if self.small_inputs else (7, 2, 3)
        x = conv(self.width, (kernel, kernel), strides, padding, name="conv1")(x)
        x = self.stem_activation(norm(name="bn1")(x))
        if not self.small_inputs:
            x = L.MaxPool(3, 2, 1, name="maxpool")(x)
        features = []
        inplanes = self.width
        for i, n_blocks in enumerate(self.stage_sizes):
            planes = self.width * 2 ** i
            for j in range(n_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                downsample = j == 0 and (strides != 1 or inplanes != planes * expansion)
                x = block(planes, strides=strides, downsample=downsample, name=f"layer{i + 1}_{j}")(x, progress)
                inplanes = planes * expansion
            features.append(x)
        return tuple(features)


class ResNetBackbone(_ResNetBase):
    """Full-precision ResNet with torchvision's structure and parameter names; ``block`` 'basic'
    (ResNet-18/34) or 'bottleneck' (ResNet-50)."""

    block: str = "basic"
    zero_init_residual: bool = False

    conv_init: ClassVar[str] = "torchvision"

    def make_block(self, conv: ModuleDef, norm: ModuleDef) -> tuple[ModuleDef, int]:
        blocks = {"basic": BasicBlock, "bottleneck": Bottleneck}
        if self.block not in blocks:
            raise ValueError(f"block must be one of {sorted(blocks)}, got {self.block!r}")
        cls = blocks[self.block]
        return functools.partial(cls, conv=conv, norm=norm, zero_init_residual=self.zero_init_residual), cls.expansion

    def stem_activation(self, x: Array) -> Array:
        return nn.relu(x)


class BinaryResNetBackbone(_ResNetBase):
    """Binary ResNet of the Bi-Real family: real stem, binary 3x3 convs, real 1x1 shortcuts.

    variant 'bireal' is the official BBC network (PReLU after the stem and after every add);
    'reactnet' adds ReActNet's learnable shifts (RSign, RPReLU) and has Bi-Real's stem
    (no PReLU). ``spec`` says how every binary conv binarizes; learnable estimators share one
    theta per network unless ``spec.share`` is False (then each binary conv has its own).
    """

    variant: str = "bireal"
    spec: BinarySpec = BinarySpec()

    def make_block(self, conv: ModuleDef, norm: ModuleDef) -> tuple[ModuleDef, int]:
        if self.variant not in ("bireal", "reactnet"):
            raise ValueError(f"variant must be 'bireal' or 'reactnet', got {self.variant!r}")
        binary_conv = binary_conv_partial(self, self.spec, self.dtype)
        block = functools.partial(BinaryBlock, conv=conv, norm=norm, binary_conv=binary_conv, variant=self.variant)
        return block, BinaryBlock.expansion

    def stem_activation(self, x: Array) -> Array:
        return L.PReLU(name="nonlinear")(x) if self.variant == "bireal" else x


# -------------------------------------------------------------------------- the registered models

STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
BINARY_STAGES = {18: (4, 4, 4, 4), 34: (6, 8, 12, 6)}  # one conv per block: twice the blocks

for _depth, _block in ((18, "basic"), (34, "basic"), (50, "bottleneck")):
    register_model(f"resnet{_depth}", ResNetBackbone, head="classifier", torch_layout="torchvision",
                   defaults={"stage_sizes": STAGES[_depth], "block": _block})
for _depth in (18, 34):  # the official BBC network (default BinarySpec: the BBC layer)
    register_model(f"bireal_resnet{_depth}", BinaryResNetBackbone, head="classifier", torch_layout="bbc",
                   defaults={"stage_sizes": BINARY_STAGES[_depth], "variant": "bireal"})
# ReActNet's HardBinaryConv: clipped STE through clamp(W, -1, 1), no centring, mean |W| scale in
# the forward only, latent weights initialised U(0, 0.001) as in its code.
register_model("reactnet_resnet18", BinaryResNetBackbone, head="classifier", torch_layout="reactnet",
               defaults={"stage_sizes": BINARY_STAGES[18], "variant": "reactnet",
                         "spec": BinarySpec(weights="ste", weight_norm="none", scale_in_backward=False,
                                            init="reactnet")})
