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
