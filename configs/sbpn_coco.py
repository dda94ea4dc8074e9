"""SBPN-ResNet-18 on COCO keypoints: the BBC Bi-Real ResNet-18 backbone with the SimpleBaseline
head (binary deconvolutions), in HRNet's COCO recipe.

    python train.py --config configs/sbpn_coco.py --workdir runs/sbpn18 \
        --config.data.dir=/data/coco \
        --config.data.det_file=/data/coco/person_detection_results/COCO_val2017_detections_AP_H_56_person.json

HRNet's recipe (``w32_256x192_adam_lr1e-3.yaml``): 256x192 crops, 64x48 heatmaps (sigma 2), half
body, scale 0.35, rotation 45, flip; Adam 1e-3, x0.1 at epochs 170 and 200, 210 epochs; batch 32
per GPU on 4 GPUs there, here one global batch of 128 over whatever devices there are; evaluation
on ground-truth boxes during training (as HRNet validates) and, at the end, on the detector boxes
with flip test, one-pixel shift and quarter-offset decoding (the protocol of the published APs).
Distillation from a full-precision SimpleBaseline (``configs/simple_baseline_r50_coco.py``):
``--config.teacher.checkpoint=runs/sb_r50/variables``. The estimator's MLP has its own Adam as in
the ImageNet recipe.
"""

from mlpbnn.train.config import base_config, keypoints_config


def get_config():
    c = keypoints_config(base_config())
    c.seed = 0
    c.model.name = "sbpn_resnet18"
    c.model.stage_sizes = (4, 4, 4, 4)        # binary 3x3 convs per stage (one per Bi-Real block)
    c.model.width = 64
    c.model.small_inputs = False
    c.model.head = "binary"                  # binary deconvolutions; 'real' keeps them real
    c.model.head_shortcut = True             # the parameter-free real path around each binary deconv
    c.model.num_deconvs = 3
    c.model.deconv_features = 256
    c.estimator.weights = "mlp"
    c.estimator.activations = "approx_sign"
    c.estimator.share = True
    c.evals.det = {"source": "det", "every_steps": 0}  # detector boxes at the end (needs data.det_file)
    c.init_strict = False                    # --config.init_checkpoint=runs/bireal18/variables: an ImageNet
                                             # backbone (fc ignored, the head at its init), as HRNet/SB do
    c.batch_size = 128                       # HRNet: 32 per GPU x 4
    c.eval_batch_size = 128
    c.num_epochs = 210
    c.log_every_steps = 100
    c.eval_every_steps = 11700               # about every 10 epochs (1,171 steps each; HRNet: every epoch)
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "step"
    c.optimizer.schedule_unit = "epoch"
    c.optimizer.milestones = (170, 200)
    c.optimizer.gamma = 0.1
    c.optimizer.weight_decay = 0.0           # HRNet's WD 1e-4 is ignored for Adam there
    c.optimizer.estimator.name = "adam"
    c.optimizer.estimator.learning_rate = 1e-3
    c.optimizer.estimator.schedule = "step"
    c.optimizer.estimator.schedule_unit = "epoch"
    c.optimizer.estimator.milestones = (170, 200)
    c.teacher.model = "simple_baseline_resnet50"  # of a PyTorch teacher file (pose_resnet_50 .pth)
    c.teacher.checkpoint = ""
    return c
