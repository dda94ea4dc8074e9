"""mlpbnn: binary neural networks whose sign functions learn their own gradients (BBC, He et al.,
arXiv 2205.07433), in JAX/Flax.

``BinarySpec`` says how a layer binarizes; ``binarize(model, rules)`` applies specs to the
``nn.Conv`` / ``nn.Dense`` / ``nn.ConvTranspose`` layers of any Flax Linen model by ``Rule``.
They load on first use, so that importing a data module (grain's worker processes do) does not
import Flax.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"BinarySpec": "mlpbnn.spec", "REAL": "mlpbnn.spec", "Rule": "mlpbnn.binary",
         "binarize": "mlpbnn.binary", "parse_rules": "mlpbnn.binary"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mlpbnn' has no attribute {name!r}")
