"""Heads on top of a backbone (a module returning a tuple of feature maps, e.g. one per stage):
the ``Head`` contract and the classifier; PyTorch's default initialisers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlpbnn import layers as L
from mlpbnn.models.registry import HEADS

Array = jax.Array

# PyTorch's default init for conv and linear weights (kaiming_uniform with a=sqrt(5)):
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)); torchvision's ResNet convs use kaiming_normal(fan_out).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
torchvision_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_bias_init(fan_in: int) -> Callable[..., Array]:
    """PyTorch's default bias init of a layer with ``fan_in`` inputs: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / fan_in ** 0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class Head(nn.Module):
    """A head module: built as ``cls(backbone, <head_arg>=..., **options)``, its variables at the
    top level beside the backbone's (``nn.share_scope``).

    Class variables: ``kind`` ('classifier': logits, or 'heatmap': one heatmap per joint) and
    ``head_arg``, the argument ``models.create`` takes for it (``num_classes``, ``num_joints``).
    """

    kind: ClassVar[str] = ""
    head_arg: ClassVar[str] = ""

    @classmethod
    def check_backbone(cls, name: str, backbone: nn.Module, **options: Any) -> None:
        """Raises ValueError (naming model ``name``) if ``options`` do not suit ``backbone``."""


@HEADS("classifier")
class Classifier(Head):
    """Image classifier: ``backbone`` -> global average pool of its last feature map -> ``fc``.

    The backbone shares this module's scope (``nn.share_scope``), so its variables sit at the top
    level (``conv1``, ``layer1_0/...``) beside ``fc``: the PyTorch layouts, checkpoints and
    converters see one flat network. The head computes in at least float32 whatever the
    backbone's compute dtype (README's policy: logits and loss in float32), float64 for float64
    features. ``__call__(x, train=False, progress=None)`` returns the logits.
    """

    backbone: nn.Module
    num_classes: int = 1000

    kind: ClassVar[str] = "classifier"
    head_arg: ClassVar[str] = "num_classes"

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
