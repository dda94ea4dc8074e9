"""Orbax checkpoints of the whole training state, in one ``CheckpointManager``.

``workdir/checkpoints`` holds the last ``keep`` saves and the save with the best evaluation
metric: orbax's preservation policies (``LatestN`` or ``BestN``) decide what stays, so a step
that is both an evaluation and a checkpoint step is written once. Each save has two items:
``state`` (params, batch stats, estimator theta, optimizer states, step, RNG) and ``meta`` (JSON:
input position, stage, step); evaluation steps also carry their metrics. Saves are asynchronous
and atomic (orbax finalises a temporary directory), so a run killed mid-save resumes from the
last complete checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import flax
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class _NoMetricsNote(logging.Filter):
    """Orbax warns at every save without metrics once a best_fn is set; ours are the plain
    checkpoint steps between evaluations, by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_NoMetricsNote())


class CheckpointMismatch(ValueError):
    """A readable checkpoint whose state does not fit the run's model or optimizer."""


def _flat(tree: Any) -> dict[tuple, Any]:
    return {tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


class Checkpoints:
    """``keep`` latest saves plus the best by ``best_metric`` ('' keeps no best; ``best_mode``
    'max' or 'min')."""

    def __init__(self, workdir: Path, keep: int, best_metric: str = "", best_mode: str = "max"):
        self.directory = workdir / "checkpoints"
        self.damaged = workdir / "checkpoints_damaged"
        self.best_metric = best_metric
        self._open(keep, best_metric, best_mode)

    def _open(self, keep: int, best_metric: str, best_mode: str) -> None:
        self._args = (keep, best_metric, best_mode)
        keep_policies: list[Any] = [policies.LatestN(keep)]
        if best_metric:
            keep_policies.append(policies.BestN(get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min",
                                                n=1, keep_checkpoints_without_metrics=False))
        self.manager = ocp.CheckpointManager(
            self.directory,
            # Handlers named up front (not only on the first save or restore), so that a fresh
            # manager can read a checkpoint's state metadata before restoring it.
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(
                create=True, preservation_policy=policies.AnyPreservationPolicy(keep_policies),
                # With a best_fn orbax writes each save's metrics to disk, where best_step() finds them
                # after a restart; the preservation policy above decides what is kept.
                best_fn=(lambda m: m[best_metric]) if best_metric else None, best_mode=best_mode))

    def set_aside(self, step: int) -> Path:
        """Moves the (damaged) checkpoint ``step`` to ``workdir/checkpoints_damaged/`` (kept for
        inspection, out of the manager's sight) and returns where it went."""
        self.manager.close()
        target = self.damaged / str(step)
        n = 1
        while target.exists():
            target, n = self.damaged / f"{step}.{n}", n + 1
        if jax.process_index() == 0:
            self.damaged.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"mlpbnn_set_aside_{step}")
        self._open(*self._args)
        return target

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """orbax's best kept step by ``best_metric`` (the latest of equals; None before the first
        evaluation or without a metric, where orbax would answer the latest step)."""
        return self.manager.best_step() if self.best_metric else None

    def restore_meta(self, step: int) -> dict[str, Any]:
        return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

    def restore_state(self, step: int, template: Any) -> Any:
        """Restores onto ``template``'s shapes, dtypes and shardings; ``CheckpointMismatch`` if
        the checkpoint holds another model's or optimizer's state (a changed config, not damage)."""
        target = flax.serialization.to_state_dict(template)
        stored = self.manager.item_metadata(step)["state"]
        have = {k: tuple(v.shape) for k, v in _flat(getattr(stored, "tree", stored)).items()
                if getattr(v, "shape", None) is not None}
        if not have:  # zeroed or missing metadata: damage, not a different model
            raise ValueError(f"checkpoint {step}: the state's metadata is unreadable")
        want = {k: tuple(v.shape) for k, v in _flat(target).items()}
        wrong = [f"{'/'.join(k)}: stored {have.get(k)}, the config's {want.get(k)}"
                 for k in sorted(have.keys() | want.keys()) if have.get(k) != want.get(k)]
        if wrong:
            raise CheckpointMismatch(
                f"checkpoint {step} in {self.directory} holds the state of another model or optimizer (a changed "
                f"config?): {'; '.join(wrong[:5])}{f' and {len(wrong) - 5} more' if len(wrong) > 5 else ''}. "
                "Use a new workdir, or the config the run was started with")
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(target))))
        return flax.serialization.from_state_dict(template, restored.state)

    def save(self, step: int, state: Any, meta: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
        """Saves ``state`` at ``step``; ``metrics`` (an evaluation's) make it a candidate for the best."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                                  meta=ocp.args.JsonSave(meta))
        self.manager.save(step, args=args, metrics=dict(metrics) if metrics and self.best_metric else None,
                          force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
