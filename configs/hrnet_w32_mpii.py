"""HRNet-W32 (Sun et al., arXiv 1902.09212) on MPII, HRNet's own MPII recipe: BHRNet-W32's
distillation teacher on MPII, and ``mpii_recipe``, which the binary MPII configs apply too.

    python train.py --config configs/hrnet_w32_mpii.py --workdir runs/hrnet_w32_mpii --config.data.dir=/data/mpii

or convert the released ``pose_hrnet_w32_256x256.pth`` (90.3 PCKh on MPII val) instead of
training: ``python -m mlpbnn.convert pose_hrnet_w32_256x256.pth runs/hrnet_w32_mpii/variables
--model hrnet_w32 --num-joints 16``.

Every value of ``experiments/mpii/hrnet/w32_256x256_adam_lr1e-3.yaml`` (leoxiaobin/deep-high-resolution-net.pytorch
at 6f69e467) was checked against this file:

- DATASET: mpii under ROOT with TRAIN_SET train, TEST_SET valid (``data.dir``, ``train_set``,
  ``val_set``); COLOR_RGB true; FLIP true; ROT_FACTOR 30; SCALE_FACTOR 0.25; PROB_HALF_BODY -1.0
  (never: ``half_body_prob`` 0) with NUM_JOINTS_HALF_BODY 8; DATA_FORMAT jpg. The rotation
  probability 0.6 is JointsDataset's constant. These are ``MpiiConfig``'s defaults.
- MODEL: pose_hrnet, NUM_JOINTS 16 (the dataset's), IMAGE_SIZE 256x256, HEATMAP_SIZE 64x64, SIGMA 2,
  TARGET_TYPE gaussian; EXTRA: FINAL_CONV_KERNEL 1, STAGE2 1 module x 2 branches, STAGE3 4 x 3,
  STAGE4 3 x 4, BASIC blocks, 4 per branch, channels 32/64/128/256, SUM fusion (as COCO's W32);
  INIT_WEIGHTS / PRETRAINED an ImageNet HRNet-W32 (``init_checkpoint``, ``init_strict`` False).
- LOSS: USE_TARGET_WEIGHT true (``joints_mse``); no per-joint weights (MPII has none).
- TRAIN: BATCH_SIZE_PER_GPU 32 on GPUS (0,1,2,3): one global batch of 128; SHUFFLE true; epochs
  0-210; adam, LR 1e-3, LR_FACTOR 0.1 at LR_STEP 170 and 200; WD 1e-4 (unused: HRNet passes it to
  SGD only); GAMMA1, GAMMA2, MOMENTUM, NESTEROV unused with Adam.
- TEST: BATCH_SIZE_PER_GPU 32 (128 here); FLIP_TEST true, SHIFT_HEATMAP true, POST_PROCESS true
  (the quarter offset); MODEL_FILE '' (``init_checkpoint`` to evaluate a converted model).
- Not training settings: AUTO_RESUME (a workdir always resumes here), CUDNN, WORKERS 24
  (``data.workers`` -1: one per core), PRINT_FREQ 100 (``log_every_steps``), OUTPUT_DIR/LOG_DIR
  (the workdir), DEBUG (``eval_samples.png`` instead).

HRNet validates every epoch and keeps the best by PCKh (its Mean); here every 10 epochs (MPII's
22,246 training persons are 174 steps of 128) and at the end, on all 2,958 validation persons,
the best checkpoint by ``PCKh``.
"""

from configs import hrnet_w32_coco
from mlpbnn import data

MPII_TRAIN_PERSONS = 22246  # HRNet's annot/train.json (valid.json: 2,958)


def mpii_recipe(c):
    """A COCO pose config turned into HRNet's MPII recipe (the values above; the model kept)."""
    c.data = data.section("mpii")            # 256x256, 64x64 heatmaps, scale 0.25, rotation 30, no half body
    c.best_metric = "PCKh"
    c.evals = {}                             # MPII has no detector boxes
    c.batch_size = 128                       # HRNet: 32 per GPU x 4
    c.eval_batch_size = 128
    c.num_epochs = 210
    c.log_every_steps = 100
    c.eval_every_steps = 1700                # about every 10 epochs of 174 steps (HRNet: every epoch)
    c.checkpoint_every_steps = 500
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "step"
    c.optimizer.schedule_unit = "epoch"
    c.optimizer.milestones = (170, 200)
    c.optimizer.gamma = 0.1
    c.optimizer.weight_decay = 0.0           # HRNet's WD 1e-4 is ignored for Adam there
    c.eval.flip_test = True
    c.eval.shift_heatmap = True
    c.eval.decode = "quarter"
    return c


def get_config():
    return mpii_recipe(hrnet_w32_coco.get_config())
