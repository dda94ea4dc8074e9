"""ReActNet-A with the BBC estimator on its weights (He et al., "Binarizing by Classification",
arXiv 2205.07433): the paper's learnable MLP on the strong backbone.

    python train.py --config configs/reactnet_a_bbc_imagenet.py --workdir runs/reactnet_a_bbc \
        --config.data.manual_dir=/data/imagenet_tars --config.teacher.checkpoint=runs/teachers/resnet34

ReActNet's two steps as configs/reactnet_a_imagenet.py; in step 2 the weights go through the BBC
layer instead of HardBinaryConv: the shared MLP (1 -> 100 -> 2, tanh, no biases) on weights
centred per output channel, its gradient scaled by alpha = mean |W| (the official ``MetaConv``).
Step 1 has real weights, so the MLP exists in step 2 only, with its own Adam, x 0.1 at the BBC
recipe's milestones 70/90/100/110 of 120 epochs scaled to the 128-epoch step: 75/96/107/117.

Two changes from the BBC recipe, both from ``python -m bench.reactnet_a_study`` (ReActNet-A-small
on digits, 3 seeds; README, "ReActNet-A"): the MLP starts with a positive slope at 0
(``init='positive'``; PyTorch's init gives it a random sign, which reverses every weight gradient
half the time), and its Adam runs at 1e-4, not BBC's 1e-3. At 1e-3 the MLP's own updates drive the
slope negative within 20 steps on this backbone and the network stays at chance (10.4% top-1);
at 1e-4 it trains to 77.7 +- 3.7%, beside Bop's 78.0 and above Adam + STE's 66.4. Not yet run on
ImageNet.
"""

from configs import reactnet_a_imagenet


def get_config():
    c = reactnet_a_imagenet.get_config()
    c.estimator.weights = "mlp(init='positive')"
    c.estimator.share = True
    c.model.weight_norm = "center"
    c.model.scale_in_backward = True
    c.optimizer.estimator.name = "adam"
    c.optimizer.estimator.learning_rate = 1e-4
    c.optimizer.estimator.schedule = "step"
    c.optimizer.estimator.schedule_unit = "epoch"
    c.optimizer.estimator.milestones = (75, 96, 107, 117)
    c.optimizer.estimator.gamma = 0.1
    c.optimizer.estimator.epoch_start_quirk = True
    return c
