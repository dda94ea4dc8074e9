"""ReActNet-A's two-step ImageNet recipe (Liu et al., arXiv 2003.03488; the released
``mobilenet/1_step1`` and ``mobilenet/2_step2`` ``run.sh`` / ``train.py`` of liuzechun/ReActNet):
69.4% top-1 in the paper.

    python train.py --config configs/reactnet_a_imagenet.py --workdir runs/reactnet_a \
        --config.data.manual_dir=/data/imagenet_tars \
        --config.teacher.checkpoint=runs/teachers/resnet34   # python -m mlpbnn.convert resnet34.pth ...

One run of two stages (``two_stage``): step 1 trains binary activations with real weights
(ApproxSign on the activations, the weights real), step 2 binarizes the weights too (the clipped
STE with the mean |W| scale in the forward: ReActNet's HardBinaryConv), starting from step 1's
variables. Each step: 128 epochs at batch 256, Adam (betas 0.9, 0.999) at 1.25e-3 with
``LambdaLR(1 - epoch / epochs)`` stepped at the start of every epoch (``epoch_start_quirk``);
weight decay 1e-5 in step 1 and 0 in step 2 (``run.sh``). The loss is ReActNet's
distributional loss alone, -sum softmax(teacher) log softmax(student) against a frozen torchvision
ResNet-34 (``teacher.alpha=1``: the labels are unused, as in ``train.py``). RandomResizedCrop(0.08)
+ flip, eval resize 256 / centre crop 224; the released ``Lighting(0.1)`` is off for the reason
given in configs/bireal18_imagenet.py (``--config.data.lighting=0.1`` turns it on).

Two differences from the release, both stated:
- the release's step 2 loads step 1 with ``strict=False``, and its binary kernels are renamed
  (``binary_3x3.weight`` -> ``binary_3x3.weights``), so all 31 binary kernels silently restart
  from their U(0, 0.001) init; here step 2 carries them over (``mlpbnn.convert`` reads both names).
- the release decays only tensors with 4 dimensions or 'conv' in their name (the convs, not BN,
  the biases, PReLU or fc); the trainer's per-stage weight decay (``two_stage.stage1_weight_decay``)
  reaches every partition, so step 1 also decays those by 1e-5.
"""

from configs import bireal18_imagenet


def get_config(step_epochs: int = 128, stage1_weight_decay: float = 1e-5):
    c = bireal18_imagenet.get_config("reactnet_a", (1, 2, 2, 6, 2))
    c.model.width = 32
    c.estimator.weights = "ste"               # HardBinaryConv: clamp(W, -1, 1) gradient, scale forward only
    c.estimator.activations = "approx_sign"   # BinaryActivation
    c.num_epochs = 2 * step_epochs
    c.two_stage.enabled = True
    c.two_stage.stage1_fraction = 0.5
    c.two_stage.stage1_weight_decay = stage1_weight_decay
    c.optimizer.learning_rate = 1.25e-3
    c.optimizer.weight_decay = 0.0            # step 2
    c.optimizer.schedule = "linear"
    c.optimizer.schedule_unit = "epoch"
    c.optimizer.epoch_start_quirk = True
    c.teacher.model = "resnet34"
    c.teacher.alpha = 1.0                     # DistributionLoss only
    c.teacher.temperature = 1.0
    return c
