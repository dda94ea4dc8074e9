"""A ResNet in the style of flax's ImageNet example (``examples/imagenet/models.py``), written
without mlpbnn: ``nn.Conv`` / ``nn.BatchNorm`` / ``nn.Dense`` with the example's module names
(``conv_init``, ``bn_init``, ``ResNetBlock_i/Conv_j``, ``conv_proj``, ``Dense_0``), so the
rules in ``configs/binarized_resnet_digits.py`` read like rules for that example's model.

Differences from the example, for 8x8 digits: an optional small stem (3x3 stride 1, no
max-pool) and a width option; ``train`` selects batch statistics as there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

ModuleDef = Any


class ResNetBlock(nn.Module):
    """conv -> BN -> relu -> conv -> BN (+ projection shortcut) -> relu."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable = nn.relu
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), self.strides)(x)
        y = self.act(self.norm()(y))
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    """ResNet v1.5 with basic blocks; ``stage_sizes=(2, 2, 2, 2)`` is ResNet-18."""

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    num_classes: int = 1000
    num_filters: int = 64
    small_inputs: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 dtype=self.dtype)
        if self.small_inputs:
            x = conv(self.num_filters, (3, 3), padding=[(1, 1), (1, 1)], name="conv_init")(x)
        else:
            x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        if not self.small_inputs:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, blocks in enumerate(self.stage_sizes):
            for j in range(blocks):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = ResNetBlock(self.num_filters * 2 ** i, conv=conv, norm=norm, strides=strides)(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
