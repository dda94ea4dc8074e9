"""A graceful stop: SIGTERM, SIGINT or a wall-time budget end the run after the current step,
with a checkpoint of it, on every process at the same step.

Preemptible machines (spot GPUs, TPU pods) are stopped with SIGTERM and a short grace period;
schedulers with a wall-time limit simply end the job. ``StopRequests`` turns both into a flag
the loop reads between steps. The processes of a multi-host run agree through the train step
itself: each puts its local flag in the batch, the step reduces it over the global batch (one
``max`` over the ``data`` axis, a collective XLA already runs beside the gradients' all-reduce),
and every process reads the same reduced value of step ``s`` while step ``s + 1`` runs. So all
stop after step ``s + 1`` and their checkpoints match, without a host barrier per step. (JAX's
``multihost_utils.reached_preemption_sync_point`` covers only SIGTERM delivered through its
coordination service, not SIGINT or a time budget, and needs ``jax.distributed``.)

The first signal asks for the stop and restores the default action, so a second one ends the
process at once (status 128 + the signal's number), even inside a long compilation.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

import numpy as np

# sysexits.h EX_TEMPFAIL, "a temporary failure; the user is invited to retry": a run that saved
# its state and stopped on request. Schedulers can requeue on it.
EXIT_STOPPED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """The run stopped on request after saving step ``step``; rerunning resumes it."""

    def __init__(self, step: int, cause: str):
        self.step, self.cause = step, cause
        super().__init__(f"stopped at step {step} by {cause}; rerun the same command to resume")


class StopRequests:
    """The local stop flag: set by SIGTERM / SIGINT (handlers installed while entered, in the
    main thread only) or when ``max_runtime`` seconds have passed since construction."""

    def __init__(self, max_runtime: float = 0.0, say: Any = None):
        self.cause: str | None = None
        self._deadline = time.monotonic() + max_runtime if max_runtime > 0 else None
        self._say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # The default action from now on: a second signal ends the process at the C level, at
        # once, even while the main thread is inside XLA.
        signal.signal(signum, signal.SIG_DFL)
        if self.cause is None:
            self.cause = signal.Signals(signum).name
            self._say(f"{self.cause} received: stopping after the current step with a checkpoint "
                      f"(send it again to stop at once, losing the steps since the last checkpoint)")

    def requested(self) -> bool:
        """Whether this process wants to stop (a signal came, or the wall-time budget ran out)."""
        if self.cause is None and self._deadline is not None and time.monotonic() >= self._deadline:
            self.cause = "max_runtime"
            self._say("config.max_runtime reached: stopping after the current step with a checkpoint")
        return self.cause is not None

    def flag(self, rows: int) -> np.ndarray:
        """The local flag as a batch field (one value per local example), reduced by the step."""
        return np.full((rows,), int(self.requested()), np.int32)


def pack_pending(values: list[dict[str, Any]]) -> dict[str, Any]:
    """The metrics of steps not yet logged, as JSON for a checkpoint's metadata, so that a run
    stopped between two log steps logs the same window means after resuming."""
    if not values:
        return {}
    return {k: {"dtype": str(np.asarray(values[0][k]).dtype), "values": [np.asarray(v[k]).item() for v in values]}
            for k in values[0]}


def unpack_pending(packed: dict[str, Any]) -> list[dict[str, Any]]:
    if not packed:
        return []
    n = len(next(iter(packed.values()))["values"])
    return [{k: np.asarray(p["values"][i], p["dtype"]) for k, p in packed.items()} for i in range(n)]
