"""Orbax checkpoints of the whole training state.

``workdir/checkpoints`` keeps the last k saves, ``workdir/best`` the one with the best eval
metric. Each save has two items: ``state`` (params, batch stats, estimator theta, optimizer
states, step, RNG) and ``meta`` (JSON: input position, stage, step). Saves are asynchronous and
atomic (orbax finalises a temporary directory), so a run killed mid-save resumes from the last
complete checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax
import jax
import orbax.checkpoint as ocp


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


class Checkpoints:
    def __init__(self, workdir: Path, keep: int, best_metric: str = ""):
        self.directory = workdir / "checkpoints"
        self.latest = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("state", "meta"))
        self.best_metric = best_metric
        self.best = None
        if best_metric:
            self.best = ocp.CheckpointManager(
                workdir / "best", item_names=("state", "meta"),
                options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True, best_fn=lambda m: m[best_metric],
                                                     best_mode="min" if best_metric == "loss" else "max"))

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore_meta(self, step: int) -> dict[str, Any]:
        return dict(self.latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

    def restore_state(self, step: int, template: Any) -> Any:
        """Restores onto ``template``'s shapes, dtypes and shardings."""
        target = flax.serialization.to_state_dict(template)
        restored = self.latest.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(target))))
        return flax.serialization.from_state_dict(template, restored.state)

    @staticmethod
    def _args(state: Any, meta: dict[str, Any]) -> ocp.args.Composite:
        return ocp.args.Composite(state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                                  meta=ocp.args.JsonSave(meta))

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        self.latest.save(step, args=self._args(state, meta), force=True)

    def save_best(self, step: int, state: Any, meta: dict[str, Any], metrics: dict[str, float]) -> None:
        if self.best is not None:
            self.best.save(step, args=self._args(state, meta), metrics={self.best_metric: metrics[self.best_metric]},
                           force=True)

    def wait(self) -> None:
        self.latest.wait_until_finished()
        if self.best is not None:
            self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        if self.best is not None:
            self.best.close()
