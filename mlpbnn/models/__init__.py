"""Model zoo: ``create(name, num_classes=1000, **overrides)`` returns a Flax module.

``model.apply(variables, images_nhwc, train=..., progress=...)`` returns float32 logits
(``mutable=['batch_stats']`` when ``train=True``). Binary models take estimators by name,
``{'name': ..., **hparams}`` mapping or ``Estimator``:
``create('bireal_resnet18', weight_estimator='mlp', activation_estimator='approx_sign')``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn

from mlpbnn import estimators
from mlpbnn.models.resnet import BinaryResNet, ResNet

_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
_BINARY_STAGES = {18: (4, 4, 4, 4), 34: (6, 8, 12, 6)}  # one conv per block: twice the blocks

_REGISTRY: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "resnet18": (ResNet, {"stage_sizes": _STAGES[18], "block": "basic"}),
    "resnet34": (ResNet, {"stage_sizes": _STAGES[34], "block": "basic"}),
    "resnet50": (ResNet, {"stage_sizes": _STAGES[50], "block": "bottleneck"}),
    "bireal_resnet18": (BinaryResNet, {"stage_sizes": _BINARY_STAGES[18], "variant": "bireal",
                                       "weight_estimator": "mlp", "activation_estimator": "approx_sign"}),
    "bireal_resnet34": (BinaryResNet, {"stage_sizes": _BINARY_STAGES[34], "variant": "bireal",
                                       "weight_estimator": "mlp", "activation_estimator": "approx_sign"}),
    # ReActNet's HardBinaryConv: clipped STE through clamp(W, -1, 1), no centring, mean |W|
    # scale in the forward only, latent weights initialised U(0, 0.001) as in its code.
    "reactnet_resnet18": (BinaryResNet, {"stage_sizes": _BINARY_STAGES[18], "variant": "reactnet",
                                         "weight_estimator": "ste", "activation_estimator": "approx_sign",
                                         "weight_norm": "none", "scale_in_backward": False,
                                         "binary_init": "reactnet"}),
}

ESTIMATOR_FIELDS = ("weight_estimator", "activation_estimator")


def names() -> list[str]:
    return sorted(_REGISTRY)


def family(name: str) -> str:
    """'resnet' (torchvision layout) or 'bireal'/'reactnet' (binary)."""
    _check(name)
    cls, defaults = _REGISTRY[name]
    return "resnet" if cls is ResNet else defaults["variant"]


def _check(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(names())}")


def create(name: str, num_classes: int = 1000, **overrides: Any) -> nn.Module:
    """The model ``name`` with ``num_classes`` outputs; ``overrides`` set module fields
    (e.g. ``small_inputs=True``, ``width=16``, ``stage_sizes=(1, 1, 1, 1)``, ``dtype=jnp.bfloat16``)."""
    _check(name)
    cls, defaults = _REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for model {name!r}; valid: {', '.join(sorted(fields))}")
    kwargs = {**defaults, **overrides, "num_classes": num_classes}
    for field in ESTIMATOR_FIELDS:
        if field in kwargs:
            kwargs[field] = estimators.resolve(kwargs[field])
    if "stage_sizes" in kwargs:
        kwargs["stage_sizes"] = tuple(kwargs["stage_sizes"])
    return cls(**kwargs)
