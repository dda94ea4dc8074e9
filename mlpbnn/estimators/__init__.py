"""Sign functions with surrogate gradients: the estimator zoo.

Every estimator has one signature,

    est = get(name, **hparams)        # unknown name or hparam, or bad value -> ValueError naming the valid ones
    theta = est.init(key)             # {} for parameter-free estimators
    y = est(theta, x, progress=None)  # forward: exactly +-1; jax.grad gives the surrogate

so binary layers never need to know which estimator they use. The forward pass is always a hard
+-1 (``sign(0)`` is ``zero``, +1 by default so a binary network stays binary; ``zero=0``
reproduces ``torch.sign``/``jnp.sign``). The backward pass is a ``jax.custom_vjp`` whose derivative
is the documented formula, so the forward never evaluates a soft function.

Where to look:

- ``registry``: ``get``, ``parse`` (``NAME(k=v, ...)``), ``resolve``, ``names`` and ``Estimator``;
- ``free``: the parameter-free estimators (``ste``, ``approx_sign``, ``swish_sign``, ``tanh``,
  ``ede``, ``fda``, ``reste``) and the schedules of the scheduled ones, which follow their papers
  from ``progress`` in [0, 1] (the fraction of training done, possibly traced);
- ``learned``: the learnable ones (``mlp``, ``linear``, ``classifier``; BBC, He et al., arXiv
  2205.07433), whose parameters ``theta`` receive cotangents and are trained by the task loss;
- ``mlp_backward``: the MLP and the backward kernels of BBC's gated surrogate (forms, chunking);
- ``base``: ``sign``, the parameter-free custom_vjp and ``Hparams``, the frozen dataclass that
  holds each estimator's hyper-parameters.

Each estimator is a function ``fn(hp, theta, x, progress)`` whose docstring has its forward and
backward formula and its source (arXiv id), and an ``Hparams`` dataclass. Adding one: write both
in ``free`` or ``learned`` and register them there (``base.register(name, Hparams, fn, ...)``).
"""

from mlpbnn.estimators.base import Array, Hparams, Progress, Theta, sign
from mlpbnn.estimators.free import (
    ApproxSignHparams,
    EdeHparams,
    FdaHparams,
    ResteHparams,
    SteHparams,
    SwishSignHparams,
    TanhHparams,
    approx_sign,
    ede,
    ede_schedule,
    fda,
    fda_schedule,
    reste,
    reste_schedule,
    ste,
    swish_sign,
    tanh,
)
from mlpbnn.estimators.learned import (
    ClassifierHparams,
    LinearHparams,
    MlpHparams,
    classifier,
    linear,
    mlp,
    slope_at_zero,
)
from mlpbnn.estimators.mlp_backward import (
    ACTIVATIONS,
    BACKWARD_FORMS,
    CPU_CHUNK,
    GPU_CHUNK,
    chunked_vjp,
    default_backward,
    default_chunk,
    gated_mlp_vjp,
    mlp_apply,
)
from mlpbnn.estimators.registry import REGISTRY, Estimator, Spec, get, names, parse, resolve

__all__ = [
    "ACTIVATIONS", "BACKWARD_FORMS", "CPU_CHUNK", "GPU_CHUNK", "REGISTRY",
    "ApproxSignHparams", "Array", "ClassifierHparams", "EdeHparams", "Estimator", "FdaHparams", "Hparams",
    "LinearHparams", "MlpHparams", "Progress", "ResteHparams", "Spec", "SteHparams", "SwishSignHparams",
    "TanhHparams", "Theta",
    "approx_sign", "chunked_vjp", "classifier", "default_backward", "default_chunk", "ede", "ede_schedule", "fda",
    "fda_schedule", "gated_mlp_vjp", "get", "linear", "mlp", "mlp_apply", "names", "parse", "resolve", "reste",
    "reste_schedule", "sign", "slope_at_zero", "ste", "swish_sign", "tanh",
]
