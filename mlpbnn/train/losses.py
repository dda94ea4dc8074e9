"""Classification losses and metrics, all in float32.

- ``cross_entropy``: hard-label CE with optional label smoothing;
- ``soft_cross_entropy``: -sum softmax(t / T) log_softmax(s / T), times T^2 when T != 1
  (the official BBC/ReActNet ``DistributionLoss`` is T = 1);
- ``distillation``: alpha * soft CE + (1 - alpha) * CE, as the official ``DistillationLoss(0.9)``.
Each returns per-example values; callers average (training) or mask and sum (evaluation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

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
    """1.0 where the label is among the k largest logits (ties counted for the label)."""
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    return (jnp.sum(logits > label_logit, axis=-1) < k).astype(jnp.float32)
