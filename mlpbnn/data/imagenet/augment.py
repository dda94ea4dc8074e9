"""Decoding and augmentation of one ImageNet image, a pure function of its bytes, the seed and (in
training) its global stream position, so that a run resumed at a position reproduces its batches
whatever the process or worker count.

Images are decoded here, not by TFDS: TFDS converts the 22 known CMYK training JPEGs to RGB when
preparing, but its numpy decoder returns 4 channels for any other CMYK file; PIL's ``convert("RGB")``
handles grayscale, CMYK (Adobe-inverted included) and the one PNG alike. A file that cannot be
decoded becomes the mean image (all zeros after normalisation), with a warning.

Training: Inception-style random resized crop (area ``crop_scale_min``..1 of the image, aspect
3/4..4/3, ten tries, then torchvision's fallback: the largest centred crop within the aspect
range), horizontal flip, resize to ``image_size``, ImageNet mean/std normalisation and, as an
option (``lighting``, off by default), AlexNet's PCA colour noise on the 0-1 scale.
Evaluation: shorter side to ``round(image_size * eval_resize / 224)`` (256 at 224), centre crop.
"""

from __future__ import annotations

import io
import math
import sys
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mlpbnn.data.pipeline import STD, normalise_into

FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
           "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST,
           "area": Image.Resampling.BOX}
ASPECT_RANGE = (3 / 4, 4 / 3)
CROP_TRIES = 10
_AUG_KEY = 0x1A6E  # keeps the augmentation seeds apart from stream_indices' permutation seeds
_LIGHT_KEY = 0x119F  # and Lighting's apart from both
# AlexNet's PCA of ImageNet's RGB pixels on the 0-1 scale (Krizhevsky et al., NeurIPS 2012, sec. 4.1):
# eigenvalues and unit eigenvectors (columns), as published with fb.resnet.torch's Lighting.
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
PCA_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                       [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]], np.float32)



def random_resized_crop(rng: np.random.Generator, height: int, width: int, scale_min: float = 0.08,
                        ratio: tuple[float, float] = ASPECT_RANGE, tries: int = CROP_TRIES
                        ) -> tuple[int, int, int, int]:
    """Inception crop box ``(top, left, h, w)``: area uniform in ``[scale_min, 1]`` of the image,
    log-uniform aspect ``w/h`` in ``ratio``; after ``tries`` misses, the largest centred box whose
    aspect lies in ``ratio`` (torchvision's ``RandomResizedCrop`` semantics)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(tries):
        target = area * rng.uniform(scale_min, 1.0)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def eval_geometry(height: int, width: int, resize: int, size: int) -> tuple[float, float, float, float]:
    """Source-pixel box ``(left, upper, right, lower)`` that ends up in the ``size`` centre crop
    after resizing the shorter side to ``resize`` (torchvision's Resize + CenterCrop)."""
    if width <= height:
        nw, nh = resize, int(resize * height / width)
    else:
        nw, nh = int(resize * width / height), resize
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    sx, sy = nw / width, nh / height
    return left / sx, top / sy, (left + size) / sx, (top + size) / sy


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def _rgb(im: Image.Image, want: tuple[float, float] | None, size0: tuple[int, int]
         ) -> tuple[Image.Image, float, float]:
    """Decodes ``im`` as RGB, at a reduced JPEG scale (1/2, 1/4 or 1/8, libjpeg's DCT scaling) when
    the result keeps at least ``want`` pixels (width, height); returns the image and the factors that
    map original pixel coordinates to its own."""
    sx = sy = 1.0
    if want is not None:
        drafted = im.draft("RGB", (max(1, math.ceil(want[0])), max(1, math.ceil(want[1]))))
        if drafted is not None:  # (mode, (0, 0, w0 / scale, h0 / scale))
            sx, sy = drafted[1][2] / size0[0], drafted[1][3] / size0[1]
    im = im.convert("RGB") if im.mode != "RGB" else im
    im.load()
    return im, sx, sy


def decode_rgb(data: bytes) -> np.ndarray:
    """The image as an (h, w, 3) uint8 RGB array, whatever its colour space (grayscale, CMYK)."""
    with _open(data) as im:
        return np.asarray(_rgb(im, None, im.size)[0])


def parse_record(raw: bytes) -> tuple[bytes, int, str]:
    """(image bytes, label, file name) of one serialised ``imagenet2012`` example (a tf.train.Example
    with TFDS's flat feature keys ``image``, ``label`` and ``file_name``)."""
    from tensorflow_datasets.proto import tf_example_pb2

    feature = tf_example_pb2.Example.FromString(raw).features.feature
    return (feature["image"].bytes_list.value[0], int(feature["label"].int64_list.value[0]),
            feature["file_name"].bytes_list.value[0].decode())


def lighting_noise(rng: np.random.Generator, alphastd: float) -> np.ndarray:
    """AlexNet's PCA colour noise (Krizhevsky, Sutskever, Hinton, NeurIPS 2012, sec. 4.1): the RGB shift
    ``sum_j eigvec[:, j] * alpha_j * eigval_j`` with ``alpha_j ~ N(0, alphastd)``, on the 0-1 pixel scale,
    added to every pixel of the image. Its covariance is ``alphastd**2 * V diag(eigval**2) V^T``."""
    alpha = rng.normal(0.0, alphastd, 3)
    return (PCA_EIGVEC.astype(np.float64) @ (alpha * PCA_EIGVAL)).astype(np.float32)


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(name: str, err: Exception) -> None:
    """One line per corrupt file and process (a grain worker is a process of its own)."""
    with _warned_lock:
        if name in _warned:
            return
        _warned.add(name)
    print(f"[imagenet] cannot decode {name} ({type(err).__name__}: {err}); using the mean image",
          file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Augment:
    """Decoding and augmentation of one image: a pure function of its bytes, ``seed`` and (training) its
    global stream position, so that any process or worker computes the same pixels. Picklable: grain's
    worker processes receive it."""

    seed: int
    size: int
    crop_scale_min: float = 0.08
    resize_method: str = "bilinear"
    eval_resize: int = 256  # the shorter side before the centre crop, in pixels
    draft: bool = True
    lighting: float = 0.0  # alphastd of lighting_noise; 0: off

    def train_pixels(self, data: bytes, position: int) -> np.ndarray:
        """uint8 (S, S, 3): random resized crop + flip drawn from (seed, position)."""
        rng = np.random.default_rng([self.seed, _AUG_KEY, int(position)])
        s = self.size
        with _open(data) as im:
            w0, h0 = im.size
            top, left, h, w = random_resized_crop(rng, h0, w0, self.crop_scale_min)
            flip = rng.random() < 0.5
            want = (w0 * s / w, h0 * s / h) if self.draft else None
            rgb, sx, sy = _rgb(im, want, (w0, h0))
            out = rgb.resize((s, s), FILTERS[self.resize_method],
                             box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy))
        arr = np.asarray(out)
        return arr[:, ::-1] if flip else arr

    def lighting_shift(self, position: int) -> np.ndarray:
        """The RGB shift (0-1 scale) that Lighting adds at ``position``. Its own generator: the crop's
        draw count depends on the image size, and switching Lighting on must not move the crops."""
        return lighting_noise(np.random.default_rng([self.seed, _LIGHT_KEY, int(position)]), self.lighting)

    def eval_pixels(self, data: bytes) -> np.ndarray:
        """uint8 (S, S, 3): shorter side to ``eval_resize``, centre crop."""
        s, r = self.size, self.eval_resize
        with _open(data) as im:
            w0, h0 = im.size
            box = eval_geometry(h0, w0, r, s)
            want = (w0 * r / min(w0, h0), h0 * r / min(w0, h0)) if self.draft else None
            rgb, sx, sy = _rgb(im, want, (w0, h0))
            out = rgb.resize((s, s), FILTERS[self.resize_method],
                             box=(box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy))
        return np.asarray(out)

    def fill(self, out: np.ndarray, raw: bytes, position: int | None) -> int:
        """Parses one serialised example, writes its normalised pixels into ``out`` (training when
        ``position`` is given, else evaluation) and returns its label. A file that cannot be decoded
        becomes the mean image (zeros after normalisation) with a warning: it must not stop a long run."""
        data, label, name = parse_record(raw)
        try:
            arr = self.eval_pixels(data) if position is None else self.train_pixels(data, position)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a corrupt file
            _warn_once(name, e)
            out[...] = 0.0
            return label
        normalise_into(out, arr)
        if position is not None and self.lighting:
            # On the 0-1 scale before normalisation: (x + shift - mean) / std = normalised x + shift / std.
            out += self.lighting_shift(position) / STD
        return label
