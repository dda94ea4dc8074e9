"""How one layer binarizes: ``BinarySpec``, and where a layer finds its estimator's theta.

A binary layer computes ``conv(q_in(b + x), alpha * q_w(normalize(W)))`` (``mlpbnn.layers``);
``BinarySpec`` is every choice in that formula, in one frozen, hashable value with its defaults
and checks in one place. The zoo's binary backbones carry one spec and hand it to each binary
layer; ``mlpbnn.binarize`` attaches specs to the layers of a plain Flax model by rules.

The defaults are the official BBC layer (He et al., arXiv 2205.07433: ``MetaConv2d``): the MLP
estimator on the weights, ApproxSign (Bi-Real, arXiv 1808.00278) on the inputs, weights centred
per output channel, alpha = mean |W_c|, one estimator shared by all binary layers, zero padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlpbnn import estimators
from mlpbnn.estimators import Estimator, Theta

Array = jax.Array

ESTIMATOR_COLLECTION = "estimator"
WEIGHT_SCALES = ("none", "mean", "pow2")
WEIGHT_NORMS = ("none", "center", "standardize")
PAD_VALUES = (0.0, 1.0, -1.0)
SIGN_ZEROS = (1.0, -1.0, 0.0)
# The roles of a layer's estimators; each names the submodule (per-layer) or the network-level
# module (shared) that owns its theta, and maps to ``meta_net`` / ``input_meta_net`` in PyTorch.
INPUT_ROLE, WEIGHT_ROLE = "input_estimator", "weight_estimator"

BINARY_INITS: dict[str, Callable[..., Array]] = {
    "xavier": nn.initializers.xavier_uniform(),  # official BBC MetaConv2d
    "reactnet": lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, 0.0, 1e-3),
}

EstimatorLike = Estimator | str | Mapping[str, Any] | None


def _choose(field: str, value: Any, valid: tuple) -> None:
    if value not in valid or isinstance(value, bool):
        raise ValueError(f"BinarySpec.{field} must be one of {valid}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class BinarySpec:
    """How a layer binarizes. Frozen and hashable: usable as a Flax module field.

    Attributes:
      weights: the weight estimator q_w (an ``Estimator``, a name or ``NAME(k=v)`` string, a
        ``{'name': ...}`` mapping), or None for real weights (stage one of two-stage training).
      inputs: the input estimator q_in, likewise; None for real inputs.
      weight_norm: 'center' (W - mean W per output channel: official BBC), 'standardize'
        (IR-Net, arXiv 1909.10788) or 'none' (ReActNet).
      weight_scale: alpha per output channel, stop-gradient: 'mean' (mean |W_c|: XNOR-Net,
        Bi-Real, BBC), 'pow2' (2^round(log2 mean |W_c|): IR-Net) or 'none'.
      scale_in_backward: whether the weight gradient carries alpha (BBC's MetaConv2d) or not
        (Bi-Real's and ReActNet's HardBinaryConv).
      sign_zero: sign(0) of both estimators (1: larq's convention and ours, -1, or 0: torch's and
        jnp's); None keeps each estimator's own ``zero`` hyper-parameter.
      pad_value: the convolution's padding after the input estimator: 0 (PyTorch, the official
        code) or +-1 (keeps a binary input binary: XNOR inference needs no border correction).
      input_bias: a learnable per-channel shift of the input before q_in (ReActNet's RSign,
        arXiv 2003.03488), the layer's submodule ``input_bias``.
      share: learnable estimators share one theta per network (the official ``meta_net``) when
        the network provides it; False gives each layer its own.
      init: the latent weights' initialiser, a key of ``BINARY_INITS`` ('xavier': BBC,
        'reactnet': U(0, 1e-3)); None keeps the layer's own ``kernel_init``.
    """

    weights: EstimatorLike = "mlp"
    inputs: EstimatorLike = "approx_sign"
    weight_norm: str = "center"
    weight_scale: str = "mean"
    scale_in_backward: bool = True
    sign_zero: float | None = None
    pad_value: float = 0.0
    input_bias: bool = False
    share: bool = True
    init: str | None = None

    def __post_init__(self) -> None:
        if self.sign_zero is not None:
            _choose("sign_zero", self.sign_zero, SIGN_ZEROS)
        for field in ("weights", "inputs"):
            try:
                est = estimators.resolve(getattr(self, field))
            except ValueError as e:
                raise ValueError(f"BinarySpec.{field}: {e}") from None
            if est is not None and self.sign_zero is not None:
                if "zero" not in est.kwargs:
                    raise ValueError(f"BinarySpec.sign_zero: estimator {est.name!r} has no sign(0) choice")
                est = estimators.get(est, zero=float(self.sign_zero))
            object.__setattr__(self, field, est)
        _choose("weight_norm", self.weight_norm, WEIGHT_NORMS)
        _choose("weight_scale", self.weight_scale, WEIGHT_SCALES)
        _choose("pad_value", self.pad_value, PAD_VALUES)
        if self.init is not None:
            _choose("init", self.init, tuple(BINARY_INITS))
        for field in ("scale_in_backward", "input_bias", "share"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"BinarySpec.{field} must be True or False, got {getattr(self, field)!r}")

    @property
    def binary(self) -> bool:
        """Whether anything is binarized (False for ``REAL``)."""
        return self.weights is not None or self.inputs is not None

    def replace(self, **changes: Any) -> BinarySpec:
        """A copy with ``changes`` (field names as above; unknown names are a ValueError)."""
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown BinarySpec field(s) {unknown}; valid: {', '.join(FIELDS)}")
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                 if getattr(self, f.name) != getattr(_DEFAULT, f.name, f.default)]
        return f"BinarySpec({', '.join(parts)})"


FIELDS = tuple(f.name for f in dataclasses.fields(BinarySpec))
_DEFAULT = BinarySpec()  # for __repr__: only the fields that differ
REAL = BinarySpec(weights=None, inputs=None)  # a layer of this family that binarizes nothing


# ----------------------------------------------------------------------------- estimator theta


class EstimatorParams(nn.Module):
    """A learnable estimator's theta, stored in the ``estimator`` collection.

    Share one instance between layers to share theta; calling it returns the theta dict
    ({} for parameter-free estimators).
    """

    estimator: Estimator | None

    @nn.compact
    def __call__(self) -> Theta:
        if self.estimator is None or not self.estimator.learnable:
            return {}
        theta0: Theta = {}
        if self.is_initializing():
            theta0 = self.estimator.init(self.make_rng("params"))
        return {name: self.variable(ESTIMATOR_COLLECTION, name, lambda n=name: theta0[n]).value
                for name in self.estimator.theta_shapes}


# A layer's shared theta: the ``EstimatorParams`` module that owns it, or its values (a mapping
# read from the owner's variables by a module that shares the owner's scope but cannot reach the
# module, e.g. a head beside its backbone).
SharedTheta = EstimatorParams | Mapping[str, Array]


def shared_theta(owner: nn.Module, spec: BinarySpec, role: str) -> SharedTheta | None:
    """The network-level theta of ``spec``'s estimator for ``role`` (``INPUT_ROLE`` or
    ``WEIGHT_ROLE``), owned by ``owner`` (a module whose compact method is running): None when the
    estimator is absent or parameter-free or ``spec.share`` is False (the layer makes its own);
    the values already in ``owner``'s scope when something sharing that scope made them (a
    backbone before its head; the first binarized layer before the next); else a new
    ``EstimatorParams`` submodule of ``owner`` named ``role``."""
    estimator = spec.inputs if role == INPUT_ROLE else spec.weights
    if estimator is None or not estimator.learnable or not spec.share:
        return None
    existing = owner.variables.get(ESTIMATOR_COLLECTION, {}).get(role)
    if existing is not None:
        return dict(existing)
    return EstimatorParams(estimator, name=role, parent=owner)


def layer_theta(layer: nn.Module, estimator: Estimator | None, shared: SharedTheta | None, role: str) -> Theta:
    """The theta a binary layer's ``estimator`` uses for ``role``: {} for none or a parameter-free
    one; the ``shared`` theta (checked against the estimator) when given; else the layer's own,
    a submodule named ``role``."""
    if estimator is None or not estimator.learnable:
        return {}
    where = "/".join(layer.path) or type(layer).__name__
    if isinstance(shared, EstimatorParams):
        if shared.estimator != estimator:
            raise ValueError(f"{where}: shared estimator params are for {shared.estimator!r}, "
                             f"but the layer uses {estimator!r}")
        return shared()
    if shared is not None:
        shapes = {k: tuple(jnp.shape(v)) for k, v in shared.items()}
        want = {k: tuple(v) for k, v in estimator.theta_shapes.items()}
        if shapes != want:
            raise ValueError(f"{where}: shared theta has shapes {shapes}, but {estimator!r} needs {want}")
        return dict(shared)
    return EstimatorParams(estimator, name=role, parent=layer)()
