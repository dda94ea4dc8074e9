"""SimpleBaseline pose estimation (Xiao et al., arXiv 1804.06208): a backbone's last feature map,
three 4x4 stride-2 deconvolutions, a 1x1 conv to one heatmap per joint; its binary twin SBPN.

Full precision (``simple_baseline_resnet18/34/50``) is the official ``pose_resnet`` of
microsoft/human-pose-estimation.pytorch and leoxiaobin/deep-high-resolution-net.pytorch
(``lib/models/pose_resnet.py``): ``deconv_layers.{0,3,6}`` ConvTranspose2d(C, 256, 4, 2, 1,
bias=False), ``deconv_layers.{1,4,7}`` BatchNorm2d(256), ReLU, then ``final_layer`` Conv2d(256, K,
1) with bias; deconvolutions and ``final_layer`` initialised N(0, 0.001), bias 0, BN (1, 0). The
heatmaps are at stride 4: (B, H/4, W/4, K) for a (B, H, W, 3) input, NHWC.

SBPN (``sbpn_resnet18/34``; the name is BBC's, arXiv 2205.07433, whose pose code is not public)
puts this head on the Bi-Real/BBC binary ResNet. With ``head='binary'`` (the default there) the
deconvolutions are ``BinaryConvTranspose`` layers with the backbone's estimators, weight options
and, by default, its shared theta; ``head='real'`` keeps the full-precision head above. Two
choices make the binary head a Bi-Real network rather than binary convs dropped into
SimpleBaseline:

- PReLU instead of ReLU after each binary deconvolution's BN (``deconv_layers.{2,5,8}``, as the
  Bi-Real blocks): the next layer binarises its input, and sign(ReLU(y)) is {0, +1} only
  (sign(0) = 0), which would throw away the sign of every negative response.
- ``head_shortcut``: a real shortcut around each binary deconvolution (Bi-Real's principle of a
  real path around every binary conv, arXiv 1808.00278): the block computes
  PReLU(BN(BinConvT(sign(x))) + up(x)), where ``up`` is nearest x2 upsampling with the
  channels averaged in adjacent groups when C_in > C_out (512 -> 256: the mean of channels 2c
  and 2c + 1; repeated when C_in < C_out, for narrow test networks). It has no parameters; its
  cost is C_in H W adds for the averaging and the sum's 2H x 2W x C_out adds, elementwise
  operations that the complexity count does not count (as it does not count the backbone's
  residual adds).

Whether the head is binary dominates SBPN's cost: the deconvolutions are 38 % of
pose_resnet_18's MACs (1.107 G of 2.897 G at 256x192). ``python -m mlpbnn.complexity sbpn_resnet18
sbpn_resnet18:head=real --input 256x192``: 0.191 G OPs (FLOPs + BOPs/64) and 2.58 MiB with the
binary head, 1.281 G OPs and 18.1 MiB with the real one.

The final 1x1 conv stays real (BNN practice: the first and last layers stay real; it is ~0.5 %
of pose_resnet_18's MACs). The heatmaps are at least float32 whatever the backbone's compute
dtype (the deconvolutions compute in it; every BN, hence the stream between them, is float32).

Variables sit at the top level beside the backbone's (``nn.share_scope``, as the Classifier), named
as the PyTorch modules with ``.`` as ``_`` (``deconv_layers_0``, ``final_layer``), so
``mlpbnn.convert`` maps names by rule.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlpbnn import layers as L
from mlpbnn.conv import conv_general_dilated
from mlpbnn.models.heads import Head
from mlpbnn.models.registry import HEADS, register_model
from mlpbnn.models.resnet import BINARY_STAGES, STAGES, BinaryResNetBackbone, ResNetBackbone, norm_partial
from mlpbnn.spec import INPUT_ROLE, WEIGHT_ROLE, BinarySpec, shared_theta

Array = jax.Array

HEAD_TYPES = ("real", "binary")

# pose_resnet's init of the deconvolutions and final_layer (``init_weights``): N(0, 0.001).
pose_init = nn.initializers.normal(0.001)


def upsample_shortcut(x: Array, features: int) -> Array:
    """The binary head's parameter-free real path to ``features`` channels at twice the
    resolution: channels averaged in adjacent groups of C_in / ``features`` when C_in is larger
    (each repeated ``features`` / C_in times when it is smaller; one must divide the other), then
    nearest x2 upsampling."""
    c = x.shape[-1]
    if c > features and c % features == 0:
        x = jnp.mean(x.reshape(*x.shape[:-1], features, c // features), axis=-1)
    elif c < features and features % c == 0:
        x = jnp.repeat(x, features // c, axis=-1)
    elif c != features:
        raise ValueError(f"head_shortcut needs input channels ({c}) and output channels ({features}) of which "
                         "one divides the other")
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


@HEADS("simple_baseline")
class SimpleBaseline(Head):
    """Heatmap model: ``backbone`` -> deconvolution head -> ``final_layer``.

    Attributes:
      backbone: returns a tuple of feature maps; the head takes the last one.
      num_joints: heatmaps K (COCO: 17).
      head: 'real' (pose_resnet's head) or 'binary' (binary deconvolutions, PReLU; needs a
        binary backbone, whose estimators and weight options it uses).
      head_shortcut: the binary head's real shortcut around each deconvolution.
      deconv_features, num_deconvs: 256 and 3 in SimpleBaseline (each deconvolution doubles H, W).

    ``__call__(x, train=False, progress=None)`` returns the (B, H', W', K) heatmaps, H' = H / 4
    for the ResNets (stride 32, three x2 deconvolutions).
    """

    backbone: nn.Module
    num_joints: int = 17
    head: str = "real"
    head_shortcut: bool = True
    deconv_features: int = 256
    num_deconvs: int = 3

    kind: ClassVar[str] = "heatmap"
    head_arg: ClassVar[str] = "num_joints"

    @classmethod
    def check_backbone(cls, name: str, backbone: nn.Module, head: Any = "real", **options: Any) -> None:
        if head not in HEAD_TYPES:
            raise ValueError(f"head must be one of {HEAD_TYPES} for model {name!r}, got {head!r}")
        if head == "binary" and not isinstance(getattr(backbone, "spec", None), BinarySpec):
            raise ValueError(f"head='binary' needs a binary backbone; {name!r} is full precision")

    def setup(self) -> None:
        nn.share_scope(self, self.backbone)

    @nn.compact
    def __call__(self, x: Array, train: bool = False, progress: Array | float | None = None) -> Array:
        if self.head not in HEAD_TYPES:
            raise ValueError(f"head must be one of {HEAD_TYPES}, got {self.head!r}")
        y = self.backbone(x, train=train, progress=progress)[-1]
        dtype = getattr(self.backbone, "dtype", jnp.float32)
        norm = norm_partial(train, dtype)
        binary = self.head == "binary"
        deconv = self._binary_deconv(dtype) if binary else self._real_deconv(dtype)
        for i in range(self.num_deconvs):
            out = deconv(self.deconv_features, name=f"deconv_layers_{3 * i}")(y, progress)
            out = norm(name=f"deconv_layers_{3 * i + 1}")(out)
            if binary:
                if self.head_shortcut:
                    out = out + upsample_shortcut(y, self.deconv_features).astype(out.dtype)
                y = L.PReLU(name=f"deconv_layers_{3 * i + 2}")(out)
            else:
                y = nn.relu(out)
        out_dtype = jnp.promote_types(y.dtype, jnp.float32)
        final = nn.Conv(self.num_joints, (1, 1), padding=0, use_bias=True, dtype=out_dtype, param_dtype=jnp.float32,
                        kernel_init=pose_init, bias_init=nn.initializers.zeros,
                        conv_general_dilated=conv_general_dilated, name="final_layer")
        return final(y.astype(out_dtype))

    def _real_deconv(self, dtype: Any) -> Any:
        def make(features: int, name: str) -> L.BinaryConvTranspose:
            return L.BinaryConvTranspose(features, 4, 2, 1, spec=L.REAL, dtype=dtype, kernel_init=pose_init, name=name)
        return make

    def _binary_deconv(self, dtype: Any) -> Any:
        """The backbone's spec and its shared thetas (the backbone's variables, in this shared scope)."""
        spec = getattr(self.backbone, "spec", None)
        if not isinstance(spec, BinarySpec):
            raise ValueError(f"head='binary' needs a binary backbone, got {type(self.backbone).__name__}")
        thetas = {"input_theta": shared_theta(self, spec, INPUT_ROLE),
                  "weight_theta": shared_theta(self, spec, WEIGHT_ROLE)}

        def make(features: int, name: str) -> L.BinaryConvTranspose:
            return L.BinaryConvTranspose(features, 4, 2, 1, spec=spec, dtype=dtype, name=name, **thetas)
        return make


# SimpleBaseline (arXiv 1804.06208) on torchvision ResNets: the official pose_resnet.
for _depth, _block in ((18, "basic"), (34, "basic"), (50, "bottleneck")):
    register_model(f"simple_baseline_resnet{_depth}", ResNetBackbone, head="simple_baseline",
                   torch_layout="pose_resnet", defaults={"stage_sizes": STAGES[_depth], "block": _block})
# SBPN (BBC, arXiv 2205.07433): the Bi-Real/BBC binary ResNet with a binary SimpleBaseline head.
for _depth in (18, 34):
    register_model(f"sbpn_resnet{_depth}", BinaryResNetBackbone, head="simple_baseline", torch_layout="bbc",
                   defaults={"stage_sizes": BINARY_STAGES[_depth], "variant": "bireal"},
                   head_defaults={"head": "binary"})
