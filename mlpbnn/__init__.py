"""mlpbnn: binary neural networks whose sign functions learn their own gradients (BBC, He et al.,
arXiv 2205.07433), in JAX/Flax.

``BinarySpec`` says how a layer binarizes; ``binarize(model, rules)`` applies specs to the
``nn.Conv`` / ``nn.Dense`` / ``nn.ConvTranspose`` layers of any Flax Linen model by ``Rule``.
"""

from mlpbnn.binary import Rule, binarize, parse_rules
from mlpbnn.spec import REAL, BinarySpec

__all__ = ["REAL", "BinarySpec", "Rule", "binarize", "parse_rules"]
