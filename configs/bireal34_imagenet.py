"""The official BBC ImageNet recipe for the Bi-Real ResNet-34 of the paper's 65.7% top-1 (KD from a
torchvision ResNet-34); everything as ``configs/bireal18_imagenet.py`` but the model.

    python train.py --config configs/bireal34_imagenet.py --workdir runs/bireal34 \
        --config.data.manual_dir=/data/imagenet_tars --config.teacher.checkpoint=runs/teachers/resnet34
"""

from configs import bireal18_imagenet


def get_config():
    return bireal18_imagenet.get_config("bireal_resnet34", (6, 8, 12, 6))
