"""The classification task: its losses against written-out formulas, top-k, and the exact
evaluator."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mlpbnn.tasks import classification as C


def test_distillation_loss_formula():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
    y = np.array([0, 3, 1, 4])
    p_t = np.exp(t) / np.exp(t).sum(-1, keepdims=True)
    log_p_s = s - np.log(np.exp(s).sum(-1, keepdims=True))
    want = 0.9 * -(p_t * log_p_s).sum(-1) + 0.1 * -log_p_s[np.arange(4), y]
    np.testing.assert_allclose(C.distillation(s, t, y, 0.9), want, rtol=1e-5)


def test_topk_and_label_smoothing():
    logits = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]], np.float32)
    labels = np.array([2, 1])
    np.testing.assert_array_equal(C.topk_correct(logits, labels, 1), [0.0, 1.0])
    np.testing.assert_array_equal(C.topk_correct(logits, labels, 2), [1.0, 1.0])
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    smooth = 0.1
    target = np.full((2, 3), smooth / 3) + (1 - smooth) * np.eye(3)[labels]
    np.testing.assert_allclose(C.cross_entropy(logits, labels, smooth), -(target * log_p).sum(-1), rtol=1e-6)


def test_evaluator_counts_only_real_examples_exactly():
    task = C.Classification(num_classes=10)
    ev = task.evaluator()
    rng = np.random.default_rng(0)
    real = []
    for n in (8, 8, 3):  # the last batch padded to 8 rows
        logits = rng.normal(size=(8, 10)).astype(np.float32)
        labels = rng.integers(0, 10, 8)
        out = {k: np.asarray(v) for k, v in task.eval_outputs(logits, {"labels": labels}).items()}
        ev.update(out, {"mask": (np.arange(8) < n).astype(np.float32)})
        real.append((logits[:n], labels[:n]))
    got = ev.result()
    logits = np.concatenate([r[0] for r in real])
    labels = np.concatenate([r[1] for r in real])
    assert got["count"] == 19 and set(got) == {"loss", "top1", "top5", "count"}
    assert got["top1"] == np.mean(np.argmax(logits, -1) == labels)
    np.testing.assert_allclose(got["loss"], np.mean(C.cross_entropy(logits, labels)), rtol=1e-6)
    assert C.Classification(num_classes=3).eval_metrics == ("loss", "top1")


def test_topk_breaks_ties_as_argmax_and_nan_is_never_correct():
    logits = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [2.0, np.nan, 0.0], [np.nan, 0.0, 0.0]], np.float32)
    labels = np.array([0, 1, 0, 0])
    # Row 0 and 1 tie between classes 0 and 1: argmax says 0, so only label 0 is top-1.
    assert np.argmax(logits[0]) == 0
    np.testing.assert_array_equal(C.topk_correct(logits, labels, 1), [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(C.topk_correct(logits, labels, 2), [1.0, 1.0, 0.0, 0.0])
    tied = jnp.asarray([[0.1, 0.1001, -1.0]], jnp.bfloat16)  # both round to the same bf16 value
    assert float(tied[0, 0]) == float(tied[0, 1])
    np.testing.assert_array_equal(C.topk_correct(tied, np.array([1]), 1), [0.0])
    np.testing.assert_array_equal(C.topk_correct(tied, np.array([0]), 1), [1.0])
