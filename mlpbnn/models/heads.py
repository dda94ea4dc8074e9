"""Heads on top of a backbone (a module returning a tuple of feature maps, e.g. one per stage)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlpbnn import layers as L
from mlpbnn.models.resnet import torch_bias_init, torch_default_init

Array = jax.Array


class Classifier(nn.Module):
    """Image classifier: ``backbone`` -> global average pool of its last feature map -> ``fc``.

    The backbone shares this module's scope (``nn.share_scope``), so its variables sit at the top
    level (``conv1``, ``layer1_0/...``) beside ``fc``: the PyTorch layouts, checkpoints and
    converters see one flat network. The head computes in at least float32 whatever the
    backbone's compute dtype (README's policy: logits and loss in float32), float64 for float64
    features. ``__call__(x, train=False, progress=None)`` returns the logits.
    """

    backbone: nn.Module
    num_classes: int = 1000

    def setup(self) -> None:
        nn.share_scope(self, self.backbone)

    @nn.compact
    def __call__(self, x: Array, train: bool = False, progress: Array | float | None = None) -> Array:
        features = self.backbone(x, train=train, progress=progress)[-1]
        dtype = jnp.promote_types(features.dtype, jnp.float32)
        pooled = L.GlobalAvgPool(name="avgpool")(features.astype(dtype))
        fc = nn.Dense(self.num_classes, dtype=dtype, param_dtype=jnp.float32, kernel_init=torch_default_init,
                      bias_init=torch_bias_init(pooled.shape[-1]), name="fc")
        return fc(pooled)
