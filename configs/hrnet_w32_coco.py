"""HRNet-W32 (Sun et al., arXiv 1902.09212) on COCO keypoints, HRNet's own recipe
(``experiments/coco/hrnet/w32_256x192_adam_lr1e-3.yaml``): BHRNet's distillation teacher.

    python train.py --config configs/hrnet_w32_coco.py --workdir runs/hrnet_w32 --config.data.dir=/data/coco \
        --config.data.det_file=/data/coco/person_detection_results/COCO_val2017_detections_AP_H_56_person.json

or convert the released ``pose_hrnet_w32_256x192.pth`` (74.4 AP with detector boxes) instead of
training: ``python -m mlpbnn.convert pose_hrnet_w32_256x192.pth runs/hrnet_w32/variables --model
hrnet_w32``. 256x192 crops, 64x48 heatmaps, half body, scale 0.35, rotation 45, flip; Adam 1e-3,
x0.1 at epochs 170 and 200, 210 epochs, batch 32 x 4 GPUs as one global batch of 128; GT-box
evaluation during training, detector boxes at the end; flip test, shift, quarter offset.
"""

from mlpbnn.train.config import base_config, keypoints_config


def get_config(model: str = "hrnet_w32", width: int = 32):
    c = keypoints_config(base_config())
    c.seed = 0
    c.model.name = model
    c.model.width = width                    # branch channels width * (1, 2, 4, 8)
    c.model.stem_width = 64
    c.model.layer1_blocks = 4                # stage 1's Bottlenecks
    c.model.stage_modules = (1, 4, 3)        # modules of stages 2-4
    c.model.stage_blocks = 4                 # BasicBlocks per branch
    c.evals.det = {"source": "det", "every_steps": 0}  # detector boxes at the end (needs data.det_file)
    c.init_strict = False                    # an ImageNet HRNet as init_checkpoint: its classifier ignored
    c.batch_size = 128
    c.eval_batch_size = 128
    c.num_epochs = 210
    c.log_every_steps = 100
    c.eval_every_steps = 11700               # about every 10 epochs (HRNet: every epoch)
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "step"
    c.optimizer.schedule_unit = "epoch"
    c.optimizer.milestones = (170, 200)
    c.optimizer.gamma = 0.1
    c.optimizer.weight_decay = 0.0           # HRNet's WD 1e-4 is ignored for Adam there
    c.teacher.model = ""
    return c
