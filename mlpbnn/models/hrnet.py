"""HRNet pose estimation (Sun et al., arXiv 1902.09212) and its binary twin BHRNet.

Full precision (``hrnet_w32``, ``hrnet_w48``) is ``lib/models/pose_hrnet.py`` of
leoxiaobin/deep-high-resolution-net.pytorch with its parameter names (``.`` written as ``_``
before an index, ``stage3.1.fuse_layers.2.0.1.0`` is ``stage3_1/fuse_layers_2_0_1_0``):

- stem ``conv1``/``bn1``, ``conv2``/``bn2``: two 3x3 stride-2 convolutions, ReLU (stride 4);
- ``layer1``: four Bottlenecks 64 -> 256 (the first with a 1x1 ``downsample``);
- stages 2-4 with 2/3/4 branches of ``width * 2**b`` channels (W32: 32, 64, 128, 256) and 1/4/3
  modules (``stage{s}_{m}``). Before each stage a ``transition`` adds a branch: a 3x3 stride-2
  conv + BN + ReLU from the last branch (``transition{s}_{b}_0_{0,1}``; ``transition1_0_{0,1}``
  maps layer1's 256 channels to branch 0 at the same resolution). A module runs 4 BasicBlocks
  per branch (``branches_{b}_{k}``), then fuses: target branch i sums, for every source j, the
  identity (j = i), a 1x1 conv + BN + nearest x2^(j-i) upsampling (j > i, ``fuse_layers_{i}_{j}_{0,1}``),
  or a chain of i - j 3x3 stride-2 convs + BN with a ReLU between them and none after the last
  (j < i, ``fuse_layers_{i}_{j}_{k}_{0,1}``, C_j channels until the last maps to C_i); each
  target's output is ReLU(sum). The last module of the last stage fuses into branch 0 only
  (``multi_scale_output=False``);
- ``final_layer``: a 1x1 conv with bias on branch 0 to one heatmap per joint, at stride 4.

Every conv is initialised N(0, 0.001) (``init_weights``), BN (1, 0), biases 0; BN has PyTorch's
epsilon 1e-5 and momentum 0.1. W32: 28,536,113 parameters, 7.645 G MACs at 256x192; W48:
63,595,745 and 15.692 G (pose.md section 1.2; HRNet's README: 28.5M / 7.1 "GFLOPs", 63.6M / 14.6, in
units of 2^30 MACs). Inputs need H and W divisible by 32 (the branches' upsampling must meet the
higher branches' sizes, as in PyTorch).

BHRNet (``bhrnet_w32``, ``bhrnet_w48``; the name is BBC's, arXiv 2205.07433, whose pose code is not
public) keeps this topology and makes the stages' BasicBlocks binary as the Bi-Real/BBC ResNets
(arXiv 1808.00278): each 3x3 conv of a BasicBlock becomes a ``resnet.BinaryBlock``,
PReLU(BN(BinConv(sign x)) + x), with its own real shortcut, so a branch of 4 BasicBlocks has 8
binary blocks ``branches_{b}_{0..7}`` (``binary_conv``, ``bn1``, ``nonlinear``) as the BBC ResNet-18
has ``layer1.{0..3}`` for ResNet-18's two BasicBlocks. The binary convolutions use the model's
estimators (default: the BBC MLP on the weights, shared by every binary layer, ``approx_sign`` on
the activations), centred weights and their mean-|w| scale. The ReLUs of stages 2-4 (transitions,
fuse chains, module outputs ``nonlinear_{i}``) become PReLUs: their outputs feed binary
convolutions, and sign(ReLU(y)) is {0, +1} only.

What stays real, and its cost at 256x192 (``python -m mlpbnn.complexity bhrnet_w32
bhrnet_w32:binary_fuse=True --input 256x192``; hrnet_w32 is 7.645 G MACs, 108.9 MiB):

- the stem (134 M MACs, 1.8 % of hrnet_w32's) and ``final_layer`` (1.7 M): always real (BNN
  practice keeps the first and last layers real);
- ``layer1``'s Bottlenecks (868 M, 11.4 %): always real; with a real fuse, and more so with a
  binary one, the largest part of BHRNet's OPs;
- the transitions (368 M, 4.8 %) and fuse layers (384 M, 5.0 %): real by default;
  ``binary_fuse=True`` binarises their convolutions (in the spirit of BiHRNet, arXiv 2311.10296;
  no shortcut of their own: the identity term of every fuse sum is the real path).

bhrnet_w32 by default: 1.756 G FLOPs + 5.889 G BOPs = 1.848 G OPs (FLOPs + BOPs/64), 15.2 MiB
with 1-bit weights; with ``binary_fuse``: 1.004 G + 6.641 G = 1.108 G OPs, 4.9 MiB.

Variables sit at the top level beside the head's (``nn.share_scope``); ``mlpbnn.convert`` maps
the names by rule (``pose_hrnet`` layout; BHRNet in the BBC layout: ``binary_conv.weights``,
``meta_net``).
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
from mlpbnn.models.heads import Head
from mlpbnn.models.registry import HEADS, register_model
from mlpbnn.models.resnet import BasicBlock, BinaryBlock, Bottleneck, binary_conv_partial, conv_partial, norm_partial
from mlpbnn.models.simple_baseline import pose_init
from mlpbnn.spec import BinarySpec

Array = jax.Array
ModuleDef = Callable[..., nn.Module]

# HRNet-W32 / W48 (experiments/coco/hrnet/w{32,48}_256x192_adam_lr1e-3.yaml): modules of stages 2-4,
# BasicBlocks per branch, stage-1 Bottlenecks.
STAGE_MODULES = (1, 4, 3)


def upsample_nearest(x: Array, factor: int) -> Array:
    """nn.Upsample(scale_factor=factor, mode='nearest') on NHWC: every pixel repeated factor x factor."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def _make_conv(conv: ModuleDef, binary_conv: ModuleDef | None, progress: Array | float | None) -> Callable:
    """``make(features, kernel, strides, padding, name)`` -> a one-argument layer: the real conv, or
    the binary one (sign of the input, binary weights) when ``binary_conv`` is given."""
    def make(features: int, kernel: int, strides: int, padding: int, name: str) -> Callable[[Array], Array]:
        if binary_conv is None:
            return conv(features, (kernel, kernel), strides, padding, name=name)
        layer = binary_conv(features, kernel, strides, padding, name=name)
        return lambda x: layer(x, progress)
    return make


def _make_activation(prelu: bool) -> Callable[[str], Callable[[Array], Array]]:
    """HRNet's ReLU, or BHRNet's PReLU (named as the ReLU it replaces)."""
    return (lambda name: L.PReLU(name=name)) if prelu else (lambda name: nn.relu)


class HighResolutionModule(nn.Module):
    """One module of an HRNet stage: ``num_units`` blocks per branch, then the fuse layers.

    Attributes:
      channels: the branches' channels, highest resolution first.
      num_units: blocks per branch (``block(planes, name=)(x, progress)``).
      block: the branch block partial (BasicBlock, or BHRNet's BinaryBlock).
      conv, norm: real conv and BN partials.
      fuse_binary_conv: a BinaryConv partial for binary fuse convolutions, or None (real).
      prelu: PReLU instead of ReLU after the fuse chains' inner convs and the sums.
      multi_scale_output: fuse into every branch (False: into branch 0 only).

    ``__call__(xs, progress)`` takes and returns a list of NHWC maps, one per branch.
    """

    channels: tuple[int, ...]
    num_units: int
    block: ModuleDef
    conv: ModuleDef
    norm: ModuleDef
    fuse_binary_conv: ModuleDef | None = None
    prelu: bool = False
    multi_scale_output: bool = True

    @nn.compact
    def __call__(self, xs: Sequence[Array], progress: Array | float | None = None) -> list[Array]:
        n = len(self.channels)
        if len(xs) != n:
            raise ValueError(f"{self.name}: {n} branches but {len(xs)} inputs")
        xs = list(xs)
        for b in range(n):
            for k in range(self.num_units):
                xs[b] = self.block(self.channels[b], name=f"branches_{b}_{k}")(xs[b], progress)
        if n == 1:  # pose_hrnet: a one-branch module has no fuse layers
            return xs
        conv = _make_conv(self.conv, self.fuse_binary_conv, progress)
        act = _make_activation(self.prelu)
        outs = []
        for i in range(n if self.multi_scale_output else 1):
            total = None
            for j in range(n):  # summed in PyTorch's order (source 0 first)
                if j == i:
                    z = xs[j]
                elif j > i:
                    z = conv(self.channels[i], 1, 1, 0, f"fuse_layers_{i}_{j}_0")(xs[j])
                    z = upsample_nearest(self.norm(name=f"fuse_layers_{i}_{j}_1")(z), 2 ** (j - i))
                else:
                    z = xs[j]
                    for k in range(i - j):
                        last = k == i - j - 1
                        z = conv(self.channels[i] if last else self.channels[j], 3, 2, 1,
                                 f"fuse_layers_{i}_{j}_{k}_0")(z)
                        z = self.norm(name=f"fuse_layers_{i}_{j}_{k}_1")(z)
                        if not last:
                            z = act(f"fuse_layers_{i}_{j}_{k}_2")(z)
                total = z if total is None else total + z
            outs.append(act(f"nonlinear_{i}")(total))
        return outs


class HRNetBackbone(nn.Module):
    """pose_hrnet without its final layer: returns the last stage's maps (branch 0 only, a tuple).

    Attributes:
      width: channels of branch 0 (32 for W32, 48 for W48); branch b has ``width * 2**b``.
      stage_modules: modules of stages 2, 3, 4, ... (one more branch per stage; (1, 4, 3) in HRNet).
      stage_blocks: BasicBlocks per branch in every module (4).
      layer1_blocks: Bottlenecks of stage 1 (4).
      stem_width: channels of the stem and of layer1's Bottlenecks (64; layer1 outputs 4x that).
      dtype: compute dtype of the convolutions (BN, and so the streams between blocks, float32).
    """

    width: int = 32
    stage_modules: Sequence[int] = STAGE_MODULES
    stage_blocks: int = 4
    layer1_blocks: int = 4
    stem_width: int = 64
    dtype: Any = jnp.float32

    def branch_parts(self, conv: ModuleDef, norm: ModuleDef) -> tuple[ModuleDef, int, ModuleDef | None, bool]:
        """(branch block partial, blocks per BasicBlock, binary conv partial for transitions and
        fuse layers or None, PReLU instead of ReLU in stages 2+)."""
        return functools.partial(BasicBlock, conv=conv, norm=norm), 1, None, False

    @nn.compact
    def __call__(self, x: Array, train: bool = False, progress: Array | float | None = None) -> tuple[Array, ...]:
        if not self.stage_modules or min(self.stage_modules) < 1:
            raise ValueError(f"stage_modules must be one or more positive counts, got {tuple(self.stage_modules)}")
        if min(self.width, self.stage_blocks, self.layer1_blocks, self.stem_width) < 1:
            raise ValueError("width, stage_blocks, layer1_blocks and stem_width must be positive")
        conv = conv_partial(self.dtype, pose_init)
        norm = norm_partial(train, self.dtype)
        block, units, fuse_binary_conv, prelu = self.branch_parts(conv, norm)
        make_conv = _make_conv(conv, fuse_binary_conv, progress)
        act = _make_activation(prelu)

        size = x.shape[1:3]
        x = x.astype(self.dtype)
        x = nn.relu(norm(name="bn1")(conv(self.stem_width, (3, 3), 2, 1, name="conv1")(x)))
        x = nn.relu(norm(name="bn2")(conv(self.stem_width, (3, 3), 2, 1, name="conv2")(x)))
        factor = 2 ** len(self.stage_modules)  # the lowest branch's upsampling must meet branch 0 exactly
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"an input of {size[0]}x{size[1]} gives a {x.shape[1]}x{x.shape[2]} stride-4 map, which "
                             f"{len(self.stage_modules)} halvings cannot bring back by nearest upsampling: use a "
                             f"height and width that are multiples of {4 * factor}")
        for j in range(self.layer1_blocks):
            x = Bottleneck(self.stem_width, conv, norm, downsample=j == 0, name=f"layer1_{j}")(x)
        xs, previous = [x], (self.stem_width * Bottleneck.expansion,)
        last_stage = len(self.stage_modules) - 1
        for s, n_modules in enumerate(self.stage_modules):
            channels = tuple(self.width * 2 ** b for b in range(s + 2))
            prefix = f"transition{s + 1}"
            inputs = []
            for b, c in enumerate(channels):
                if b < len(previous):  # an existing branch: a 3x3 conv only where the channels change
                    z = xs[b]
                    if c != previous[b]:
                        z = make_conv(c, 3, 1, 1, f"{prefix}_{b}_0")(z)
                        z = act(f"{prefix}_{b}_2")(norm(name=f"{prefix}_{b}_1")(z))
                else:  # a new branch: 3x3 stride-2 convs from the last one
                    z = xs[-1]
                    for k in range(b + 1 - len(previous)):
                        out = c if k == b - len(previous) else previous[-1]
                        z = make_conv(out, 3, 2, 1, f"{prefix}_{b}_{k}_0")(z)
                        z = act(f"{prefix}_{b}_{k}_2")(norm(name=f"{prefix}_{b}_{k}_1")(z))
                inputs.append(z)
            xs = inputs
            for m in range(n_modules):
                multi = not (s == last_stage and m == n_modules - 1)
                xs = HighResolutionModule(channels, self.stage_blocks * units, block, conv, norm, fuse_binary_conv,
                                          prelu, multi, name=f"stage{s + 2}_{m}")(xs, progress)
            previous = channels
        return tuple(xs)


class BinaryHRNetBackbone(HRNetBackbone):
    """BHRNet's backbone: HRNet with binary Bi-Real/BBC blocks in the stages (see the module
    docstring); the estimator and weight options are those of ``BinaryResNetBackbone``.

    Attributes (beside HRNetBackbone's):
      spec: how every binary conv binarizes (``mlpbnn.BinarySpec``; one learnable theta for the
        network unless ``spec.share`` is False).
      binary_fuse: binarise the transition and fuse convolutions too.
    """

    spec: BinarySpec = BinarySpec()
    binary_fuse: bool = False

    def branch_parts(self, conv: ModuleDef, norm: ModuleDef) -> tuple[ModuleDef, int, ModuleDef | None, bool]:
        binary_conv = binary_conv_partial(self, self.spec, self.dtype)
        block = functools.partial(BinaryBlock, conv=conv, norm=norm, binary_conv=binary_conv, variant="bireal")
        return block, 2, binary_conv if self.binary_fuse else None, True


@HEADS("hrnet")
class HRNetHead(Head):
    """Heatmap model: ``backbone`` (an HRNet) -> ``final_layer``, a 1x1 conv with bias on its
    branch-0 map (stride 4), initialised N(0, 0.001), bias 0; always real. Returns (B, H/4, W/4,
    num_joints) heatmaps in at least float32. Variables at the top level beside the backbone's."""

    backbone: nn.Module
    num_joints: int = 17

    kind: ClassVar[str] = "heatmap"
    head_arg: ClassVar[str] = "num_joints"

    def setup(self) -> None:
        nn.share_scope(self, self.backbone)

    @nn.compact
    def __call__(self, x: Array, train: bool = False, progress: Array | float | None = None) -> Array:
        y = self.backbone(x, train=train, progress=progress)[0]
        dtype = jnp.promote_types(y.dtype, jnp.float32)
        final = nn.Conv(self.num_joints, (1, 1), padding=0, use_bias=True, dtype=dtype, param_dtype=jnp.float32,
                        kernel_init=pose_init, bias_init=nn.initializers.zeros,
                        conv_general_dilated=conv_general_dilated, name="final_layer")
        return final(y.astype(dtype))


# HRNet (arXiv 1902.09212; lib/models/pose_hrnet.py) and BHRNet, its binary twin.
for _width in (32, 48):
    register_model(f"hrnet_w{_width}", HRNetBackbone, head="hrnet", torch_layout="pose_hrnet",
                   defaults={"width": _width})
    register_model(f"bhrnet_w{_width}", BinaryHRNetBackbone, head="hrnet", torch_layout="bbc",
                   defaults={"width": _width})
