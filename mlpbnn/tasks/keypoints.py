"""Top-down keypoint estimation (COCO): heatmap regression, heatmap distillation, and COCO's
keypoint AP through pycocotools.

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
centre and scale, gathers every process's crops, rescores (box score x mean maxval above
``in_vis_thre``), runs OKS-NMS (``oks_thre``) and pycocotools' COCOeval on process 0; every
process returns the same ten stats (``AP`` .. ``ARl``). ``write`` saves the result JSON and a
picture of a few evaluation images with the predicted skeletons beside the ground truth.
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
from mlpbnn.registry import from_section
from mlpbnn.tasks.base import HOST, Evaluator, Task, allgather, gather_rows, register_task

Array = jax.Array
KD_LOSSES = ("mse", "kl")


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
    crops, and process 0 runs post-processing and COCOeval (numbers sent to all)."""

    def __init__(self, task: Keypoints):
        self.task = task
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in ("keypoints", "mask", *_GEOMETRY)}
        self.results: list[dict] = []

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
        stats = np.zeros(len(STAT_NAMES), np.float64)
        if jax.process_index() == 0 and count:
            self.results = t.coco_results(crops)
            from mlpbnn.pose import evaluate

            values = evaluate(t.coco, self.results)
            stats = np.array([values[k] for k in STAT_NAMES], np.float64)
        stats = allgather(stats)[0]  # process 0's numbers everywhere
        return {**dict(zip(STAT_NAMES, (float(v) for v in stats), strict=True)), "count": float(count)}

    def write(self, directory: str | Path, prefix: str = "") -> None:
        """``{prefix}eval_results.json`` (COCO's result format) and ``{prefix}eval_samples.png``
        (process 0, after ``result``)."""
        import json

        from mlpbnn.pose.draw import draw_samples

        directory = Path(directory)
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


_GEOMETRY = ("image_id", "center", "scale", "score", "area")


@dataclasses.dataclass(frozen=True, eq=False)
class Keypoints(Task):
    """``num_joints`` heatmaps of ``heatmap_shape`` (H, W, K) regressed from ``batch['images']``
    against ``batch['heatmaps']`` with ``batch['target_weight']``; evaluated with COCOeval against
    ``coco`` (pycocotools ``COCO``)."""

    coco: Any
    heatmap_shape: tuple[int, int, int]
    load_image: Callable[[int], np.ndarray] | None = None
    eval: PoseEvalConfig = PoseEvalConfig()
    alpha: float = 0.5
    kd_loss: str = "mse"
    temperature: float = 1.0
    samples: int = 4
    best_metric: str = "AP"

    name = "keypoints"
    progress_metric = "pck"

    def __post_init__(self) -> None:
        if self.kd_loss not in KD_LOSSES:
            raise ValueError(f"teacher.loss must be one of {', '.join(KD_LOSSES)}, got {self.kd_loss!r}")

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
        return codec.flip_average(out, apply(images[:, :, ::-1]), shift=self.eval.shift_heatmap)

    def coco_results(self, crops: Mapping[str, np.ndarray]) -> list[dict]:
        """COCO keypoint result entries of decoded crops (the evaluation's host side, also
        ``python -m mlpbnn.infer``'s): ``crops['keypoints']`` (N, K, 3), ``eval_outputs``' heatmap
        (x, y) and score, go to image pixels through each crop's ``center`` and ``scale``
        (``geometry.to_image_coords``); then ``postprocess.coco_results`` with the boxes'
        ``score`` and ``area`` per ``image_id``: rescoring at ``eval.in_vis_thre``, OKS-NMS at
        ``eval.oks_thre``."""
        kpts = np.asarray(crops["keypoints"], np.float64)
        xy = geometry.to_image_coords(kpts[..., :2], np.asarray(crops["center"], np.float64),
                                      np.asarray(crops["scale"], np.float64), self.heatmap_size_wh)
        keypoints = np.concatenate([xy, kpts[..., 2:]], axis=-1)
        return postprocess.coco_results(np.asarray(crops["image_id"]).astype(np.int64), keypoints,
                                        np.asarray(crops["score"], np.float64), np.asarray(crops["area"], np.float64),
                                        self.eval.in_vis_thre, self.eval.oks_thre)

    def eval_outputs(self, outputs: Array, batch: dict[str, Array]) -> dict[str, Array]:
        self._check(outputs)
        coords, maxvals = codec.decode(outputs.astype(jnp.float32), self.eval.decode, self.eval.blur_kernel)
        return {"keypoints": jnp.concatenate([coords, maxvals[..., None]], axis=-1)}

    @property
    def eval_metrics(self) -> tuple[str, ...]:
        return STAT_NAMES

    def evaluator(self) -> KeypointsEvaluator:
        return KeypointsEvaluator(self)

    def summary(self, m: dict[str, float]) -> str:
        text = (f"eval AP {m['AP']:.4f} (AP50 {m['AP50']:.4f}, AP75 {m['AP75']:.4f}, AR {m['AR']:.4f}) on "
                f"{int(m['count']):,} boxes ({self.describe_eval()})")
        for prefix in sorted({k.split("/")[0] for k in m if "/" in k}):
            text += (f"; {prefix} boxes: AP {m[f'{prefix}/AP']:.4f}, AR {m[f'{prefix}/AR']:.4f} on "
                     f"{int(m[f'{prefix}/count']):,} boxes")
        return text


def from_config(config: Any, dataset: Any) -> Keypoints:
    if not isinstance(dataset, KeypointsDataset):
        raise ValueError(f"task 'keypoints' needs a keypoints dataset (data.name 'coco' or 'pose_synthetic'), not "
                         f"{type(dataset).__name__}")
    teacher = config.teacher
    return Keypoints(coco=dataset.val_coco, heatmap_shape=tuple(dataset.heatmap_shape), load_image=dataset.load_image,
                     eval=from_section(PoseEvalConfig, config.get("eval"), "eval"), alpha=float(teacher.alpha),
                     kd_loss=str(teacher.get("loss", "mse")), temperature=float(teacher.temperature))


register_task("keypoints", from_config, sections={"eval": PoseEvalConfig})
