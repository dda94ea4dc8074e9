"""AdamBNN's recipe for ReActNet-A (Liu et al., "How Do Adam and Training Strategies Help BNNs
Optimization?", arXiv 2106.11309; liuzechun/AdamBNN ``step1/run.sh``, ``step2/run.sh``): 70.5%
top-1 in the paper.

    python train.py --config configs/reactnet_a_adambnn_imagenet.py --workdir runs/reactnet_a_adambnn \
        --config.data.manual_dir=/data/imagenet_tars --config.teacher.checkpoint=runs/teachers/resnet34

Everything as configs/reactnet_a_imagenet.py (two steps, Adam 1.25e-3 with per-epoch linear decay,
batch 256, the distributional loss against a ResNet-34) but 256 epochs per step and weight decay
5e-6 in step 1 (0 in step 2). AdamBNN keeps its binary kernels 4-D (``...weight``), so its step 2
does inherit step 1's kernels, as here.
"""

from configs import reactnet_a_imagenet


def get_config():
    return reactnet_a_imagenet.get_config(step_epochs=256, stage1_weight_decay=5e-6)
