"""The official BBC ImageNet recipe for the Bi-Real ResNet-34 of the paper's 65.7% top-1 (KD from a
torchvision ResNet-34); everything as ``configs/bireal18_imagenet.py`` but the model.

    python train.py --config configs/bireal34_imagenet.py --workdir runs/bireal34 \
        --config.data.manual_dir=/data/imagenet_tars --config.teacher.checkpoint=runs/teachers/resnet34
"""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("bireal18_imagenet", Path(__file__).with_name("bireal18_imagenet.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config():
    return _base.get_config("bireal_resnet34", (6, 8, 12, 6))
