"""Model zoo: backbones by name, a head on top (a classifier or heatmaps), and registry metadata.

``create(name, **kwargs)`` returns the model, a Flax module whose
``apply(variables, images_nhwc, train=..., progress=...)`` returns float32 outputs
(``mutable=['batch_stats']`` when ``train=True``): logits (B, num_classes) for the classifiers,
heatmaps (B, H/4, W/4, num_joints) for the heatmap models (``info(name).head``). ``kwargs`` are
the head's argument (``num_classes``, default 1000, also positional; or ``num_joints``, default 17)
and module overrides. ``create_backbone(name, **overrides)`` returns the feature extractor alone (a
tuple of the stage outputs); a model's variables are the backbone's plus its head's, all at the
top level. ``info(name)`` says what a model is (its head, binary or not, its PyTorch key layout,
the estimator fields it takes). Binary models take estimators by name, ``{'name': ..., **hparams}``
mapping or ``Estimator``:
``create('bireal_resnet18', weight_estimator='mlp', activation_estimator='approx_sign')``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from mlpbnn.binary import as_rules
from mlpbnn.binary import binarize as binarize_model
from mlpbnn.models.heads import Classifier
from mlpbnn.models.hrnet import BinaryHRNetBackbone, HRNetBackbone, HRNetHead
from mlpbnn.models.resnet import BinaryResNetBackbone, ResNetBackbone
from mlpbnn.models.simple_baseline import HEAD_TYPES, SimpleBaseline
from mlpbnn.spec import BinarySpec

__all__ = ["ESTIMATOR_FIELDS", "HEAD_ARGS", "HEADS", "TORCH_LAYOUTS", "Classifier", "HRNetHead", "ModelInfo",
           "SimpleBaseline", "create", "create_backbone", "info", "names"]

ESTIMATOR_FIELDS = ("weight_estimator", "activation_estimator")
# The options ``create`` takes for a binary model's ``spec`` field, one by one (the config's and
# the command line's form): option -> BinarySpec field.
SPEC_OPTIONS = {"weight_estimator": "weights", "activation_estimator": "inputs", "share_estimator": "share",
                "binary_init": "init", "weight_norm": "weight_norm", "weight_scale": "weight_scale",
                "scale_in_backward": "scale_in_backward", "pad_value": "pad_value", "sign_zero": "sign_zero",
                "input_bias": "input_bias"}
TORCH_LAYOUTS = ("torchvision", "bbc", "reactnet", "pose_resnet", "pose_hrnet")
# The head kinds, the class of each and the argument ``create`` takes for it (the task's
# ``model_args()``); a registry entry may name another class of its kind (HRNet's final layer).
HEADS = {"classifier": Classifier, "heatmap": SimpleBaseline}
HEAD_ARGS = {"classifier": "num_classes", "heatmap": "num_joints"}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a registered model is.

    Attributes:
      name: the registry name.
      head: 'classifier' (logits; ``create`` takes ``num_classes``) or 'heatmap' (one heatmap per
        joint at stride 4; ``create`` takes ``num_joints``).
      binary: whether it has binary layers (takes estimators, two-stage training applies).
      torch_layout: the PyTorch state_dict layout ``mlpbnn.convert`` maps to: 'torchvision'
        (torchvision's ResNets), 'bbc' (the official BBC/Bi-Real code, ``binary_conv.weights`` and
        ``meta_net``), 'reactnet' (ReActNet's code), 'pose_resnet' (SimpleBaseline's: torchvision
        names plus ``deconv_layers`` and ``final_layer``) or 'pose_hrnet' (HRNet's
        ``lib/models/pose_hrnet.py``); heads add their keys by the same rule. BHRNet is 'bbc':
        pose_hrnet's names with the BBC blocks' ``binary_conv.weights`` and ``meta_net``.
      estimator_fields: the options that take an estimator (empty for full-precision models).
      options: every option ``create`` accepts as an override (``create_backbone`` takes those of
        the backbone: all but the head's).
    """

    name: str
    head: str
    binary: bool
    torch_layout: str
    estimator_fields: tuple[str, ...]
    options: tuple[str, ...]


_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
_BINARY_STAGES = {18: (4, 4, 4, 4), 34: (6, 8, 12, 6)}  # one conv per block: twice the blocks
_BIREAL = {"variant": "bireal"}  # the default BinarySpec: the official BBC layer

# name -> (backbone class, defaults, PyTorch key layout, head kind, head defaults)
_Entry = tuple[type[nn.Module], dict[str, Any], str, str, dict[str, Any]]
# The head class of the entries whose head is not their kind's default (HEADS).
_HEAD_CLASSES: dict[str, type[nn.Module]] = {}
_REGISTRY: dict[str, _Entry] = {
    "resnet18": (ResNetBackbone, {"stage_sizes": _STAGES[18], "block": "basic"}, "torchvision", "classifier", {}),
    "resnet34": (ResNetBackbone, {"stage_sizes": _STAGES[34], "block": "basic"}, "torchvision", "classifier", {}),
    "resnet50": (ResNetBackbone, {"stage_sizes": _STAGES[50], "block": "bottleneck"}, "torchvision", "classifier",
                 {}),
    "bireal_resnet18": (BinaryResNetBackbone, {"stage_sizes": _BINARY_STAGES[18], **_BIREAL}, "bbc", "classifier",
                        {}),
    "bireal_resnet34": (BinaryResNetBackbone, {"stage_sizes": _BINARY_STAGES[34], **_BIREAL}, "bbc", "classifier",
                        {}),
    # ReActNet's HardBinaryConv: clipped STE through clamp(W, -1, 1), no centring, mean |W|
    # scale in the forward only, latent weights initialised U(0, 0.001) as in its code.
    "reactnet_resnet18": (BinaryResNetBackbone, {"stage_sizes": _BINARY_STAGES[18], "variant": "reactnet",
                                                 "spec": BinarySpec(weights="ste", weight_norm="none",
                                                                    scale_in_backward=False, init="reactnet")},
                          "reactnet", "classifier", {}),
    # SimpleBaseline (arXiv 1804.06208) on torchvision ResNets: the official pose_resnet.
    "simple_baseline_resnet18": (ResNetBackbone, {"stage_sizes": _STAGES[18], "block": "basic"}, "pose_resnet",
                                 "heatmap", {}),
    "simple_baseline_resnet34": (ResNetBackbone, {"stage_sizes": _STAGES[34], "block": "basic"}, "pose_resnet",
                                 "heatmap", {}),
    "simple_baseline_resnet50": (ResNetBackbone, {"stage_sizes": _STAGES[50], "block": "bottleneck"},
                                 "pose_resnet", "heatmap", {}),
    # SBPN (BBC, arXiv 2205.07433): the Bi-Real/BBC binary ResNet with a binary SimpleBaseline head.
    "sbpn_resnet18": (BinaryResNetBackbone, {"stage_sizes": _BINARY_STAGES[18], **_BIREAL}, "bbc", "heatmap",
                      {"head": "binary"}),
    "sbpn_resnet34": (BinaryResNetBackbone, {"stage_sizes": _BINARY_STAGES[34], **_BIREAL}, "bbc", "heatmap",
                      {"head": "binary"}),
    # HRNet (arXiv 1902.09212; lib/models/pose_hrnet.py) and BHRNet, its binary twin (models/hrnet.py).
    "hrnet_w32": (HRNetBackbone, {"width": 32}, "pose_hrnet", "heatmap", {}),
    "hrnet_w48": (HRNetBackbone, {"width": 48}, "pose_hrnet", "heatmap", {}),
    "bhrnet_w32": (BinaryHRNetBackbone, {"width": 32}, "bbc", "heatmap", {}),
    "bhrnet_w48": (BinaryHRNetBackbone, {"width": 48}, "bbc", "heatmap", {}),
}
_HEAD_CLASSES.update({name: HRNetHead for name in ("hrnet_w32", "hrnet_w48", "bhrnet_w32", "bhrnet_w48")})


def names() -> list[str]:
    return sorted(_REGISTRY)


def _check(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(names())}")


def _options(cls: type[nn.Module]) -> tuple[str, ...]:
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    if "spec" in fields:
        fields |= set(SPEC_OPTIONS)
    return tuple(sorted(fields))


def _head_class(name: str) -> type[nn.Module]:
    return _HEAD_CLASSES.get(name, HEADS[_REGISTRY[name][3]])


def _head_options(name: str) -> tuple[str, ...]:
    """The head module's own options (not the backbone, not the head argument)."""
    head = _REGISTRY[name][3]
    return tuple(o for o in _options(_head_class(name)) if o not in ("backbone", HEAD_ARGS[head]))


def info(name: str) -> ModelInfo:
    """Registry metadata of model ``name`` (ValueError naming the valid names if unknown)."""
    _check(name)
    cls, _, layout, head, _ = _REGISTRY[name]
    binary = "spec" in _options(cls)
    return ModelInfo(name=name, head=head, binary=binary, torch_layout=layout,
                     estimator_fields=ESTIMATOR_FIELDS if binary else (),
                     options=tuple(sorted(_options(cls) + _head_options(name) + ("binarize",))))


def create_backbone(name: str, **overrides: Any) -> nn.Module:
    """The backbone of model ``name``: ``apply(variables, x, train=..., progress=...)`` returns one
    feature map per stage. ``overrides`` set module fields (e.g. ``small_inputs=True``,
    ``width=16``, ``stage_sizes=(1, 1, 1, 1)``, ``dtype=jnp.bfloat16``, estimators)."""
    _check(name)
    cls, defaults, _, _, _ = _REGISTRY[name]
    fields = _options(cls)
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for model {name!r}; valid: {', '.join(fields)}")
    kwargs = {**defaults, **overrides}
    spec_changes = {SPEC_OPTIONS[k]: kwargs.pop(k) for k in SPEC_OPTIONS if k in kwargs}
    if "spec" in fields:
        spec = kwargs.get("spec", BinarySpec())
        spec = BinarySpec(**spec) if isinstance(spec, Mapping) else spec
        if not isinstance(spec, BinarySpec):
            raise ValueError(f"spec of model {name!r} must be a BinarySpec or a mapping of its fields, got {spec!r}")
        kwargs["spec"] = spec.replace(**spec_changes)
    for field in ("stage_sizes", "stage_modules"):
        if field in kwargs:
            kwargs[field] = tuple(kwargs[field])
    return cls(**kwargs)


def is_external(name: str) -> bool:
    """Whether ``name`` is a user's model, ``package.module:Factory``, rather than a zoo name."""
    return ":" in name


def _factory(name: str) -> Any:
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"model {name!r}: cannot import {module_name!r} ({e})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"model {name!r}: {module_name} has no class or function {attr!r}")
    return factory


def _create_external(name: str, head_args: dict[str, Any], kwargs: Mapping[str, Any] | None = None,
                     binarize: Any = None, **rest: Any) -> nn.Module:
    """A user's model: ``Factory(**kwargs)`` (plus the head's argument and ``dtype`` where the
    factory takes them), binarized by the rules ``binarize`` (``mlpbnn.binarize``) with the
    ``SPEC_OPTIONS`` in ``rest`` applied to every binarizing rule's spec."""
    unknown = sorted(set(rest) - set(SPEC_OPTIONS) - {"dtype"})
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for model {name!r}; valid: kwargs, binarize, dtype, "
                         f"{', '.join(SPEC_OPTIONS)}")
    factory = _factory(name)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: pass only the kwargs
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    fkw = dict(kwargs or {})
    for key, value in {**head_args, **({"dtype": rest["dtype"]} if "dtype" in rest else {})}.items():
        if key in params or takes_any:
            fkw.setdefault(key, value)
    try:
        module = factory(**fkw)
    except TypeError as e:
        raise ValueError(f"model {name!r}: {e}") from None
    if not isinstance(module, nn.Module):
        raise ValueError(f"model {name!r}: the factory returned {type(module).__name__}, not a flax.linen Module")
    changes = {SPEC_OPTIONS[k]: v for k, v in rest.items() if k in SPEC_OPTIONS}
    if changes and not binarize:
        raise ValueError(f"model {name!r}: {', '.join(sorted(set(rest) - {'dtype'}))} need model.binarize rules")
    if not binarize:
        return module
    rules = tuple(dataclasses.replace(r, spec=r.spec.replace(**changes)) if r.spec is not None else r
                  for r in as_rules(binarize))
    return binarize_model(module, rules)


def create(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Model ``name``: ``create_backbone(name, ...)`` with its head on top (``model.backbone`` is
    the backbone).

    ``kwargs``: the head's argument (``num_classes`` for a classifier, default 1000; ``num_joints``
    for a heatmap model, default 17), head options (heatmap models: ``head``, ``head_shortcut``,
    ...) and backbone overrides. A head argument of the other kind of head is refused
    (ValueError naming the valid one), as is an unknown option.

    ``name`` may also be a user's model, ``package.module:Factory`` (a Linen class or a function
    returning a module), with ``kwargs={...}`` for the factory and ``binarize=RULES``
    (``mlpbnn.binarize``'s rules or their text form); the head's argument and ``dtype`` go to
    the factory if it takes them; the binary options (``weight_estimator=None``, ...) change
    every binarizing rule.
    """
    if is_external(name):
        head_args = {k: kwargs.pop(k) for k in HEAD_ARGS.values() if k in kwargs}
        if num_classes is not None:
            head_args["num_classes"] = num_classes
        return _create_external(name, head_args, **kwargs)
    _check(name)
    rules = kwargs.pop("binarize", None)
    if rules:  # a zoo model's real layers binarized by rules (its own binary layers keep their spec)
        return binarize_model(create(name, num_classes, **kwargs), as_rules(rules))
    cls, _, _, head, head_defaults = _REGISTRY[name]
    head_args = {k: kwargs.pop(k) for k in HEAD_ARGS.values() if k in kwargs}
    if num_classes is not None:
        head_args["num_classes"] = num_classes
    wrong = sorted(set(head_args) - {HEAD_ARGS[head]})
    if wrong:
        raise ValueError(f"model {name!r} has a {head} head: {', '.join(wrong)} is not its argument; "
                         f"valid: {HEAD_ARGS[head]}")
    head_fields = _head_options(name)
    unknown = sorted(set(kwargs) - set(_options(cls)) - set(head_fields))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for model {name!r}; valid: {', '.join(info(name).options)}")
    head_kwargs = {**head_defaults, **{k: kwargs.pop(k) for k in head_fields if k in kwargs}}
    head_cls = _head_class(name)
    if head_cls is SimpleBaseline:
        _check_heatmap_head(name, head_kwargs.get("head", "real"), "spec" in _options(cls))
    return head_cls(create_backbone(name, **kwargs), **head_args, **head_kwargs)


def _check_heatmap_head(name: str, kind: Any, binary: bool) -> None:
    if kind not in HEAD_TYPES:
        raise ValueError(f"head must be one of {HEAD_TYPES} for model {name!r}, got {kind!r}")
    if kind == "binary" and not binary:
        raise ValueError(f"head='binary' needs a binary backbone; {name!r} is full precision")
