"""Independent PyTorch references for parity tests.

Written for the tests from the method descriptions (not from mlpbnn): hand-designed estimators are
``sign(x) + (F(x) - F(x).detach())`` around their soft function F, so their gradients come from
torch autograd of F rather than from a derivative formula; the learnable MLP mirrors the
structure and parameter names of the official BBC ``MetaConv_v2``/``MetaConv_v3`` modules with
``torch.autograd.Function`` for the gate, the sign and the argmax.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def hard_sign(x: torch.Tensor, zero: float = 1.0) -> torch.Tensor:
    s = torch.sign(x)
    return torch.where(x == 0, torch.full_like(x, zero), s)


def with_soft_gradient(x: torch.Tensor, soft: torch.Tensor, zero: float = 1.0) -> torch.Tensor:
    """Forward exactly sign(x); backward the autograd derivative of ``soft``."""
    return hard_sign(x.detach(), zero) + (soft - soft.detach())


class ClippedIdentity(torch.autograd.Function):
    """STE with the strict gate 1[-1 < x < 1] (the BBC/Bi-Real BinActive backward)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return hard_sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ((x < 1) & (x > -1)).to(g.dtype)


def approx_sign_soft(x: torch.Tensor) -> torch.Tensor:
    """Bi-Real's piecewise quadratic: -1, x^2 + 2x, -x^2 + 2x, 1 on the four intervals."""
    below = (x < -1).float()
    neg = (x < 0).float()
    inside = (x < 1).float()
    out = -below + (x * x + 2 * x) * (1 - below)
    out = out * neg + (-x * x + 2 * x) * (1 - neg)
    return out * inside + (1 - inside)


def soft_functions(name: str, hp: dict):
    """The soft function F whose derivative is the estimator's backward (None for learnable)."""
    if name == "ste":
        clip = hp.get("clip", 1.0)
        return lambda x: torch.clamp(x, -clip, clip)
    if name == "approx_sign":
        return approx_sign_soft
    if name == "swish_sign":
        b = hp.get("beta", 5.0)
        return lambda x: 2 * torch.sigmoid(b * x) * (1 + b * x * (1 - torch.sigmoid(b * x))) - 1
    if name == "tanh":
        b = hp.get("beta", 1.0)
        return lambda x: torch.tanh(b * x)
    if name == "ede":
        t, k = hp["t"], hp["k"]
        return lambda x: k * torch.tanh(t * x)
    if name == "fda":
        n, w = hp["n"], hp.get("omega", 0.1)

        def fourier(x):
            xc = torch.clamp(x, -1, 1)
            return 4 / math.pi * sum(torch.sin((2 * i + 1) * w * xc) / (2 * i + 1) for i in range(int(n) + 1))
        return fourier
    if name == "reste":
        o, t = hp["o"], hp.get("t", 1.5)

        lo, hi = float(np.float32(0.1)), float(np.float32(t))  # the float32 breakpoints

        def power(x):
            a = x.abs()
            linear = x * (0.1 ** (1 / o) / 0.1)
            # clamp below too: the unused branch must not produce inf * 0 = nan gradients at 0
            return torch.where(a <= lo, linear, torch.sign(x) * torch.clamp(a, lo, hi) ** (1 / o))
        return power
    raise KeyError(name)


class GatedLinear(torch.autograd.Function):
    """Identity forward; backward passes g only where -1 < f < 1 (strict)."""

    @staticmethod
    def forward(ctx, f):
        ctx.save_for_backward(f)
        return f.clone()

    @staticmethod
    def backward(ctx, g):
        (f,) = ctx.saved_tensors
        return g * ((f < 1) & (f > -1)).to(g.dtype)


class SignFromLogits(torch.autograd.Function):
    """Forward sign(x); backward: nothing to x directly, g copied to every MLP output."""

    @staticmethod
    def forward(ctx, x, f, zero):
        ctx.k = f.shape[1]
        return hard_sign(x, zero)

    @staticmethod
    def backward(ctx, g):
        g = g.reshape(-1, 1)
        return None, g.expand(-1, ctx.k).contiguous(), None


class MetaNet(nn.Module):
    """BBC's shared element-wise estimator network, parameter names as the official code."""

    def __init__(self, hidden: int = 100, outputs: int = 2, nonlinear: str = "tanh"):
        super().__init__()
        self.network = nn.Sequential()
        self.network.add_module("Linear0", nn.Linear(1, hidden, bias=False))
        if nonlinear == "tanh":
            self.network.add_module("Tanh0", nn.Tanh())
        elif nonlinear == "relu":
            self.network.add_module("ReLU0", nn.ReLU())
        self.network.add_module("Linear1", nn.Linear(hidden, outputs, bias=False))

    def forward(self, x, zero: float = 1.0):
        f = GatedLinear.apply(self.network(x.reshape(-1, 1)))
        return SignFromLogits.apply(x, f, zero)


class ArgmaxSign(torch.autograd.Function):
    """Index of the larger logit (first on ties), g copied to both logits."""

    @staticmethod
    def forward(ctx, f):
        return torch.max(f, dim=1)[1].reshape(-1, 1).float()

    @staticmethod
    def backward(ctx, g):
        return torch.cat([g, g], dim=1)


class MetaClassifier(nn.Module):
    """BBC's argmax variant (MetaConv_v3, one linear layer 1 -> 2)."""

    def __init__(self):
        super().__init__()
        self.network = nn.Sequential()
        self.network.add_module("Linear0", nn.Linear(1, 2, bias=False))

    def forward(self, x):
        idx = ArgmaxSign.apply(self.network(x.reshape(-1, 1)))
        return (2 * idx - 1).reshape(x.shape)


def meta_net_from_theta(theta: dict, nonlinear: str = "tanh") -> MetaNet:
    net = MetaNet(theta["w0"].shape[1], theta["w1"].shape[1], nonlinear)
    with torch.no_grad():
        net.network.Linear0.weight.copy_(torch.tensor(np.asarray(theta["w0"]).T))
        net.network.Linear1.weight.copy_(torch.tensor(np.asarray(theta["w1"]).T))
    return net


class MetaConv(nn.Module):
    """The official BBC binary conv: centred latent weights, detached mean |w_c| scale, shared
    meta net on the weights; ``pad_value`` pads the (binary) input before a VALID conv."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, padding: int = 1,
                 pad_value: float = 0.0):
        super().__init__()
        self.stride, self.padding, self.pad_value = stride, padding, pad_value
        self.weights = nn.Parameter(torch.empty(cout, cin, k, k))
        nn.init.xavier_uniform_(self.weights)

    def forward(self, x, meta_net):
        w = self.weights
        wc = w - w.reshape(w.shape[0], -1).mean(-1).reshape(-1, 1, 1, 1)
        scale = wc.abs().mean(dim=(1, 2, 3), keepdim=True).detach()
        wb = meta_net(wc) * scale
        p = self.padding
        x = F.pad(x, (p, p, p, p), value=self.pad_value)
        return F.conv2d(x, wb, stride=self.stride)


def nhwc_to_torch(x) -> torch.Tensor:
    return torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous()


def hwio_to_oihw(k) -> torch.Tensor:
    return torch.tensor(np.asarray(k)).permute(3, 2, 0, 1).contiguous()


def oihw_to_hwio(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(2, 3, 1, 0).numpy()


# ------------------------------------------------------------------------------ networks
# Same structure and parameter names as the originals (official BBC birealnetimagenet.py,
# ReActNet's resnet, torchvision's resnet), written for the tests; sizes are configurable
# so the tests can run tiny versions.


def binary_activation(x: torch.Tensor) -> torch.Tensor:
    """Bi-Real's BinaryActivation: forward sign, backward the piecewise-quadratic derivative."""
    return with_soft_gradient(x, approx_sign_soft(x))


def _stem(module: nn.Module, width: int, small_inputs: bool, prelu: bool) -> None:
    if small_inputs:
        module.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
    else:
        module.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    module.bn1 = nn.BatchNorm2d(width)
    if prelu:
        module.nonlinear = nn.PReLU(width)
    module.maxpool = nn.Identity() if small_inputs else nn.MaxPool2d(3, 2, 1)


class BBCBlock(nn.Module):
    def __init__(self, inplanes, planes, stride, downsample):
        super().__init__()
        self.binary_conv = MetaConv(inplanes, planes, stride=stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.nonlinear = nn.PReLU(planes)
        self.downsample = downsample

    def forward(self, x, meta_net):
        out = self.bn1(self.binary_conv(binary_activation(x), meta_net))
        residual = x if self.downsample is None else self.downsample(x)
        return self.nonlinear(out + residual)


class LearnableBias(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x):
        return x + self.bias.expand_as(x)


class HardBinaryConv(nn.Module):
    """ReActNet's binary conv: alpha * sign(W) forward, clamp(W, -1, 1) gradient."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride = stride
        self.weights = nn.Parameter(torch.rand(cout, cin, 3, 3) * 0.001)

    def forward(self, x):
        w = self.weights
        scale = w.abs().mean(dim=(1, 2, 3), keepdim=True).detach()
        clipped = torch.clamp(w, -1.0, 1.0)
        wb = (scale * hard_sign(w)).detach() - clipped.detach() + clipped
        return F.conv2d(x, wb, stride=self.stride, padding=1)


class ReActBlock(nn.Module):
    def __init__(self, inplanes, planes, stride, downsample):
        super().__init__()
        self.move0 = LearnableBias(inplanes)
        self.binary_conv = HardBinaryConv(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.move1 = LearnableBias(planes)
        self.prelu = nn.PReLU(planes)
        self.move2 = LearnableBias(planes)
        self.downsample = downsample

    def forward(self, x, meta_net=None):
        out = self.bn1(self.binary_conv(binary_activation(self.move0(x))))
        residual = x if self.downsample is None else self.downsample(x)
        return self.move2(self.prelu(self.move1(out + residual)))


class BinaryResNetRef(nn.Module):
    """Official BBC BiRealNet (variant 'bireal') or ReActNet's ResNet (variant 'reactnet')."""

    def __init__(self, stages, num_classes=1000, width=64, small_inputs=False, variant="bireal"):
        super().__init__()
        self.variant = variant
        _stem(self, width, small_inputs, prelu=variant == "bireal")
        block = BBCBlock if variant == "bireal" else ReActBlock
        inplanes = width
        for i, n in enumerate(stages):
            planes = width * 2 ** i
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                down = None
                if j == 0 and (stride != 1 or inplanes != planes):
                    down = nn.Sequential(nn.AvgPool2d(2, stride), nn.Conv2d(inplanes, planes, 1, bias=False),
                                         nn.BatchNorm2d(planes))
                blocks.append(block(inplanes, planes, stride, down))
                inplanes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        if variant == "bireal":
            self.meta_net = MetaNet()

    def forward(self, x):
        x = self.bn1(self.conv1(x))
        if self.variant == "bireal":
            x = self.nonlinear(x)
        x = self.maxpool(x)
        for i in range(1, 5):
            for block in getattr(self, f"layer{i}", []):
                x = block(x, getattr(self, "meta_net", None))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TVBasic(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class TVBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchvisionResNet(nn.Module):
    """torchvision's ResNet layout and names (conv1, bn1, layerN.i.*, downsample.0/1, fc)."""

    def __init__(self, stages, block="basic", num_classes=1000, width=64, small_inputs=False):
        super().__init__()
        cls = TVBasic if block == "basic" else TVBottleneck
        _stem(self, width, small_inputs, prelu=False)
        inplanes = width
        for i, n in enumerate(stages):
            planes = width * 2 ** i
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                down = None
                if j == 0 and (stride != 1 or inplanes != planes * cls.expansion):
                    down = nn.Sequential(nn.Conv2d(inplanes, planes * cls.expansion, 1, stride, bias=False),
                                         nn.BatchNorm2d(planes * cls.expansion))
                blocks.append(cls(inplanes, planes, stride, down))
                inplanes = planes * cls.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}", nn.Identity())(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def randomize_batch_norm(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN affine parameters, running statistics and PReLU slopes, so that a
    converter that swaps or drops them cannot pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
            elif isinstance(m, LearnableBias):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


# ------------------------------------------------------------------------------ pose (SimpleBaseline)
# pose_resnet's head (Xiao et al., arXiv 1804.06208; lib/models/pose_resnet.py of
# microsoft/human-pose-estimation.pytorch): deconv_layers = [ConvTranspose2d(C, 256, 4, 2, 1,
# output_padding=0, bias=False), BatchNorm2d, ReLU] x 3, final_layer = Conv2d(256, K, 1) with bias.


def _deconv_head(module: nn.Module, inplanes: int, features: int, num_joints: int, num_deconvs: int = 3) -> None:
    layers: list[nn.Module] = []
    for _ in range(num_deconvs):
        layers += [nn.ConvTranspose2d(inplanes, features, 4, 2, 1, output_padding=0, bias=False),
                   nn.BatchNorm2d(features), nn.ReLU(inplace=True)]
        inplanes = features
    module.deconv_layers = nn.Sequential(*layers)
    module.final_layer = nn.Conv2d(features, num_joints, 1, 1, 0)
    for m in module.deconv_layers.modules():  # pose_resnet.init_weights
        if isinstance(m, nn.ConvTranspose2d):
            nn.init.normal_(m.weight, std=0.001)
    nn.init.normal_(module.final_layer.weight, std=0.001)
    nn.init.zeros_(module.final_layer.bias)


class PoseResNet(TorchvisionResNet):
    """pose_resnet: the torchvision trunk (no avgpool/fc), ``deconv_layers``, ``final_layer``;
    NCHW heatmaps at stride 4."""

    def __init__(self, stages, block="basic", num_joints=17, width=64, small_inputs=False, features=256):
        super().__init__(stages, block, 1, width, small_inputs)
        del self.avgpool, self.fc
        expansion = 4 if block == "bottleneck" else 1
        _deconv_head(self, width * 2 ** (len(stages) - 1) * expansion, features, num_joints)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}", nn.Identity())(x)
        return self.final_layer(self.deconv_layers(x))


class MetaConvTranspose(nn.Module):
    """A binary ConvTranspose2d(k=4, s=2, p=1) in the style of the official MetaConv: latent weights
    (C_in, C_out, 4, 4) centred per output channel, detached mean |w| scale per output channel,
    the shared meta net's sign."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cin, cout, 4, 4))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x, meta_net):
        w = self.weight
        wc = w - w.mean(dim=(0, 2, 3), keepdim=True)
        scale = wc.abs().mean(dim=(0, 2, 3), keepdim=True).detach()
        wb = meta_net(wc) * scale
        return F.conv_transpose2d(x, wb, stride=2, padding=1)


class SBPN(BinaryResNetRef):
    """The official BBC Bi-Real trunk with the binary SimpleBaseline head of mlpbnn's SBPN:
    x -> PReLU(BN(MetaConvTranspose(sign(x))) + shortcut(x)), shortcut = mean of adjacent
    channel groups, nearest x2 upsampling; then the real final_layer."""

    def __init__(self, stages, num_joints=17, width=64, small_inputs=False, features=256, shortcut=True):
        super().__init__(stages, 1, width, small_inputs, "bireal")
        del self.avgpool, self.fc
        self.shortcut, self.features = shortcut, features
        inplanes, layers = width * 2 ** (len(stages) - 1), []
        for _ in range(3):
            layers += [MetaConvTranspose(inplanes, features), nn.BatchNorm2d(features), nn.PReLU(features)]
            inplanes = features
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(features, num_joints, 1)

    def forward(self, x):
        x = self.maxpool(self.nonlinear(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            for block in getattr(self, f"layer{i}", []):
                x = block(x, self.meta_net)
        for i in range(3):
            conv, bn, act = self.deconv_layers[3 * i: 3 * i + 3]
            out = bn(conv(binary_activation(x), self.meta_net))
            if self.shortcut:
                n, c, h, w = x.shape
                short = (x.reshape(n, self.features, c // self.features, h, w).mean(2) if c >= self.features
                         else x.repeat_interleave(self.features // c, dim=1))
                out = out + F.interpolate(short, scale_factor=2, mode="nearest")
            x = act(out)
        return self.final_layer(x)


# ------------------------------------------------------------------------------ pose (HRNet, BHRNet)
# pose_hrnet (Sun et al., arXiv 1902.09212; lib/models/pose_hrnet.py of
# leoxiaobin/deep-high-resolution-net.pytorch), written from its description (pose.md section 6):
# stem conv1/bn1/conv2/bn2 (3x3 stride 2, ReLU), layer1 Bottlenecks, transition{s} ModuleLists (None
# where a branch passes through), stage{s} Sequentials of modules with ``branches`` and
# ``fuse_layers``, final_layer. The binary variant (mlpbnn's BHRNet) has the BBC blocks in the
# branches (two per BasicBlock), PReLUs for the stages' ReLUs (``transitionS.B.2``,
# ``fuse_layers.I.J.K.2``, ``nonlinear.I``) and, with ``binary_fuse``, binary transition and fuse
# convolutions; one shared ``meta_net``. Sizes are configurable so the tests can run narrow ones.


class MetaConvSign(nn.Module):
    """A binary Conv2d on sign(x) (Bi-Real's activation estimator) with BBC weights (centred per
    output channel, detached mean |w| scale, the shared meta net's sign); parameter ``weight``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, padding: int):
        super().__init__()
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.empty(cout, cin, k, k))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x, meta_net):
        w = self.weight
        wc = w - w.mean(dim=(1, 2, 3), keepdim=True)
        scale = wc.abs().mean(dim=(1, 2, 3), keepdim=True).detach()
        return F.conv2d(binary_activation(x), meta_net(wc) * scale, stride=self.stride, padding=self.padding)


def run_sequential(module: nn.Module, x: torch.Tensor, meta_net: nn.Module | None) -> torch.Tensor:
    """Runs a (nested) Sequential, handing the meta net to the binary layers."""
    for m in module:
        if isinstance(m, nn.Sequential):
            x = run_sequential(m, x, meta_net)
        elif isinstance(m, MetaConvSign | BBCBlock):
            x = m(x, meta_net)
        else:
            x = m(x)
    return x


class HRModule(nn.Module):
    """HighResolutionModule: ``branches.B.K`` blocks, ``fuse_layers.I.J`` (None for I = J)."""

    def __init__(self, channels, units, multi_scale_output, binary, binary_fuse):
        super().__init__()
        n = len(channels)
        self.binary = binary

        def conv(cin, cout, k, stride, padding):
            if binary_fuse:
                return MetaConvSign(cin, cout, k, stride, padding)
            return nn.Conv2d(cin, cout, k, stride, padding, bias=False)

        def act(c):
            return nn.PReLU(c) if binary else nn.ReLU()

        if binary:
            self.branches = nn.ModuleList(nn.ModuleList(BBCBlock(c, c, 1, None) for _ in range(units))
                                          for c in channels)
        else:
            self.branches = nn.ModuleList(nn.Sequential(*(TVBasic(c, c, 1, None) for _ in range(units)))
                                          for c in channels)
        if n == 1:
            self.fuse_layers = None
            return
        fuse = []
        for i in range(n if multi_scale_output else 1):
            row = []
            for j in range(n):
                if j > i:
                    row.append(nn.Sequential(conv(channels[j], channels[i], 1, 1, 0), nn.BatchNorm2d(channels[i]),
                                             nn.Upsample(scale_factor=2 ** (j - i), mode="nearest")))
                elif j == i:
                    row.append(None)
                else:
                    steps = []
                    for k in range(i - j):
                        if k == i - j - 1:
                            steps.append(nn.Sequential(conv(channels[j], channels[i], 3, 2, 1),
                                                       nn.BatchNorm2d(channels[i])))
                        else:
                            steps.append(nn.Sequential(conv(channels[j], channels[j], 3, 2, 1),
                                                       nn.BatchNorm2d(channels[j]), act(channels[j])))
                    row.append(nn.Sequential(*steps))
            fuse.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse)
        if binary:
            self.nonlinear = nn.ModuleList(nn.PReLU(channels[i]) for i in range(len(fuse)))
        else:
            self.relu = nn.ReLU()

    def forward(self, xs, meta_net):
        xs = list(xs)
        for b, branch in enumerate(self.branches):
            for block in branch:
                xs[b] = block(xs[b], meta_net) if self.binary else block(xs[b])
        if self.fuse_layers is None:
            return xs
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[0] if i == 0 else run_sequential(row[0], xs[0], meta_net)
            for j in range(1, len(xs)):
                y = y + (xs[j] if i == j else run_sequential(row[j], xs[j], meta_net))
            out.append(self.nonlinear[i](y) if self.binary else self.relu(y))
        return out


class PoseHRNet(nn.Module):
    """pose_hrnet (``binary=False``) or mlpbnn's BHRNet (``binary=True``); NCHW heatmaps at stride 4."""

    def __init__(self, width=32, stage_modules=(1, 4, 3), stage_blocks=4, layer1_blocks=4, stem_width=64,
                 num_joints=17, binary=False, binary_fuse=False):
        super().__init__()
        self.binary = binary
        self.conv1 = nn.Conv2d(3, stem_width, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.conv2 = nn.Conv2d(stem_width, stem_width, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU()
        blocks, inplanes = [], stem_width
        for j in range(layer1_blocks):
            down = None
            if j == 0:
                down = nn.Sequential(nn.Conv2d(inplanes, stem_width * 4, 1, bias=False), nn.BatchNorm2d(stem_width * 4))
            blocks.append(TVBottleneck(inplanes, stem_width, 1, down))
            inplanes = stem_width * 4
        self.layer1 = nn.Sequential(*blocks)

        def conv(cin, cout, stride):
            if binary and binary_fuse:
                return MetaConvSign(cin, cout, 3, stride, 1)
            return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)

        def act(c):
            return nn.PReLU(c) if binary else nn.ReLU()

        previous = [inplanes]
        self.num_stages = len(stage_modules)
        for s, n_modules in enumerate(stage_modules):
            channels = [width * 2 ** b for b in range(s + 2)]
            transition = []
            for b, c in enumerate(channels):
                if b < len(previous):
                    transition.append(None if c == previous[b] else
                                      nn.Sequential(conv(previous[b], c, 1), nn.BatchNorm2d(c), act(c)))
                else:
                    steps = []
                    for k in range(b + 1 - len(previous)):
                        out = c if k == b - len(previous) else previous[-1]
                        steps.append(nn.Sequential(conv(previous[-1], out, 2), nn.BatchNorm2d(out), act(out)))
                    transition.append(nn.Sequential(*steps))
            setattr(self, f"transition{s + 1}", nn.ModuleList(transition))
            last = s == len(stage_modules) - 1
            units = stage_blocks * (2 if binary else 1)
            setattr(self, f"stage{s + 2}", nn.Sequential(*(
                HRModule(channels, units, not (last and m == n_modules - 1), binary, binary and binary_fuse)
                for m in range(n_modules))))
            previous = channels
        self.final_layer = nn.Conv2d(width, num_joints, 1)
        if binary:
            self.meta_net = MetaNet()

    def forward(self, x):
        meta_net = getattr(self, "meta_net", None)
        if meta_net is not None and not torch.is_grad_enabled():
            # The meta net's forward value is sign(w) (its network only shapes the gradient): without
            # gradients, skip evaluating its 1 -> 100 -> 2 network on every latent weight.
            meta_net = hard_sign
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for s in range(self.num_stages):
            # pose_hrnet applies every transition to the previous stage's last output
            xs = [xs[b] if t is None else run_sequential(t, xs[-1], meta_net)
                  for b, t in enumerate(getattr(self, f"transition{s + 1}"))]
            for module in getattr(self, f"stage{s + 2}"):
                xs = module(xs, meta_net)
        return self.final_layer(xs[0])



# ------------------------------------------------------------------------------ ReActNet-A
# The binary MobileNetV1 of ReActNet (arXiv 2003.03488) with the released code's names
# (liuzechun/ReActNet mobilenet/*/reactnet.py; AdamBNN step*/reactnet.py): feature.0 is the
# real stem, feature.1..13 the blocks, fc the head. Three forms of the binary kernels:
# 'flat' (ReActNet step 2: ``weights`` of shape (out*in*k*k, 1)), '4d' (AdamBNN: ``weight``
# 4-D) and 'real' (ReActNet step 1: nn.Conv2d, real weights, binary activations).


class ReActAConv(nn.Module):
    """HardBinaryConv: forward alpha * sign(W) (alpha = mean |W| per output channel, detached),
    gradient of clamp(W, -1, 1)."""

    def __init__(self, cin, cout, k, stride, form):
        super().__init__()
        self.stride, self.padding, self.shape = stride, k // 2, (cout, cin, k, k)
        init = torch.rand(self.shape) * 0.001
        if form == "flat":
            self.weights = nn.Parameter(init.reshape(-1, 1))
        else:
            self.weight = nn.Parameter(init)

    def forward(self, x):
        w = (self.weights if hasattr(self, "weights") else self.weight).view(self.shape)
        scale = w.abs().mean(dim=(1, 2, 3), keepdim=True).detach()
        clipped = torch.clamp(w, -1.0, 1.0)
        wb = (scale * hard_sign(w)).detach() - clipped.detach() + clipped
        return F.conv2d(x, wb, stride=self.stride, padding=self.padding)


def _reacta_conv(cin, cout, k, stride, form):
    if form == "real":
        return nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
    return ReActAConv(cin, cout, k, stride, form)


class ReActABlock(nn.Module):
    def __init__(self, inplanes, planes, stride, form):
        super().__init__()
        c = inplanes
        self.stride, self.double = stride, planes != inplanes
        self.move11, self.move12, self.move13, self.move21 = (LearnableBias(c) for _ in range(4))
        self.binary_3x3 = _reacta_conv(c, c, 3, stride, form)
        self.bn1 = nn.BatchNorm2d(c)
        self.prelu1 = nn.PReLU(c)
        if self.double:
            self.binary_pw_down1 = _reacta_conv(c, c, 1, 1, form)
            self.binary_pw_down2 = _reacta_conv(c, c, 1, 1, form)
            self.bn2_1, self.bn2_2 = nn.BatchNorm2d(c), nn.BatchNorm2d(c)
        else:
            self.binary_pw = _reacta_conv(c, c, 1, 1, form)
            self.bn2 = nn.BatchNorm2d(c)
        self.move22, self.move23 = LearnableBias(planes), LearnableBias(planes)
        self.prelu2 = nn.PReLU(planes)

    def forward(self, x):
        y = self.bn1(self.binary_3x3(binary_activation(self.move11(x))))
        if self.stride == 2:
            x = F.avg_pool2d(x, 2, 2)
        y = self.move13(self.prelu1(self.move12(y + x)))
        s = binary_activation(self.move21(y))
        if self.double:
            z = torch.cat([self.bn2_1(self.binary_pw_down1(s)) + y, self.bn2_2(self.binary_pw_down2(s)) + y], 1)
        else:
            z = self.bn2(self.binary_pw(s)) + y
        return self.move23(self.prelu2(self.move22(z)))


class ReActAStem(nn.Module):
    def __init__(self, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)

    def forward(self, x):
        return self.bn1(self.conv1(x))


class ReActNetARef(nn.Module):
    """ReActNet-A; ``stages`` blocks per width ``width * 2**(i+1)`` ((1, 2, 2, 6, 2) at width 32 is
    the released network); ``small_inputs``: stride-1 stem, stride 2 only at stages 2 and 3."""

    def __init__(self, stages=(1, 2, 2, 6, 2), num_classes=1000, width=32, small_inputs=False, form="flat"):
        super().__init__()
        # The released code's channel list and stride rule: stride 2 where the channels change,
        # except to 64 (here 2 * width); small inputs keep only the first two of those.
        channels = [width] + [width * 2 ** (i + 1) for i, n in enumerate(stages) for _ in range(n)]
        self.feature = nn.ModuleList([ReActAStem(width, 1 if small_inputs else 2)])
        halvings = 0
        for i in range(1, len(channels)):
            stride = 1
            if channels[i - 1] != channels[i] and channels[i] != 2 * width:
                halvings += 1
                stride = 1 if small_inputs and halvings > 2 else 2
            self.feature.append(ReActABlock(channels[i - 1], channels[i], stride, form))
        self.pool1 = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x):
        for block in self.feature:
            x = block(x)
        return self.fc(torch.flatten(self.pool1(x), 1))
