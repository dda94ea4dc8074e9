"""ILSVRC2012 (ImageNet-1k) through tensorflow-datasets' ``imagenet2012`` builder, read by position.

- ``prepare``: TFDS's builder run on the official tars into ``array_record`` files, every image
  decoded on the way and the corrupt ones listed (``prepare``, ``is_prepared``, ``PrepareReport``);
- ``augment``: decoding and augmentation of one image (``Augment``: Inception crop, flip, optional
  PCA lighting; resize and centre crop for evaluation);
- ``dataset``: the ``ImageNet`` dataset, its batches made on grain by ``mlpbnn.data.pipeline``;
- ``tars``: tars in the official layout written from images in memory (tests, benchmarks);
- ``cli``: the command line::

    python -m mlpbnn.data.imagenet prepare --manual_dir DIR_WITH_TARS [--data_dir ~/tensorflow_datasets]
    python -m mlpbnn.data.imagenet info [--data_dir DIR]
"""

from mlpbnn.data.imagenet.augment import (
    ASPECT_RANGE,
    CROP_TRIES,
    FILTERS,
    PCA_EIGVAL,
    PCA_EIGVEC,
    Augment,
    decode_rgb,
    eval_geometry,
    lighting_noise,
    parse_record,
    random_resized_crop,
)
from mlpbnn.data.imagenet.cli import main
from mlpbnn.data.imagenet.dataset import ImageNet
from mlpbnn.data.imagenet.prepare import (
    CORRUPT_LIST,
    NAME,
    TAR_FILES,
    TEST_TAR,
    PrepareReport,
    check_image,
    default_data_dir,
    is_prepared,
    prepare,
)
from mlpbnn.data.imagenet.tars import encode_jpeg, write_tars
from mlpbnn.data.pipeline import AUTO_WORKERS, ENDLESS, MEAN, STD

__all__ = [
    "ASPECT_RANGE", "AUTO_WORKERS", "CORRUPT_LIST", "CROP_TRIES", "ENDLESS", "FILTERS", "MEAN", "NAME", "PCA_EIGVAL",
    "PCA_EIGVEC", "STD", "TAR_FILES", "TEST_TAR", "Augment", "ImageNet", "PrepareReport", "check_image",
    "decode_rgb", "default_data_dir", "encode_jpeg", "eval_geometry", "is_prepared", "lighting_noise", "main",
    "parse_record", "prepare", "random_resized_crop", "write_tars",
]
