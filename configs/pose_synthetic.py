"""The pose quick start: a small SBPN (binary Bi-Real backbone + binary SimpleBaseline head) on
generated stick figures, through the real COCO pipeline, codec and COCOeval.

    python train.py --config configs/pose_synthetic.py --workdir runs/pose_synthetic

The figures (``mlpbnn.data.synthetic_pose``): 17 COCO joints, left limbs warm and right limbs cool,
on gradients with clutter, 96-160 px images, one or two per image, made on the fly from the seed.
The network: three Bi-Real stages of width 16 (one binary 3x3 conv per block), two binary 4x4
deconvolutions of 64 channels, 64x48 crops and 16x12 heatmaps; the BBC MLP estimator on the
weights, ApproxSign on the activations. The HRNet augmentation and evaluation protocol (flip
test with the one-pixel shift, quarter-offset decoding, rescoring, OKS-NMS, COCOeval on
ground-truth boxes of 200 fixed evaluation images).
"""

from mlpbnn.train.config import base_config, keypoints_config


def get_config():
    c = keypoints_config(base_config(), "pose_synthetic")
    c.seed = 0
    c.model.name = "sbpn_resnet18"
    c.model.small_inputs = True              # 3x3 stride-1 stem, no max-pool: stride 8, 8x6 at 64x48
    c.model.stage_sizes = (1, 1, 1, 1)
    c.model.width = 16
    c.model.head = "binary"
    c.model.num_deconvs = 1                  # 8x6 -> 16x12: a quarter of the input
    c.model.deconv_features = 64
    c.estimator.weights = "mlp(init='positive')"
    c.estimator.activations = "approx_sign"
    c.data.num_train = 4000
    c.data.num_val = 200
    c.data.image_size = (64, 48)
    c.data.workers = 0                       # generated images: cheap enough in this process
    c.eval.samples = 4
    c.batch_size = 32
    c.eval_batch_size = 64
    c.num_train_steps = 600
    c.log_every_steps = 50
    c.eval_every_steps = 300
    c.checkpoint_every_steps = 300
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 2e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.estimator.learning_rate = 1e-3
    return c
