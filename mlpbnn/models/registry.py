"""The model registry: each family's module registers its models (``register_model``) and its
heads (``HEADS.register``); ``create``, ``create_backbone`` and ``info`` read the entries.

A model is a backbone (returns one feature map per stage) with a registered head on top; a
head class says its kind (``kind``: 'classifier' or 'heatmap') and the argument ``create`` takes
for it (``head_arg``: ``num_classes`` or ``num_joints``) as class variables. A binary backbone is
one with a ``spec`` field (``mlpbnn.BinarySpec``); ``create`` also takes that spec's fields one by
one under the names of ``SPEC_OPTIONS`` (the config's and the command line's form).

``name`` may also be a user's model, ``package.module:Factory`` (a Linen class or a function
returning a module), with ``kwargs={...}`` for the factory and ``binarize=RULES``
(``mlpbnn.binarize``'s rules or their text form); any zoo model takes ``binarize=`` too.
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
from mlpbnn.registry import Registry
from mlpbnn.spec import BinarySpec

ESTIMATOR_FIELDS = ("weight_estimator", "activation_estimator")
# The options ``create`` takes for a binary model's ``spec`` field, one by one: option -> BinarySpec field.
SPEC_OPTIONS = {"weight_estimator": "weights", "activation_estimator": "inputs", "share_estimator": "share",
                "binary_init": "init", "weight_norm": "weight_norm", "weight_scale": "weight_scale",
                "scale_in_backward": "scale_in_backward", "pad_value": "pad_value", "sign_zero": "sign_zero",
                "input_bias": "input_bias"}

HEADS: Registry[type[nn.Module]] = Registry("head")


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a registered model is.

    Attributes:
      name: the registry name.
      head: 'classifier' (logits; ``create`` takes ``num_classes``) or 'heatmap' (one heatmap per
        joint at stride 4; ``create`` takes ``num_joints``): the head class's ``kind``.
      binary: whether it has binary layers (takes estimators, two-stage training applies).
      torch_layout: the PyTorch state_dict layout ``mlpbnn.convert`` maps to (``convert.LAYOUTS``:
        'torchvision', 'bbc', 'reactnet', 'pose_resnet', 'pose_hrnet').
      estimator_fields: the options that take an estimator (empty for full-precision models).
      options: every option ``create`` accepts as an override (``create_backbone`` takes those of
        the backbone: all but the head's).
      backbone: the backbone class; defaults: its field values for this model.
      head_class: the head module class; head_defaults: its field values for this model.
    """

    name: str
    head: str
    binary: bool
    torch_layout: str
    estimator_fields: tuple[str, ...]
    options: tuple[str, ...]
    backbone: type[nn.Module] = dataclasses.field(repr=False, compare=False, default=nn.Module)
    defaults: Mapping[str, Any] = dataclasses.field(repr=False, compare=False, default_factory=dict)
    head_class: type[nn.Module] = dataclasses.field(repr=False, compare=False, default=nn.Module)
    head_defaults: Mapping[str, Any] = dataclasses.field(repr=False, compare=False, default_factory=dict)

    @property
    def head_arg(self) -> str:
        return self.head_class.head_arg

    def head_options(self) -> tuple[str, ...]:
        """The head module's own options (not the backbone, not the head argument)."""
        return tuple(o for o in _options(self.head_class) if o not in ("backbone", self.head_arg))


MODELS: Registry[ModelInfo] = Registry("model")


def _options(cls: type[nn.Module]) -> tuple[str, ...]:
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    if "spec" in fields:
        fields |= set(SPEC_OPTIONS)
    return tuple(sorted(fields))


def register_model(name: str, backbone: type[nn.Module], *, head: str, torch_layout: str,
                   defaults: Mapping[str, Any] | None = None, head_defaults: Mapping[str, Any] | None = None) -> None:
    """Registers model ``name``: ``backbone`` with ``defaults``, the registered head ``head`` with
    ``head_defaults``, and the PyTorch key layout ``mlpbnn.convert`` maps it by."""
    head_class = HEADS.get(head)
    binary = "spec" in _options(backbone)
    unknown = sorted(set(defaults or {}) - set(_options(backbone)))
    if unknown:
        raise ValueError(f"model {name!r}: {backbone.__name__} has no field(s) {unknown}")
    info = ModelInfo(name=name, head=head_class.kind, binary=binary, torch_layout=torch_layout,
                     estimator_fields=ESTIMATOR_FIELDS if binary else (), options=(), backbone=backbone,
                     defaults=dict(defaults or {}), head_class=head_class, head_defaults=dict(head_defaults or {}))
    options = tuple(sorted(_options(backbone) + info.head_options() + ("binarize",)))
    MODELS.register(name, dataclasses.replace(info, options=options))


def names() -> list[str]:
    return MODELS.names()


def info(name: str) -> ModelInfo:
    """Registry metadata of model ``name`` (ValueError naming the valid names if unknown)."""
    return MODELS.get(name)


def create_backbone(name: str, **overrides: Any) -> nn.Module:
    """The backbone of model ``name``: ``apply(variables, x, train=..., progress=...)`` returns one
    feature map per stage. ``overrides`` set module fields (e.g. ``small_inputs=True``,
    ``width=16``, ``stage_sizes=(1, 1, 1, 1)``, ``dtype=jnp.bfloat16``, ``spec`` or its fields)."""
    entry = info(name)
    fields = _options(entry.backbone)
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for model {name!r}; valid: {', '.join(fields)}")
    kwargs = {**entry.defaults, **overrides}
    spec_changes = {SPEC_OPTIONS[k]: kwargs.pop(k) for k in SPEC_OPTIONS if k in kwargs}
    if entry.binary:
        spec = kwargs.get("spec", BinarySpec())
        spec = BinarySpec(**spec) if isinstance(spec, Mapping) else spec
        if not isinstance(spec, BinarySpec):
            raise ValueError(f"spec of model {name!r} must be a BinarySpec or a mapping of its fields, got {spec!r}")
        kwargs["spec"] = spec.replace(**spec_changes)
    for field in ("stage_sizes", "stage_modules"):
        if field in kwargs:
            kwargs[field] = tuple(kwargs[field])
    return entry.backbone(**kwargs)


def create(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Model ``name``: ``create_backbone(name, ...)`` with its head on top (``model.backbone`` is
    the backbone).

    ``kwargs``: the head's argument (``num_classes`` for a classifier, default 1000; ``num_joints``
    for a heatmap model, default 17), head options (heatmap models: ``head``, ``head_shortcut``,
    ...), backbone overrides and ``binarize`` (rules for the model's real layers). A head argument
    of the other kind of head is refused (ValueError naming the valid one), as is an unknown
    option. ``name`` may be ``package.module:Factory`` (the module docstring).
    """
    head_args = {k: kwargs.pop(k) for k in ("num_classes", "num_joints") if k in kwargs}
    if num_classes is not None:
        head_args["num_classes"] = num_classes
    if is_external(name):
        return _create_external(name, head_args, **kwargs)
    entry = info(name)
    rules = kwargs.pop("binarize", None)
    if rules:  # the model's real layers binarized by rules (its own binary layers keep their spec)
        return binarize_model(create(name, **head_args, **kwargs), as_rules(rules))
    wrong = sorted(set(head_args) - {entry.head_arg})
    if wrong:
        raise ValueError(f"model {name!r} has a {entry.head} head: {', '.join(wrong)} is not its argument; "
                         f"valid: {entry.head_arg}")
    head_fields = entry.head_options()
    unknown = sorted(set(kwargs) - set(_options(entry.backbone)) - set(head_fields))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for model {name!r}; valid: {', '.join(entry.options)}")
    head_kwargs = {**entry.head_defaults, **{k: kwargs.pop(k) for k in head_fields if k in kwargs}}
    backbone = create_backbone(name, **kwargs)
    entry.head_class.check_backbone(name, backbone, **head_kwargs)
    return entry.head_class(backbone, **head_args, **head_kwargs)


# ------------------------------------------------------------------------------ users' models


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
    factory takes them), binarized by the rules ``binarize`` with the ``SPEC_OPTIONS`` in ``rest``
    applied to every binarizing rule's spec."""
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
