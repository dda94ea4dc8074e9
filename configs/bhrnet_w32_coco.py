"""BHRNet-W32 on COCO keypoints: HRNet-W32's topology with Bi-Real/BBC binary blocks in stages 2-4
(``mlpbnn/models/hrnet.py``), HRNet's recipe, distilled from a full-precision HRNet-W32.

    python train.py --config configs/bhrnet_w32_coco.py --workdir runs/bhrnet_w32 --config.data.dir=/data/coco \
        --config.data.det_file=/data/coco/person_detection_results/COCO_val2017_detections_AP_H_56_person.json \
        --config.teacher.checkpoint=runs/hrnet_w32/variables

The teacher: ``configs/hrnet_w32_coco.py`` trained, or the released HRNet-W32 converted
(``python -m mlpbnn.convert pose_hrnet_w32_256x192.pth runs/hrnet_w32/variables --model hrnet_w32``;
a ``.pth`` file also works directly as ``teacher.checkpoint`` with ``teacher.model = 'hrnet_w32'``).
Loss: 0.5 heatmap MSE to the targets + 0.5 heatmap MSE to the teacher (``teacher.alpha``);
``--config.teacher.loss=kl`` distils the spatially softmaxed heatmaps with KL instead, as BiHRNet
(arXiv 2311.10296) distils the output distribution. ``--config.model.binary_fuse=True`` binarises
the transition and fuse convolutions too (1.11 G OPs instead of 1.85 G at 256x192). The BBC MLP
estimator has its own Adam, as in the ImageNet recipe.
"""

from configs import hrnet_w32_coco


def get_config():
    c = hrnet_w32_coco.get_config("bhrnet_w32", 32)
    c.model.binary_fuse = False              # True: transition and fuse convolutions binary as well
    c.estimator.weights = "mlp"
    c.estimator.activations = "approx_sign"
    c.estimator.share = True
    c.optimizer.estimator.name = "adam"
    c.optimizer.estimator.learning_rate = 1e-3
    c.optimizer.estimator.schedule = "step"
    c.optimizer.estimator.schedule_unit = "epoch"
    c.optimizer.estimator.milestones = (170, 200)
    c.teacher.model = "hrnet_w32"            # of a PyTorch teacher file
    c.teacher.checkpoint = ""                # '' : no distillation
    c.teacher.alpha = 0.5
    c.teacher.loss = "mse"                   # or 'kl' (spatial softmax, teacher.temperature)
    return c
