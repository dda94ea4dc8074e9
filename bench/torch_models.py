"""PyTorch counterparts of the benchmarked networks, for bench/train_step.py.

The networks are the independent PyTorch modules of ``tests/torch_reference.py`` (written from
the method description for the parity tests, not from mlpbnn), used here by import:

- ``bireal_resnet18``: the official BBC/Bi-Real ResNet-18 (``BinaryResNetRef``): BasicBlocks of one
  binary 3x3 conv, BN, PReLU, real shortcut with AvgPool + 1x1 conv + BN when downsampling; the
  binary conv (``MetaConv``) centres the latent weights per output channel, scales by the detached
  alpha = mean |w_c| and binarises with the shared ``MetaNet``, the official estimator math: the
  1 -> 100 -> 2 MLP evaluated on every weight in the forward pass, its outputs gated by
  ``GatedLinear`` and fed to the sign through ``SignFromLogits`` (autograd.Functions as in the
  official code). Activations use Bi-Real's ApproxSign.
  ``weights='ste'`` swaps the MLP for a clipped straight-through sign (``SteSign`` below,
  backward 1[|w| <= 1], mlpbnn's ``ste``), everything else unchanged.
- ``resnet18``: torchvision's ResNet-18 layout (``TorchvisionResNet``).

``small_inputs=True`` gives the 3x3 stride-1 stem without max-pool, as mlpbnn's ``small_inputs``.
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


def bireal_resnet18(num_classes: int = 10, small_inputs: bool = True, weights: str = "mlp") -> nn.Module:
    """The BBC Bi-Real ResNet-18 with the MLP estimator (``weights='mlp'``) or STE on weights."""
    if weights not in ("mlp", "ste"):
        raise ValueError(f"weights must be 'mlp' or 'ste', got {weights!r}")
    model = ref.BinaryResNetRef((4, 4, 4, 4), num_classes, 64, small_inputs, "bireal")
    if weights == "ste":
        model.meta_net = SteWeights()
    return model


def resnet18(num_classes: int = 10, small_inputs: bool = True) -> nn.Module:
    """torchvision's ResNet-18."""
    return ref.TorchvisionResNet((2, 2, 2, 2), "basic", num_classes, 64, small_inputs)
