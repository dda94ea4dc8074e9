"""BHRNet-W32 on MPII: HRNet-W32's topology with Bi-Real/BBC binary blocks in stages 2-4
(``configs/bhrnet_w32_coco.py``'s model, estimators and distillation) in HRNet's MPII recipe
(``experiments/mpii/hrnet/w32_256x256_adam_lr1e-3.yaml``, every value checked: see
``configs/hrnet_w32_mpii.py``), distilled from a full-precision HRNet-W32 on MPII: the comparison
with BiHRNet (arXiv 2311.10296, 87.9 PCKh) and the binary hourglass (arXiv 1703.00862, 76.9).

    python train.py --config configs/bhrnet_w32_mpii.py --workdir runs/bhrnet_w32_mpii \
        --config.data.dir=/data/mpii --config.teacher.checkpoint=runs/hrnet_w32_mpii/variables

The teacher: ``configs/hrnet_w32_mpii.py`` trained, or the released ``pose_hrnet_w32_256x256.pth``
(as ``teacher.checkpoint`` directly, ``teacher.model = 'hrnet_w32'``). ``--config.teacher.loss=kl``
distils the spatially softmaxed heatmaps, as BiHRNet does.
"""

from configs import bhrnet_w32_coco
from configs.hrnet_w32_mpii import mpii_recipe


def get_config():
    return mpii_recipe(bhrnet_w32_coco.get_config())
