"""Evaluations: the exact pass over an evaluation set that the trainer and the vmapped study share,
and the named evaluations of a config (``config.evals``, the shape of big_vision's).

``evaluate`` runs the jit'd eval step over every padded batch of a dataset, hands each batch's
outputs to the evaluators while the next batch computes, and returns their results, each checked
to have counted every example once.

``config.evals.NAME = {"source": ..., "every_steps": ...}`` (``EvalEntry``) adds an evaluation
beside the main one: the dataset's evaluation set ``source`` (``Dataset.eval_set``; COCO: 'gt' or
'det', the detector boxes), run every ``every_steps`` steps (a multiple of ``eval_every_steps``;
0: only at the end) and at the end; its metrics are prefixed ``NAME/`` and its evaluator's files
``NAME_``. The main evaluation (the dataset's own evaluation set, every ``eval_every_steps``) picks
the best checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from mlpbnn.data.base import Batch
from mlpbnn.tasks.base import Evaluator


@dataclasses.dataclass(frozen=True)
class EvalEntry:
    """``config.evals.NAME``: the dataset's evaluation set ``source`` ('' : its default), evaluated
    every ``every_steps`` steps (0: only at the end) and at the end."""

    source: str = ""
    every_steps: int = 0

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ValueError(f"every_steps: must be >= 0 (0: only at the end), got {self.every_steps}")


def evaluate(eval_step: Callable[[Any, Any], Any], variables: Any, batches: Iterable[Batch],
             evaluators: Sequence[Evaluator], to_device: Callable[[Batch], Any],
             split: Callable[[Any], Sequence[dict[str, Any]]], eval_size: int) -> list[dict[str, float]]:
    """Every batch through ``eval_step(variables, to_device(batch))``; ``split(outputs)`` gives one
    host-side outputs dict per evaluator (the study's copies, or the trainer's one), updated with
    the batch while the next batch computes. RuntimeError if an evaluator did not count
    ``eval_size`` examples."""
    previous = None

    def hand_over(out: Any, batch: Batch) -> None:
        for evaluator, rows in zip(evaluators, split(out), strict=True):
            evaluator.update(rows, batch)

    for batch in batches:
        out = eval_step(variables, to_device(batch))
        if previous is not None:
            hand_over(*previous)
        previous = (out, batch)
    if previous is not None:
        hand_over(*previous)
    results = [evaluator.result() for evaluator in evaluators]
    for r in results:
        if r.get("count") != eval_size:
            raise RuntimeError(f"evaluation saw {r.get('count')} examples, the eval set has {eval_size}")
    return results
