"""Model zoo: backbones by name, a head on top (a classifier or heatmaps), and registry metadata.

``create(name, **kwargs)`` returns the model, a Flax module whose
``apply(variables, images_nhwc, train=..., progress=...)`` returns float32 outputs
(``mutable=['batch_stats']`` when ``train=True``): logits (B, num_classes) for the classifiers,
heatmaps (B, H/4, W/4, num_joints) for the heatmap models (``info(name).head``). ``kwargs`` are
the head's argument (``num_classes``, default 1000, also positional; or ``num_joints``, default 17)
and module overrides. ``create_backbone(name, **overrides)`` returns the feature extractor alone (a
tuple of the stage outputs); a model's variables are the backbone's plus its head's, all at the
top level. ``info(name)`` says what a model is (its head, binary or not, its PyTorch key layout,
the options it takes). Binary models take a ``spec`` (``mlpbnn.BinarySpec``) or its fields by
the names of ``SPEC_OPTIONS``, estimators by name, ``{'name': ..., **hparams}`` mapping or
``Estimator``: ``create('bireal_resnet18', weight_estimator='mlp', activation_estimator='approx_sign')``.

Each family's module registers its models (``registry.register_model``): a new backbone is one
file, imported here.
"""

from mlpbnn.models import hrnet, reactnet_a, resnet, simple_baseline  # noqa: F401 - each registers its models
from mlpbnn.models.heads import Classifier, Head
from mlpbnn.models.hrnet import HRNetHead
from mlpbnn.models.registry import (
                                    ESTIMATOR_FIELDS,
                                    HEADS,
                                    SPEC_OPTIONS,
                                    ModelInfo,
                                    create,
                                    create_backbone,
                                    info,
                                    is_external,
                                    names,
)
from mlpbnn.models.simple_baseline import SimpleBaseline

__all__ = ["ESTIMATOR_FIELDS", "HEADS", "SPEC_OPTIONS", "Classifier", "HRNetHead", "Head", "ModelInfo",
           "SimpleBaseline", "create", "create_backbone", "info", "is_external", "names"]
