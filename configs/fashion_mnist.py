"""A small binary ResNet on Fashion-MNIST (60,000 / 10,000 real 28x28 images).

    python train.py --config configs/fashion_mnist.py --workdir runs/fmnist

Reads the four standard IDX gz files from ``/usr/share/datasets/fashion-mnist`` (Debian's
``dataset-fashion-mnist``) or ``--config.data.dir=DIR``. The same network family and recipe as
the paper's ImageNet runs (Bi-Real blocks, BBC MLP on weights, ApproxSign on activations, Adam
with linear decay, the estimator's own Adam), scaled to a CPU.
"""

from mlpbnn import data
from mlpbnn.train.config import base_config


def get_config():
    c = base_config()
    c.model.name = "bireal_resnet18"
    c.model.small_inputs = True
    c.model.width = 32
    # Three stages: at 28x28 a fourth stride-2 stage meets a 7x7 map, where the stride-2 conv gives
    # 4x4 and the 2x2 average-pool shortcut 3x3 (as in PyTorch: AvgPool2d floors).
    c.model.stage_sizes = (1, 1, 1)
    c.estimator.weights = "mlp(init='positive')"
    c.estimator.activations = "approx_sign"
    c.data = data.section("fashion_mnist")
    c.data.dir = ""
    c.data.augment = "crop_flip"
    c.batch_size = 128
    c.num_epochs = 5
    c.log_every_steps = 100
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    c.optimizer.learning_rate = 2.5e-3
    c.optimizer.schedule = "linear"
    c.optimizer.estimator.learning_rate = 1e-3
    return c
