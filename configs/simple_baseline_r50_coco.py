"""The full-precision SimpleBaseline ResNet-50 (Xiao et al., arXiv 1804.06208) on COCO keypoints:
SBPN's distillation teacher, in HRNet's COCO recipe (``configs/sbpn_coco.py``).

    python train.py --config configs/simple_baseline_r50_coco.py --workdir runs/sb_r50 \
        --config.data.dir=/data/coco --config.init_checkpoint=runs/imagenet_r50/variables

or convert the released ``pose_resnet_50_256x192.pth.tar`` (70.4 AP with detector boxes) instead
of training: ``python -m mlpbnn.convert pose_resnet_50_256x192.pth.tar runs/sb_r50/variables
--model simple_baseline_resnet50`` (then ``--config.teacher.checkpoint=runs/sb_r50/variables`` in SBPN).
"""

from configs import sbpn_coco


def get_config():
    c = sbpn_coco.get_config()
    c.model = type(c.model)({"name": "simple_baseline_resnet50", "stage_sizes": (3, 4, 6, 3), "width": 64,
                             "small_inputs": False, "head": "real", "num_deconvs": 3, "deconv_features": 256})
    c.teacher.model = ""
    return c
