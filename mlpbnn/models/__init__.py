"""Model zoo: backbones by name, a classifier head on top, and registry metadata.

``create(name, num_classes=1000, **overrides)`` returns the classifier, a Flax module whose
``apply(variables, images_nhwc, train=..., progress=...)`` returns float32 logits
(``mutable=['batch_stats']`` when ``train=True``). ``create_backbone(name, **overrides)`` returns
the feature extractor alone (a tuple of the stage outputs), for other heads; the classifier's
variables are the backbone's plus ``fc``, all at the top level. ``info(name)`` says what a model is
(binary or not, its PyTorch key layout, the estimator fields it takes). Binary models take
estimators by name, ``{'name': ..., **hparams}`` mapping or ``Estimator``:
``create('bireal_resnet18', weight_estimator='mlp', activation_estimator='approx_sign')``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn

from mlpbnn import estimators
from mlpbnn.models.heads import Classifier
from mlpbnn.models.resnet import BinaryResNetBackbone, ResNetBackbone

__all__ = ["ESTIMATOR_FIELDS", "TORCH_LAYOUTS", "Classifier", "ModelInfo", "create", "create_backbone",
           "info", "names"]

ESTIMATOR_FIELDS = ("weight_estimator", "activation_estimator")
TORCH_LAYOUTS = ("torchvision", "bbc", "reactnet")


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a registered model is.

    Attributes:
      name: the registry name.
      binary: whether it has binary layers (takes estimators, two-stage training applies).
      torch_layout: the PyTorch state_dict layout ``mlpbnn.convert`` maps to: 'torchvision'
        (torchvision's ResNets), 'bbc' (the official BBC/Bi-Real code, ``binary_conv.weights`` and
        ``meta_net``) or 'reactnet' (ReActNet's code).
      estimator_fields: the options that take an estimator (empty for full-precision models).
      options: every option ``create``/``create_backbone`` accept as an override.
    """

    name: str
    binary: bool
    torch_layout: str
    estimator_fields: tuple[str, ...]
    options: tuple[str, ...]


_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
_BINARY_STAGES = {18: (4, 4, 4, 4), 34: (6, 8, 12, 6)}  # one conv per block: twice the blocks
_BIREAL = {"variant": "bireal", "weight_estimator": "mlp", "activation_estimator": "approx_sign"}

# name -> (backbone class, defaults, PyTorch key layout)
_REGISTRY: dict[str, tuple[type[nn.Module], dict[str, Any], str]] = {
    "resnet18": (ResNetBackbone, {"stage_sizes": _STAGES[18], "block": "basic"}, "torchvision"),
    "resnet34": (ResNetBackbone, {"stage_sizes": _STAGES[34], "block": "basic"}, "torchvision"),
    "resnet50": (ResNetBackbone, {"stage_sizes": _STAGES[50], "block": "bottleneck"}, "torchvision"),
    "bireal_resnet18": (BinaryResNetBackbone, {"stage_sizes": _BINARY_STAGES[18], **_BIREAL}, "bbc"),
    "bireal_resnet34": (BinaryResNetBackbone, {"stage_sizes": _BINARY_STAGES[34], **_BIREAL}, "bbc"),
    # ReActNet's HardBinaryConv: clipped STE through clamp(W, -1, 1), no centring, mean |W|
    # scale in the forward only, latent weights initialised U(0, 0.001) as in its code.
    "reactnet_resnet18": (BinaryResNetBackbone, {"stage_sizes": _BINARY_STAGES[18], "variant": "reactnet",
                                                 "weight_estimator": "ste", "activation_estimator": "approx_sign",
                                                 "weight_norm": "none", "scale_in_backward": False,
                                                 "binary_init": "reactnet"}, "reactnet"),
}


def names() -> list[str]:
    return sorted(_REGISTRY)


def _check(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(names())}")


def _options(cls: type[nn.Module]) -> tuple[str, ...]:
    return tuple(sorted({f.name for f in dataclasses.fields(cls)} - {"parent", "name"}))


def info(name: str) -> ModelInfo:
    """Registry metadata of model ``name`` (ValueError naming the valid names if unknown)."""
    _check(name)
    cls, _, layout = _REGISTRY[name]
    binary = cls is BinaryResNetBackbone
    return ModelInfo(name=name, binary=binary, torch_layout=layout,
                     estimator_fields=ESTIMATOR_FIELDS if binary else (), options=_options(cls))


def create_backbone(name: str, **overrides: Any) -> nn.Module:
    """The backbone of model ``name``: ``apply(variables, x, train=..., progress=...)`` returns one
    feature map per stage. ``overrides`` set module fields (e.g. ``small_inputs=True``,
    ``width=16``, ``stage_sizes=(1, 1, 1, 1)``, ``dtype=jnp.bfloat16``, estimators)."""
    _check(name)
    cls, defaults, _ = _REGISTRY[name]
    fields = _options(cls)
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for model {name!r}; valid: {', '.join(fields)}")
    kwargs = {**defaults, **overrides}
    for field in ESTIMATOR_FIELDS:
        if field in kwargs:
            kwargs[field] = estimators.resolve(kwargs[field])
    if "stage_sizes" in kwargs:
        kwargs["stage_sizes"] = tuple(kwargs["stage_sizes"])
    return cls(**kwargs)


def create(name: str, num_classes: int = 1000, **overrides: Any) -> Classifier:
    """The classifier ``name`` with ``num_classes`` outputs: ``create_backbone(name, **overrides)``
    with global average pooling and ``fc`` on top (``model.backbone`` is the backbone)."""
    return Classifier(create_backbone(name, **overrides), num_classes)
