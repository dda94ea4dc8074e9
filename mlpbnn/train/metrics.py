"""Metric output: ``workdir/metrics.jsonl`` (one JSON object per record, with ``step`` and
``split``), TensorBoard scalars in ``workdir/tensorboard``, and the parameter overview."""

from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path
from typing import Any


class MetricWriter:
    """Writes on process 0 only; after a resume, ``truncate`` drops records past the restored step
    so the log reads as one uninterrupted run."""

    def __init__(self, workdir: Path, active: bool = True):
        self.active = active
        self.path = workdir / "metrics.jsonl"
        self._tb = None
        if active:
            if "tensorflow" not in sys.modules:
                # TensorBoard's writer would import all of TensorFlow (seconds, many threads) just to
                # write event files; its 'notf' marker module selects the built-in pure-Python path.
                sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
            self._tb = EventFileWriter(str(workdir / "tensorboard"))

    def truncate(self, last_step: int) -> None:
        if not self.active or not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= last_step]
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        record = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        from tensorboard.compat.proto import event_pb2, summary_pb2
        values = [summary_pb2.Summary.Value(tag=f"{split}/{k}", simple_value=float(v)) for k, v in metrics.items()]
        self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary_pb2.Summary(value=values)))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    path = Path(workdir) / "metrics.jsonl"
    records = [json.loads(ln) for ln in path.read_text().splitlines() if ln]
    return [r for r in records if split is None or r["split"] == split]


def parameter_overview(variables: dict[str, Any]) -> str:
    """A table of every variable (collection/path, shape, dtype, size, mean, std) and the totals,
    from clu (which imports no TensorFlow)."""
    from clu import parameter_overview as po

    return po.get_parameter_overview({k: v for k, v in variables.items() if v}, include_stats=True)
