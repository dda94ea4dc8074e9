"""Binarize any Flax Linen model by rules: ``binarize(model, rules)``.

The user's model code is untouched, as qwix quantizes a model: the returned module calls the
model under ``flax.linen.intercept_methods``, and every ``nn.Conv``, ``nn.Dense`` or
``nn.ConvTranspose`` call whose module path and class match a ``Rule`` with a ``BinarySpec``
runs as its binary twin (``mlpbnn.layers.BinaryConv`` / ``BinaryDense`` /
``BinaryConvTranspose``) bound to the *same* variable scope. So the kernel and bias keep their
paths, shapes and initial values; the twin adds only its estimator theta (the ``estimator``
collection: per layer under the layer's path, or shared at the top level as the zoo's
``weight_estimator``/``input_estimator``) and, with ``spec.input_bias``, an ``input_bias``
submodule. Everything that introspects binary layers (the optimizer's partitions,
``layers.weight_signs``/``flip_ratio``, ``complexity``, ``convert``) sees these layers exactly as
it sees the zoo's.

Rules are tried in order and the first that matches a layer decides: its spec binarizes the
layer, or ``spec=None`` keeps it real; a layer no rule matches stays real. A rule's ``path`` is
a regular expression that must match the whole module path, ``/``-joined names as Flax prints
them (``ResNetBlock_3/Conv_1``), relative to the binarized model.

The short text form (``parse_rules``, ``model.binarize`` on the command line), rules separated by
``;`` and tried in order::

    SELECTOR=SPEC;SELECTOR=SPEC;...
    SELECTOR  KIND | KIND@PATH | @PATH      KIND: Conv, Dense, ConvTranspose or * (any of them)
    SPEC      real | WEIGHTS/INPUTS[:key=value,...]
              WEIGHTS, INPUTS: estimators as NAME or NAME(k=v, ...), or none (real values);
              key=value: the other BinarySpec fields (share=False, pad_value=1, input_bias=True, ...)

e.g. ``"Conv@conv_init=real;Dense=real;Conv=mlp/approx_sign"``: the stem and the classifier stay
real, every other convolution is a BBC binary conv.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.linear import canonicalize_padding

from mlpbnn import layers as L
from mlpbnn.spec import FIELDS, INPUT_ROLE, WEIGHT_ROLE, BinarySpec, shared_theta

Array = jax.Array

KINDS: dict[str, type[nn.Module]] = {"Conv": nn.Conv, "Dense": nn.Dense, "ConvTranspose": nn.ConvTranspose}
_CLASSES = tuple(KINDS.values())


@dataclasses.dataclass(frozen=True)
class Rule:
    """Binarize the layers whose path matches ``path`` (a regex over the whole ``/``-joined module
    path) and whose class is ``kind`` (``nn.Conv``, ``nn.Dense``, ``nn.ConvTranspose``, their
    names, or None for any of them) as ``spec`` says; ``spec=None`` keeps them real."""

    path: str = ".*"
    kind: type[nn.Module] | str | None = None
    spec: BinarySpec | None = None

    def __post_init__(self) -> None:
        try:
            re.compile(self.path)
        except re.error as e:
            raise ValueError(f"Rule.path {self.path!r} is not a regular expression: {e}") from None
        kind = self.kind
        if isinstance(kind, str) and kind != "*":
            if kind not in KINDS:
                raise ValueError(f"Rule.kind {kind!r} is not one of {', '.join(KINDS)} or *")
            kind = KINDS[kind]
        if kind == "*":
            kind = None
        if kind is not None and kind not in _CLASSES:
            raise ValueError(f"Rule.kind must be one of nn.{', nn.'.join(KINDS)} or None, got {kind!r}")
        object.__setattr__(self, "kind", kind)
        if self.spec is not None and not isinstance(self.spec, BinarySpec):
            raise ValueError(f"Rule.spec must be a BinarySpec or None (keep real), got {self.spec!r}")

    def matches(self, path: str, module: nn.Module) -> bool:
        return (self.kind is None or type(module) is self.kind) and re.fullmatch(self.path, path) is not None


def _split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside parentheses (estimator arguments hold commas)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_spec(text: str) -> BinarySpec | None:
    """``real`` -> None; ``WEIGHTS/INPUTS[:key=value,...]`` -> a BinarySpec (see the module doc)."""
    text = text.strip()
    if text == "real":
        return None
    head, *rest = _split_top(text, ":")
    if len(rest) > 1:
        raise ValueError(f"cannot parse spec {text!r}: more than one ':'")
    estimators_ = _split_top(head, "/")
    if len(estimators_) != 2:
        raise ValueError(f"cannot parse spec {text!r}: expected real or WEIGHTS/INPUTS[:key=value,...]")
    fields: dict[str, Any] = {"weights": estimators_[0].strip(), "inputs": estimators_[1].strip()}
    for item in _split_top(rest[0], ",") if rest and rest[0].strip() else []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in FIELDS or key in ("weights", "inputs"):
            raise ValueError(f"cannot parse spec {text!r}: {item.strip()!r} is not key=value with a key of "
                             f"{', '.join(f for f in FIELDS if f not in ('weights', 'inputs'))}")
        try:
            fields[key] = ast.literal_eval(value.strip())
        except (SyntaxError, ValueError):
            fields[key] = value.strip()  # a bare word: a string
    return BinarySpec(**fields)


def parse_rules(text: str) -> tuple[Rule, ...]:
    """Rules from their text form (see the module doc); ValueError naming the bad rule."""
    rules = []
    for item in _split_top(text, ";"):
        if not item.strip():
            continue
        selector, eq, spec = item.partition("=")
        if not eq:
            raise ValueError(f"cannot parse rule {item.strip()!r}: expected SELECTOR=SPEC")
        kind, _, path = selector.strip().partition("@")
        try:
            rules.append(Rule(path=path.strip() or ".*", kind=kind.strip() or None, spec=parse_spec(spec)))
        except ValueError as e:
            raise ValueError(f"rule {item.strip()!r}: {e}") from None
    if not rules:
        raise ValueError(f"no rules in {text!r}")
    return tuple(rules)


def _format_estimator(est: Any) -> str:
    if est is None:
        return "none"
    args = ", ".join(f"{k}={v!r}" for k, v in est.kwargs.items())
    return f"{est.name}({args})"


def format_rules(rules: Sequence[Rule]) -> str:
    """The text form of ``rules`` (``parse_rules(format_rules(r)) == tuple(r)``): what a saved
    variables checkpoint records."""
    out = []
    for rule in rules:
        kind = next(k for k, v in KINDS.items() if v is rule.kind) if rule.kind is not None else "*"
        selector = kind if rule.path == ".*" else f"{kind}@{rule.path}"
        if rule.spec is None:
            out.append(f"{selector}=real")
            continue
        s = rule.spec
        options = [f"{f.name}={getattr(s, f.name)!r}" for f in dataclasses.fields(s)
                   if f.name not in ("weights", "inputs") and getattr(s, f.name) != f.default]
        text = f"{_format_estimator(s.weights)}/{_format_estimator(s.inputs)}"
        out.append(f"{selector}={text}{':' + ','.join(options) if options else ''}")
    return ";".join(out)


def as_rules(rules: str | Rule | Sequence[Rule]) -> tuple[Rule, ...]:
    """Rules from their text form, one Rule or a sequence of them."""
    if isinstance(rules, str):
        return parse_rules(rules)
    if isinstance(rules, Rule):
        return (rules,)
    rules = tuple(rules)
    bad = [r for r in rules if not isinstance(r, Rule)]
    if bad:
        raise ValueError(f"rules must be Rule objects or their text form, got {bad[0]!r}")
    return rules


# ------------------------------------------------------------------------------ the twins


def _ints(value: Any, n: int, default: int = 1) -> tuple[int, ...]:
    if value is None:
        return (default,) * n
    return (int(value),) * n if isinstance(value, int) else tuple(int(v) for v in value)


def _transpose_pads(k: int, s: int, padding: str) -> tuple[int, int]:
    """The padding of the dilated input that ``lax.conv_transpose`` uses for 'SAME' / 'VALID'."""
    if padding == "SAME":
        total = k + s - 2
        low = k - 1 if s > k - 1 else math.ceil(total / 2)
    else:
        total = k + s - 2 + max(k - s, 0)
        low = k - 1
    return low, total - low


def _refuse(path: str, module: nn.Module, what: str) -> None:
    raise ValueError(f"binarize: {path or '(root)'} ({type(module).__name__}): {what}")


def _twin(module: nn.Module, spec: BinarySpec, x: Array, path: str, thetas: dict[str, Any]) -> nn.Module:
    """The binary layer that computes what ``module`` computes, on ``module``'s own scope."""
    dtype = module.dtype if module.dtype is not None else jnp.result_type(x.dtype, module.param_dtype)
    common = dict(spec=spec, use_bias=module.use_bias, dtype=dtype, param_dtype=module.param_dtype,
                  kernel_init=module.kernel_init, bias_init=module.bias_init, parent=module.scope, **thetas)
    if isinstance(module, nn.Dense):
        return L.BinaryDense(module.features, **common)
    if module.mask is not None:
        _refuse(path, module, "a kernel mask is not supported")
    kernel_size = tuple(module.kernel_size) if not isinstance(module.kernel_size, int) else (module.kernel_size,)
    if len(kernel_size) != 2 or x.ndim != 4:
        _refuse(path, module, f"only 2-D convolutions of NHWC inputs are binarized (kernel {kernel_size}, input "
                              f"{x.shape})")
    if _ints(module.kernel_dilation, 2) != (1, 1):
        _refuse(path, module, "kernel_dilation is not supported")
    strides = _ints(module.strides, 2)
    padding = canonicalize_padding(module.padding, 2)
    if isinstance(module, nn.Conv):
        if module.feature_group_count != 1 or _ints(module.input_dilation, 2) != (1, 1):
            _refuse(path, module, "grouped or input-dilated convolutions are not supported")
        if padding in ("SAME", "VALID"):
            padding = jax.lax.padtype_to_pads(x.shape[1:3], kernel_size, strides, padding)
        elif isinstance(padding, str):
            _refuse(path, module, f"padding {padding!r} is not supported (SAME, VALID or explicit)")
        return L.BinaryConv(module.features, kernel_size, strides, tuple(map(tuple, padding)), **common)
    if module.transpose_kernel:
        _refuse(path, module, "transpose_kernel=True is not supported")
    if padding in ("SAME", "VALID"):
        padding = [_transpose_pads(k, s, padding) for k, s in zip(kernel_size, strides, strict=True)]
    elif isinstance(padding, str):
        _refuse(path, module, f"padding {padding!r} is not supported (SAME, VALID or explicit)")
    # lax pads the dilated input by (lo, hi) and correlates with the unflipped kernel; in the
    # scatter form that is the flipped kernel with k - 1 - lo cropped (PyTorch's padding).
    crop = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel_size, padding, strict=True))
    return L.BinaryConvTranspose(module.features, kernel_size, strides, crop, flip_kernel=True, **common)


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class Binarized(nn.Module):
    """``module`` with the layers ``rules`` select replaced by binary twins (``binarize``).

    Its variables are ``module``'s (same paths and initial values) plus the estimator theta.
    ``__call__(*args, progress=None, **kwargs)`` calls ``module(*args, **kwargs)``; ``progress``
    (training progress in [0, 1], for scheduled estimators) goes to the binary layers, and a
    ``train`` keyword is dropped when ``module``'s ``__call__`` does not take it (the trainer
    passes it to every model).
    """

    module: nn.Module
    rules: tuple[Rule, ...]

    @nn.compact
    def __call__(self, *args: Any, progress: Array | float | None = None, **kwargs: Any) -> Any:
        if "train" in kwargs and not _accepts(type(self.module).__call__, "train"):
            kwargs.pop("train")
        depth = len(self.scope.path)
        twins: dict[tuple[str, ...], nn.Module] = {}

        def interceptor(next_fun, call_args, call_kwargs, context):
            module = context.module
            if context.method_name != "__call__" or not isinstance(module, _CLASSES) or not call_args:
                return next_fun(*call_args, **call_kwargs)
            path = "/".join(module.path[depth:])
            rule = next((r for r in self.rules if r.matches(path, module)), None)
            if rule is None or rule.spec is None:
                return next_fun(*call_args, **call_kwargs)
            x = call_args[0]
            if module.path not in twins:  # a layer called twice is one twin called twice
                thetas = {"input_theta": shared_theta(self, rule.spec, INPUT_ROLE),
                          "weight_theta": shared_theta(self, rule.spec, WEIGHT_ROLE)}
                twins[module.path] = _twin(module, rule.spec, x, path, thetas)
            return twins[module.path](x, progress)

        # The user's model runs bound to this module's own scope, so its variables have the paths
        # (and its initial values the RNG streams) they have without binarize. A clone rather
        # than nn.share_scope: share_scope cannot move the scopes that the model's submodule
        # fields already hold, and their paths and RNGs would keep the field's name.
        inner = self.module.clone(parent=self.scope, _deep_clone=True)
        with nn.intercept_methods(interceptor):
            return inner(*args, **kwargs)


def binarize(module: nn.Module, rules: str | Rule | Sequence[Rule]) -> Binarized:
    """``module`` (any Flax Linen model, unbound) with its ``nn.Conv`` / ``nn.Dense`` /
    ``nn.ConvTranspose`` layers binarized by ``rules`` (``Rule`` objects, or their text form; see
    the module doc). The result is an ordinary Linen module: ``init``, ``apply``, and the same
    variable paths as ``module`` plus the ``estimator`` collection.

    >>> model = binarize(ResNet18(num_classes=10), [
    ...     Rule("conv_init", spec=None), Rule(kind=nn.Dense, spec=None),
    ...     Rule(kind=nn.Conv, spec=BinarySpec(weights="mlp", inputs="approx_sign"))])
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"binarize needs a flax.linen Module, got {type(module).__name__}")
    rules = as_rules(rules)
    shared: dict[str, Any] = {}
    for rule in rules:  # one shared theta per role: the shared learnable estimators must agree
        if rule.spec is None or not rule.spec.share:
            continue
        for role, est in ((INPUT_ROLE, rule.spec.inputs), (WEIGHT_ROLE, rule.spec.weights)):
            if est is not None and est.learnable and shared.setdefault(role, est) != est:
                raise ValueError(f"binarize: rules share one {role} theta but name two learnable estimators, "
                                 f"{shared[role]!r} and {est!r}; set share=False on one of them")
    return Binarized(module, rules)
