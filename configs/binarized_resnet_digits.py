"""A plain Flax ResNet (``examples/flax_resnet.py``, written without mlpbnn) binarized by rules
and trained on scikit-learn's digits:

    python train.py --config configs/binarized_resnet_digits.py --workdir runs/binarized_resnet

The rules, tried in order (``mlpbnn.binarize``): the stem (``conv_init``), the 1x1 projection
shortcuts (``conv_proj``, real in Bi-Real and ReActNet too) and the classifier (``Dense_0``) stay
real, as in binary networks since XNOR-Net; every other convolution binarizes its weights with
the BBC MLP estimator and its inputs with ApproxSign (the paper's layer, ``BinarySpec()``). The
model keeps its ReLUs, and sign(ReLU(y)) with sign(0) = +1 would be +1 everywhere: the spec's
``sign_zero=-1`` makes it -1 where ReLU cut (the zoo's Bi-Real networks use PReLU instead). This
config shows that any model binarizes, not the best binary ResNet.
"""

import flax.linen as nn

from configs import digits
from mlpbnn import BinarySpec, Rule


def get_config():
    c = digits.get_config()
    binary = BinarySpec(weights="mlp(init='positive')", inputs="approx_sign", sign_zero=-1.0)
    c.model = {"name": "examples.flax_resnet:ResNet",
               "kwargs": {"stage_sizes": (1, 1, 1, 1), "num_filters": 32, "small_inputs": True},
               "binarize": (Rule("conv_init", spec=None), Rule(".*/conv_proj", spec=None),
                            Rule(kind=nn.Dense, spec=None), Rule(kind=nn.Conv, spec=binary))}
    c.estimator.weights = "mlp"  # the rules name the estimators; config.estimator keeps its defaults
    return c
