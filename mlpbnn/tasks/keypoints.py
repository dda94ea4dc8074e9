"""Top-down keypoint estimation (COCO, MPII): heatmap regression, heatmap distillation, and the
dataset's benchmark: COCO's keypoint AP through pycocotools, or MPII's PCKh (``mlpbnn.pose.pckh``).

- ``joints_mse``: HRNet's ``JointsMSELoss`` with target weights, 0.5 * mean over B*K*H*W of
  (w * (pred - gt))^2 (mmpose's ``KeypointMSELoss`` has no 0.5);
- distillation from a frozen teacher's heatmaps (Zhang et al., Fast Pose Distillation, arXiv
  1811.05419): (1 - alpha) * joints_mse + alpha * KD, KD the MSE between the heatmaps (0.5 * mean
  of the squared difference, every joint) or, ``teacher.loss = 'kl'``, KL(teacher || student)
  between spatially softmaxed heatmaps at ``temperature``, times T^2 (as BiHRNet, arXiv 2311.10296,
  distils the output distribution);
- ``pck``: HRNet's training accuracy (``lib/core/evaluate.py``): argmax of prediction and target,
  distances normalised by (H/10, W/10) in HRNet's order (its [h, w] applied to [x, y]), joints
  whose target argmax lies beyond pixel 1 in x and y counted; the fraction within 0.5. Logging only.

Evaluation (``eval``: ``mlpbnn.pose.eval_config.PoseEvalConfig``): the model runs on the crop and,
with ``flip_test``, on its mirror (flipped back with the one-pixel shift, ``shift_heatmap``);
heatmaps are decoded on the device (``decode``: HRNet's
argmax + quarter offset, or DARK); the host maps them to image coordinates with each crop's
centre and scale and gathers every process's crops. On COCO (``dataset.benchmark == 'coco'``) it
rescores (box score x mean maxval above ``in_vis_thre``), runs OKS-NMS (``oks_thre``) and
pycocotools' COCOeval on process 0; every process returns the same ten stats (``AP`` .. ``ARl``),
the best checkpoint by ``AP``. On MPII (``'pckh'``) the persons are put back in ``valid.json``'s
order (their ``image_id`` is that index) and scored as HRNet's ``MPIIDataset.evaluate``: ``PCKh``
(HRNet's Mean at 0.5, the best checkpoint's metric) and HRNet's nine numbers (Head .. Ankle, Mean,
Mean@0.1). ``write`` saves the result JSON (COCO) or HRNet's ``pred.mat`` (MPII) and a picture of
a few evaluation images with the predicted skeletons beside the ground truth.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mlpbnn.data.base import KeypointsDataset
from mlpbnn.pose import codec, geometry, postprocess
from mlpbnn.pose.eval_config import PoseEvalConfig
from mlpbnn.pose.evaluate import STAT_NAMES
from mlpbnn.pose.pckh import PCKH_NAMES, write_predictions
from mlpbnn.pose.skeleton import COCO, Skeleton
from mlpbnn.registry import from_section
from mlpbnn.tasks.base import HOST, Evaluator, Task, allgather, gather_rows, register_task

Array = jax.Array
KD_LOSSES = ("mse", "kl")
PCKH_METRICS: tuple[str, ...] = ("PCKh", *PCKH_NAMES)  # PCKh: HRNet's Mean (its perf indicator)
BENCHMARKS = ("coco", "pckh")


def joints_mse(pred: Array, target: Array, weight: Array) -> Array:
    """HRNet's JointsMSELoss (use_target_weight): 0.5 * mean((w * (pred - target))^2), per example.
    ``pred``/``target`` (B, H, W, K), ``weight`` (B, K)."""
    diff = (pred.astype(jnp.float32) - target.astype(jnp.float32)) * weight[:, None, None, :]
    return 0.5 * jnp.mean(jnp.square(diff), axis=(1, 2, 3))


def heatmap_kd(student: Array, teacher: Array, loss: str = "mse", temperature: float = 1.0) -> Array:
    """Per-example distillation loss between heatmaps (B, H, W, K); the teacher gets no gradient."""
    s = student.astype(jnp.float32)
    t = jax.lax.stop_gradient(teacher).astype(jnp.float32)
    if loss == "mse":
        return 0.5 * jnp.mean(jnp.square(s - t), axis=(1, 2, 3))
    b, h, w, k = s.shape
    s = jnp.moveaxis(s.reshape(b, h * w, k), 1, 2) / temperature  # (B, K, H*W)
    t = jnp.moveaxis(t.reshape(b, h * w, k), 1, 2) / temperature
    p = jax.nn.softmax(t, axis=-1)
    kl = jnp.sum(p * (jax.nn.log_softmax(t, axis=-1) - jax.nn.log_softmax(s, axis=-1)), axis=-1)
    return jnp.mean(kl, axis=-1) * temperature ** 2


def _argmax_xy(heatmaps: Array) -> tuple[Array, Array]:
    b, h, w, k = heatmaps.shape
    flat = heatmaps.reshape(b, h * w, k)
    idx = jnp.argmax(flat, axis=1)
    maxval = jnp.max(flat, axis=1)
    xy = jnp.stack([idx % w, idx // w], axis=-1).astype(jnp.float32)
    return xy * (maxval > 0)[..., None], maxval


def pck(pred: Array, target: Array, threshold: float = 0.5) -> tuple[Array, Array]:
    """(correct joints, counted joints) of HRNet's accuracy() over a batch; see the module doc."""
    _, h, w, _ = pred.shape
    p, _ = _argmax_xy(pred.astype(jnp.float32))
    g, _ = _argmax_xy(target.astype(jnp.float32))
    counted = (g[..., 0] > 1) & (g[..., 1] > 1)
    norm = jnp.array([h / 10.0, w / 10.0])  # HRNet's order: [h, w] applied to [x, y]
    dist = jnp.linalg.norm((p - g) / norm, axis=-1)
    return jnp.sum((dist < threshold) & counted), jnp.sum(counted)


class KeypointsEvaluator(Evaluator):
    """Collects this process's decoded crops with their geometry; ``result`` gathers every process's
    crops, and process 0 runs post-processing and COCOeval, or PCKh (numbers sent to all)."""

    def __init__(self, task: Keypoints):
        self.task = task
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in ("keypoints", "mask", *_GEOMETRY)}
        self.results: list[dict] = []
        self.preds = np.zeros((0, task.num_joints, 3))  # PCKh: (N, K, x y score) in valid.json's order

    def update(self, outputs: dict[str, np.ndarray], batch: dict[str, Any]) -> None:
        self.parts["keypoints"].append(np.asarray(outputs["keypoints"], np.float64))
        self.parts["mask"].append(np.asarray(batch["mask"], np.float64))
        for key in _GEOMETRY:
            self.parts[key].append(np.asarray(batch[HOST][key], np.float64))

    def _gathered(self) -> dict[str, np.ndarray]:
        local = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in self.parts.items()}
        rows = {k: gather_rows(v) for k, v in local.items()}  # equal padded row counts on every process
        real = rows["mask"] > 0
        return {k: v[real] for k, v in rows.items() if k != "mask"}

    def result(self) -> dict[str, float]:
        t = self.task
        crops = self._gathered()
        count = len(crops["image_id"])
        if t.benchmark == "pckh":
            return self._pckh(crops)
        stats = np.zeros(len(STAT_NAMES), np.float64)
        if jax.process_index() == 0 and count:
            self.results = t.coco_results(crops)
            from mlpbnn.pose import evaluate

            values = evaluate(t.coco, self.results)
            stats = np.array([values[k] for k in STAT_NAMES], np.float64)
        stats = allgather(stats)[0]  # process 0's numbers everywhere
        return {**dict(zip(STAT_NAMES, (float(v) for v in stats), strict=True)), "count": float(count)}

    def _pckh(self, crops: dict[str, np.ndarray]) -> dict[str, float]:
        t = self.task
        order = np.argsort(crops["image_id"], kind="stable")
        if not np.array_equal(crops["image_id"][order], np.arange(len(t.pckh_gt))):  # every process sees this
            raise RuntimeError(f"the evaluation gave {len(order)} persons, not each of the {len(t.pckh_gt)} of "
                               f"{t.pckh_gt.path} once")
        stats = np.zeros(len(PCKH_NAMES), np.float64)
        if jax.process_index() == 0:
            self.preds = t.image_keypoints({k: v[order] for k, v in crops.items()})
            from mlpbnn.pose import pckh

            values = pckh(self.preds[..., :2], t.pckh_gt)
            stats = np.array([values[k] for k in PCKH_NAMES], np.float64)
        stats = allgather(stats)[0]
        values = dict(zip(PCKH_NAMES, (float(v) for v in stats), strict=True))
        return {"PCKh": values["Mean"], **values, "count": float(len(order))}

    def write(self, directory: str | Path, prefix: str = "") -> None:
        """``{prefix}eval_results.json`` (COCO's result format) or ``{prefix}pred.mat`` (MPII:
        HRNet's, 1-based pixels), and ``{prefix}eval_samples.png`` (process 0, after ``result``)."""
        import json

        from mlpbnn.pose.draw import draw_samples

        directory = Path(directory)
        if self.task.benchmark == "pckh":
            self._write_pckh(directory, prefix)
            return
        path = directory / f"{prefix}eval_results.json"
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(json.dumps(self.results))
        tmp.replace(path)
        if self.task.eval.samples <= 0 or self.task.load_image is None:
            return
        image_ids = sorted({r["image_id"] for r in self.results})[: self.task.eval.samples] or \
            sorted(self.task.coco.imgs)[: self.task.eval.samples]
        panels = []
        for image_id in image_ids:
            pred = np.array([r["keypoints"] for r in self.results if r["image_id"] == image_id]).reshape(-1, 17, 3)
            anns = self.task.coco.loadAnns(self.task.coco.getAnnIds(imgIds=image_id, iscrowd=False))
            gt = np.array([a["keypoints"] for a in anns], np.float64).reshape(-1, 17, 3)
            panels.append((self.task.load_image(image_id), pred, gt))
        draw_samples(directory / f"{prefix}eval_samples.png", panels,
                     title=f"{self.task.describe_eval()}: predicted (left), ground truth (right)")

    def _write_pckh(self, directory: Path, prefix: str) -> None:
        from mlpbnn.pose.draw import draw_samples

        t = self.task
        write_predictions(directory / f"{prefix}pred.mat", self.preds)
        shown = min(t.eval.samples, len(self.preds))
        if shown <= 0 or t.load_image is None:
            return
        gt = np.concatenate([t.pckh_gt.joints, t.pckh_gt.visible[..., None]], axis=-1)
        panels = [(t.load_image(i), self.preds[i:i + 1], gt[i:i + 1]) for i in range(shown)]
        draw_samples(directory / f"{prefix}eval_samples.png", panels, skeleton=t.skeleton,
                     title=f"{t.describe_eval()}: predicted (left), ground truth (right)")


_GEOMETRY = ("image_id", "center", "scale", "score", "area")


@dataclasses.dataclass(frozen=True, eq=False)
class Keypoints(Task):
    """``num_joints`` heatmaps of ``heatmap_shape`` (H, W, K) regressed from ``batch['images']``
    against ``batch['heatmaps']`` with ``batch['target_weight']``; evaluated with COCOeval against
    ``coco`` (pycocotools ``COCO``), or, where ``pckh_gt`` is given (MPII's ``gt_valid.mat``,
    ``mlpbnn.pose.pckh.PckhGroundTruth``), by PCKh. ``skeleton``: the joints' flip pairs (flip
    test) and limbs (pictures)."""

    coco: Any
    heatmap_shape: tuple[int, int, int]
    load_image: Callable[[int], np.ndarray] | None = None
    eval: PoseEvalConfig = PoseEvalConfig()
    alpha: float = 0.5
    kd_loss: str = "mse"
    temperature: float = 1.0
    samples: int = 4
    best_metric: str = "AP"
    pckh_gt: Any = None
    skeleton: Skeleton = COCO

    name = "keypoints"
    progress_metric = "pck"

    def __post_init__(self) -> None:
        if self.kd_loss not in KD_LOSSES:
            raise ValueError(f"teacher.loss must be one of {', '.join(KD_LOSSES)}, got {self.kd_loss!r}")
        if self.skeleton.num_joints != self.num_joints:
            raise ValueError(f"the heatmaps have {self.num_joints} joints but the {self.skeleton.name} skeleton "
                             f"{self.skeleton.num_joints}")

    @property
    def benchmark(self) -> str:
        """'pckh' (MPII) where a PCKh ground truth is given, else 'coco'."""
        return "pckh" if self.pckh_gt is not None else "coco"

    @property
    def num_joints(self) -> int:
        return self.heatmap_shape[-1]

    @property
    def heatmap_size_wh(self) -> tuple[int, int]:
        return self.heatmap_shape[1], self.heatmap_shape[0]

    def describe_eval(self) -> str:
        return self.eval.describe()

    def model_args(self) -> dict[str, Any]:
        return {"num_joints": self.num_joints}

    def _check(self, outputs: Array) -> None:
        if tuple(outputs.shape[1:]) != tuple(self.heatmap_shape):
            raise ValueError(f"the model gives heatmaps {tuple(outputs.shape[1:])} (H, W, K) but the data's "
                             f"targets are {tuple(self.heatmap_shape)}: set data.heatmap_size (or the model's "
                             "head) so that they agree")

    def loss(self, outputs: Array, batch: dict[str, Array],
             teacher_outputs: Array | None = None) -> tuple[Array, dict[str, Array]]:
        self._check(outputs)
        mse = joints_mse(outputs, batch["heatmaps"], batch["target_weight"])
        correct, counted = pck(outputs, batch["heatmaps"])
        metrics = {"pck": correct / jnp.maximum(counted, 1), "mse": jnp.mean(mse)}
        if teacher_outputs is None:
            return jnp.mean(mse), metrics
        kd = heatmap_kd(outputs, teacher_outputs, self.kd_loss, self.temperature)
        metrics["kd"] = jnp.mean(kd)
        return jnp.mean((1.0 - self.alpha) * mse + self.alpha * kd), metrics

    def predict(self, apply: Callable[[Array], Array], images: Array) -> Array:
        """Heatmaps of the crops, averaged with those of the mirrored crops under ``flip_test``."""
        out = apply(images)
        if not self.eval.flip_test:
            return out
        return codec.flip_average(out, apply(images[:, :, ::-1]), shift=self.eval.shift_heatmap,
                                  flip_index=self.skeleton.flip_index)

    def image_keypoints(self, crops: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N, K, 3) image pixels and score of decoded crops: ``crops['keypoints']`` (heatmap x, y
        and maxval) through each crop's ``center`` and ``scale`` (``geometry.to_image_coords``,
        HRNet's ``transform_preds``)."""
        kpts = np.asarray(crops["keypoints"], np.float64)
        xy = geometry.to_image_coords(kpts[..., :2], np.asarray(crops["center"], np.float64),
                                      np.asarray(crops["scale"], np.float64), self.heatmap_size_wh)
        return np.concatenate([xy, kpts[..., 2:]], axis=-1)

    def coco_results(self, crops: Mapping[str, np.ndarray]) -> list[dict]:
        """COCO keypoint result entries of decoded crops (the evaluation's host side, also
        ``python -m mlpbnn.infer``'s): ``crops['keypoints']`` (N, K, 3), ``eval_outputs``' heatmap
        (x, y) and score, go to image pixels through each crop's ``center`` and ``scale``
        (``geometry.to_image_coords``); then ``postprocess.coco_results`` with the boxes'
        ``score`` and ``area`` per ``image_id``: rescoring at ``eval.in_vis_thre``, OKS-NMS at
        ``eval.oks_thre``."""
        keypoints = self.image_keypoints(crops)
        return postprocess.coco_results(np.asarray(crops["image_id"]).astype(np.int64), keypoints,
                                        np.asarray(crops["score"], np.float64), np.asarray(crops["area"], np.float64),
                                        self.eval.in_vis_thre, self.eval.oks_thre)

    def eval_outputs(self, outputs: Array, batch: dict[str, Array]) -> dict[str, Array]:
        self._check(outputs)
        coords, maxvals = codec.decode(outputs.astype(jnp.float32), self.eval.decode, self.eval.blur_kernel)
        return {"keypoints": jnp.concatenate([coords, maxvals[..., None]], axis=-1)}

    @property
    def eval_metrics(self) -> tuple[str, ...]:
        return PCKH_METRICS if self.benchmark == "pckh" else STAT_NAMES

    def evaluator(self) -> KeypointsEvaluator:
        return KeypointsEvaluator(self)

    def summary(self, m: dict[str, float]) -> str:
        if self.benchmark == "pckh":
            parts = ", ".join(f"{k} {m[k]:.2f}" for k in PCKH_NAMES if k != "Mean")
            return f"eval PCKh {m['PCKh']:.2f} ({parts}) on {int(m['count']):,} persons ({self.describe_eval()})"
        text = (f"eval AP {m['AP']:.4f} (AP50 {m['AP50']:.4f}, AP75 {m['AP75']:.4f}, AR {m['AR']:.4f}) on "
                f"{int(m['count']):,} boxes ({self.describe_eval()})")
        for prefix in sorted({k.split("/")[0] for k in m if "/" in k}):
            text += (f"; {prefix} boxes: AP {m[f'{prefix}/AP']:.4f}, AR {m[f'{prefix}/AR']:.4f} on "
                     f"{int(m[f'{prefix}/count']):,} boxes")
        return text


def from_config(config: Any, dataset: Any) -> Keypoints:
    if not isinstance(dataset, KeypointsDataset):
        raise ValueError(f"task 'keypoints' needs a keypoints dataset (data.name 'coco', 'mpii' or 'pose_synthetic'), "
                         f"not {type(dataset).__name__}")
    if dataset.benchmark not in BENCHMARKS:
        raise ValueError(f"{type(dataset).__name__}: benchmark {dataset.benchmark!r} is not one of {BENCHMARKS}")
    teacher = config.teacher
    pckh = dataset.benchmark == "pckh"
    return Keypoints(coco=dataset.val_coco, heatmap_shape=tuple(dataset.heatmap_shape), load_image=dataset.load_image,
                     eval=from_section(PoseEvalConfig, config.get("eval"), "eval"), alpha=float(teacher.alpha),
                     kd_loss=str(teacher.get("loss", "mse")), temperature=float(teacher.temperature),
                     best_metric="PCKh" if pckh else "AP", pckh_gt=dataset.pckh_gt if pckh else None,
                     skeleton=dataset.skeleton)


register_task("keypoints", from_config, sections={"eval": PoseEvalConfig})
