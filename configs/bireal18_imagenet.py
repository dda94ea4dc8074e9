"""The official BBC ImageNet recipe (``trainimagenet.py`` of the PyTorch release) for ResNet-18.

    python train.py --config configs/bireal18_imagenet.py --workdir runs/bireal18 \
        --config.data.manual_dir=/data/imagenet_tars \
        --config.teacher.checkpoint=runs/teachers/resnet34   # python -m mlpbnn.convert resnet34.pth ...

Bi-Real ResNet-18 (one binary 3x3 conv per block, real shortcuts, PReLU), the shared BBC MLP
(1->100->2, tanh, no biases, PyTorch init) on the weights and ApproxSign on the activations;
120 epochs at global batch 256; Adam 2.5e-3 with linear decay to 0 and no weight decay for the
network, Adam 1e-3 x 0.1 at epochs 70/90/100/110 for the estimator; distillation from a frozen
torchvision ResNet-34 with 0.9 soft CE + 0.1 hard CE; RandomResizedCrop(0.08) + flip; eval
resize 256, centre crop 224. The official transform also lists ``Lighting(0.1)`` (AlexNet's PCA
colour noise), but applies it to uint8 pixels with eigenvalues on the 0-1 scale, so it moves a
channel by at most 1/255 in about half the draws: omitted here; ``--config.data.lighting=0.1`` is
the noise at its intended strength (on the 0-1 scale). The official schedules step at the *start*
of each epoch (epoch e runs at the value for e + 1, so the last epoch at lr 0): reproduced here,
switch off with
``--config.optimizer.epoch_start_quirk=False --config.optimizer.estimator.epoch_start_quirk=False``.
"""

from mlpbnn import data
from mlpbnn.train.config import base_config


def get_config(model: str = "bireal_resnet18", stage_sizes: tuple[int, ...] = (4, 4, 4, 4)):
    c = base_config()
    c.seed = 0
    c.model.name = model
    c.model.stage_sizes = stage_sizes         # binary 3x3 convs per stage (one per Bi-Real block)
    c.model.width = 64
    c.model.small_inputs = False
    c.estimator.weights = "mlp"              # the official MetaConv_v2 with torch's default init
    c.estimator.activations = "approx_sign"
    c.estimator.share = True                 # one MLP for the whole network, as the official code
    c.data = data.section("imagenet")
    c.data.manual_dir = ""                   # folder with ILSVRC2012_img_{train,val}.tar
    c.data.data_dir = ""                     # prepared TFDS data ('' : $TFDS_DATA_DIR or ~/tensorflow_datasets)
    c.data.image_size = 224
    c.data.crop_scale_min = 0.08
    c.data.resize_method = "bilinear"
    c.data.eval_resize = 256
    c.data.workers = -1                      # grain worker processes; -1: one per core, 0: in this process
    c.data.lighting = 0.0                    # AlexNet PCA noise's alphastd; 0: off, see the docstring
    c.batch_size = 256
    c.eval_batch_size = 250                  # 50,000 / 250: no padding needed (any size is exact)
    c.num_epochs = 120
    c.log_every_steps = 100
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.best_metric = "top1"
    c.dtype = "float32"                      # bfloat16 on TPU/GPU: params, BN, estimator and loss stay f32

    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 2.5e-3
    c.optimizer.schedule = "linear"
    c.optimizer.schedule_unit = "epoch"
    c.optimizer.epoch_start_quirk = True
    c.optimizer.weight_decay = 0.0
    c.optimizer.estimator.name = "adam"
    c.optimizer.estimator.learning_rate = 1e-3
    c.optimizer.estimator.schedule = "step"
    c.optimizer.estimator.schedule_unit = "epoch"
    c.optimizer.estimator.milestones = (70, 90, 100, 110)
    c.optimizer.estimator.gamma = 0.1
    c.optimizer.estimator.epoch_start_quirk = True

    c.teacher.model = "resnet34"             # the model of a PyTorch teacher file
    c.teacher.checkpoint = ""                # '' : no distillation
    c.teacher.alpha = 0.9
    c.teacher.temperature = 1.0
    c.loss.label_smoothing = 0.0             # CrossEntropyLabelSmooth is constructed but unused officially
    return c
