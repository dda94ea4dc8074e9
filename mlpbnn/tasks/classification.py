"""Image classification: cross-entropy (optionally label-smoothed), distillation from a frozen
teacher, top-k accuracy, and an exact evaluator over a padded-and-masked evaluation set.

Losses return per-example float32 values; the task averages them (training) or masks and sums
them (evaluation).

- ``cross_entropy``: hard-label CE with optional label smoothing;
- ``soft_cross_entropy``: -sum softmax(t / T) log_softmax(s / T), times T^2 when T != 1
  (Hinton et al., arXiv 1503.02531; the official BBC/ReActNet ``DistributionLoss`` is T = 1);
- ``distillation``: alpha * soft CE + (1 - alpha) * CE, as the official ``DistillationLoss(0.9)``
  (ReActNet, arXiv 2003.03488, distils with the soft term alone; alpha = 1 here).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlpbnn.data.base import ClassificationDataset
from mlpbnn.tasks.base import Evaluator, Task, allgather, register_task

Array = jax.Array


def cross_entropy(logits: Array, labels: Array, label_smoothing: float = 0.0) -> Array:
    logits = logits.astype(jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        return optax.softmax_cross_entropy(logits, targets)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def soft_cross_entropy(student: Array, teacher: Array, temperature: float = 1.0) -> Array:
    t = jax.nn.softmax(jax.lax.stop_gradient(teacher).astype(jnp.float32) / temperature)
    ce = -jnp.sum(t * jax.nn.log_softmax(student.astype(jnp.float32) / temperature), axis=-1)
    return ce * temperature ** 2 if temperature != 1.0 else ce


def distillation(student: Array, teacher: Array, labels: Array, alpha: float, temperature: float = 1.0,
                 label_smoothing: float = 0.0) -> Array:
    soft = soft_cross_entropy(student, teacher, temperature)
    if alpha == 1.0:
        return soft
    return alpha * soft + (1.0 - alpha) * cross_entropy(student, labels, label_smoothing)


def topk_correct(logits: Array, labels: Array, k: int) -> Array:
    """1.0 where the label is among the k largest logits.

    Ties are broken as ``argmax`` breaks them, towards the lower class index: the label's rank is
    the number of classes with a larger logit plus those with an equal logit and a lower index
    (bf16 logits tie often). A row with any NaN logit is never correct.
    """
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    lower = jnp.arange(logits.shape[-1]) < labels[:, None]
    rank = jnp.sum((logits > label_logit) | ((logits == label_logit) & lower), axis=-1)
    return ((rank < k) & ~jnp.any(jnp.isnan(logits), axis=-1)).astype(jnp.float32)


class ClassificationEvaluator(Evaluator):
    """Exact sums over the real (mask = 1) examples, in float64 on the host, summed over processes."""

    def __init__(self, keys: tuple[str, ...]):
        self.keys = keys
        self.sums = np.zeros(len(keys) + 1, np.float64)  # the metrics, then the count

    def update(self, outputs: dict[str, np.ndarray], batch: dict[str, Any]) -> None:
        mask = np.asarray(batch["mask"], np.float64)
        self.sums += [np.sum(np.asarray(outputs[k], np.float64) * mask) for k in self.keys] + [mask.sum()]

    def result(self) -> dict[str, float]:
        total = allgather(self.sums).sum(axis=0)
        count = total[-1]
        return {**{k: float(v / count) for k, v in zip(self.keys, total[:-1], strict=True)}, "count": float(count)}


@dataclasses.dataclass(frozen=True)
class Classification(Task):
    """``num_classes``-way classification of ``batch['images']`` with integer ``batch['labels']``.
    With a teacher the loss is ``distillation(alpha, temperature)``; top-5 is reported from 5
    classes on."""

    num_classes: int
    label_smoothing: float = 0.0
    alpha: float = 0.9
    temperature: float = 1.0
    best_metric: str = "top1"

    name = "classification"
    progress_metric = "top1"

    @property
    def topk(self) -> tuple[int, ...]:
        return (1, 5) if self.num_classes >= 5 else (1,)

    def model_args(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes}

    def loss(self, outputs: Array, batch: dict[str, Array],
             teacher_outputs: Array | None = None) -> tuple[Array, dict[str, Array]]:
        labels = batch["labels"]
        if teacher_outputs is None:
            per_example = cross_entropy(outputs, labels, self.label_smoothing)
        else:
            per_example = distillation(outputs, teacher_outputs, labels, self.alpha, self.temperature,
                                       self.label_smoothing)
        metrics = {f"top{k}": jnp.mean(topk_correct(outputs, labels, k)) for k in self.topk}
        return jnp.mean(per_example), metrics

    def eval_outputs(self, outputs: Array, batch: dict[str, Array]) -> dict[str, Array]:
        labels = batch["labels"]
        return {"loss": cross_entropy(outputs, labels),
                **{f"top{k}": topk_correct(outputs, labels, k) for k in self.topk}}

    @property
    def eval_metrics(self) -> tuple[str, ...]:
        return ("loss", *(f"top{k}" for k in self.topk))

    def evaluator(self) -> ClassificationEvaluator:
        return ClassificationEvaluator(self.eval_metrics)

    def summary(self, m: dict[str, float]) -> str:
        return (f"eval top-1 {m['top1']:.2%}" + (f", top-5 {m['top5']:.2%}" if "top5" in m else "")
                + f", loss {m['loss']:.4f} on {int(m['count']):,} images")


def from_config(config: Any, dataset: Any) -> Classification:
    if not isinstance(dataset, ClassificationDataset):
        raise ValueError(f"task 'classification' needs a dataset with classes; {type(dataset).__name__} has none")
    return Classification(num_classes=int(dataset.num_classes), label_smoothing=float(config.loss.label_smoothing),
                          alpha=float(config.teacher.alpha), temperature=float(config.teacher.temperature))


register_task("classification", from_config)
