"""SBPN-ResNet-18 on MPII: the BBC Bi-Real ResNet-18 backbone with binary SimpleBaseline
deconvolutions (``configs/sbpn_coco.py``'s model and estimators) in HRNet's MPII recipe
(``experiments/mpii/hrnet/w32_256x256_adam_lr1e-3.yaml``, every value checked: see
``configs/hrnet_w32_mpii.py``): 256x256 crops, 64x64 heatmaps (sigma 2), scale 0.25, rotation 30,
flip, no half body; Adam 1e-3, x0.1 at epochs 170 and 200, 210 epochs, one global batch of 128;
flip test with the one-pixel shift, quarter offset; PCKh on MPII val, the best checkpoint by it.

    python train.py --config configs/sbpn_mpii.py --workdir runs/sbpn18_mpii --config.data.dir=/data/mpii \
        --config.init_checkpoint=runs/bireal18/variables

The estimator's MLP has its own Adam on the same steps. Distillation from a full-precision
SimpleBaseline trained on MPII: ``--config.teacher.checkpoint=... --config.teacher.model=...``.
"""

from configs import sbpn_coco
from configs.hrnet_w32_mpii import mpii_recipe


def get_config():
    c = mpii_recipe(sbpn_coco.get_config())
    c.teacher.model = ""                     # sbpn_coco's COCO teacher (17 joints) does not apply
    return c
