"""PyTorch counterparts of the benchmarked networks, for bench/train_step.py and bench/imagenet_step.py.

The networks are the independent PyTorch modules of ``tests/torch_reference.py`` (written from
the method description for the parity tests, not from mlpbnn), used here by import:

- ``bireal_resnet``: the official BBC/Bi-Real ResNet (``BinaryResNetRef``; stage sizes 4,4,4,4 are
  ResNet-18, 6,8,12,6 ResNet-34): BasicBlocks of one binary 3x3 conv, BN, PReLU, real shortcut
  with AvgPool + 1x1 conv + BN when downsampling; the binary conv (``MetaConv``) centres the
  latent weights per output channel, scales by the detached alpha = mean |w_c| and binarises
  with the shared ``MetaNet``, the official estimator math: the 1 -> 100 -> 2 MLP evaluated on
  every weight in the forward pass, its outputs gated by ``GatedLinear`` and fed to the sign
  through ``SignFromLogits`` (autograd.Functions as in the official code). Activations use
  Bi-Real's ApproxSign. ``weights='ste'`` swaps the MLP for a clipped straight-through sign
  (``SteSign`` below, backward 1[|w| <= 1], mlpbnn's ``ste``), everything else unchanged. The
  estimator runs in float32 under autocast (``Float32``), as mlpbnn keeps it.
- ``torchvision_resnet``: torchvision's basic-block ResNet layout (``TorchvisionResNet``).

Both take any stage sizes and width; ``small_inputs=True`` gives the 3x3 stride-1 stem without
max-pool, as mlpbnn's ``small_inputs``.
"""

from __future__ import annotations

import torch
from torch import nn

from tests import torch_reference as ref


class SteSign(torch.autograd.Function):
    """sign (+1 at 0) forward; clipped straight-through backward g * 1[|w| <= 1]."""

    @staticmethod
    def forward(ctx, w):
        ctx.save_for_backward(w)
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        return g * (w.abs() <= 1).to(g.dtype)


class SteWeights(nn.Module):
    """Drop-in for the shared ``MetaNet``: the weight path's sign with an STE backward."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return SteSign.apply(w)


class Float32(nn.Module):
    """Runs ``module`` in float32 with autocast off: the estimator MLP under AMP, as mlpbnn keeps it."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        with torch.autocast(w.device.type, enabled=False):
            return self.module(w.float())


def bireal_resnet(stages, num_classes: int = 1000, width: int = 64, small_inputs: bool = False,
                  weights: str = "mlp") -> nn.Module:
    """The BBC Bi-Real ResNet of any stage sizes (binary convs per stage), its estimator in float32."""
    if weights not in ("mlp", "ste"):
        raise ValueError(f"weights must be 'mlp' or 'ste', got {weights!r}")
    model = ref.BinaryResNetRef(tuple(stages), num_classes, width, small_inputs, "bireal")
    model.meta_net = Float32(model.meta_net if weights == "mlp" else SteWeights())
    return model


def torchvision_resnet(stages, num_classes: int = 1000, width: int = 64, small_inputs: bool = False) -> nn.Module:
    """torchvision's basic-block ResNet of any stage sizes (ResNet-18: 2,2,2,2; ResNet-34: 3,4,6,3)."""
    return ref.TorchvisionResNet(tuple(stages), "basic", num_classes, width, small_inputs)
