"""Metric output: ``workdir/metrics.jsonl`` (one JSON object per record, with ``step`` and
``split``), TensorBoard scalars in ``workdir/tensorboard`` through clu's ``metric_writers``, and
the parameter overview."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any


class MetricWriter:
    """Writes on process 0 only; after a resume, ``truncate`` drops records past the restored step
    so the log reads as one uninterrupted run. TensorBoard tags are ``split/name``."""

    def __init__(self, workdir: Path, active: bool = True):
        self.active = active
        self.path = workdir / "metrics.jsonl"
        self._tb = None
        if active:
            from clu import metric_writers  # its SummaryWriter imports TensorFlow (about 4 s)

            self._tb = metric_writers.SummaryWriter(str(workdir / "tensorboard"))

    def truncate(self, last_step: int) -> None:
        """Drops the records after ``last_step``, and a partial line (a kill or a full disk in the
        middle of a write) with a warning."""
        if not self.active or not self.path.exists():
            return
        records = _parse(self.path, warn=True)
        keep = [json.dumps(r) for r in records if r["step"] <= last_step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        tmp.replace(self.path)  # atomic: a kill here leaves the old or the new log, never half of one

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        record = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self._tb.write_scalars(int(step), {f"{split}/{k}": float(v) for k, v in metrics.items()})
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _parse(path: Path, warn: bool = False) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError("not a metrics record")
        except ValueError:
            if warn:
                logging.warning("%s: dropping line %d, a partial or damaged record: %.80r", path, number, line)
            continue
        records.append(record)
    return records


def read_metrics(workdir: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The records of ``workdir/metrics.jsonl`` (a partial last line is skipped)."""
    records = _parse(Path(workdir) / "metrics.jsonl")
    return [r for r in records if split is None or r["split"] == split]


def parameter_overview(variables: dict[str, Any]) -> str:
    """A table of every variable (collection/path, shape, dtype, size, mean, std) and the totals,
    from clu (which imports no TensorFlow)."""
    from clu import parameter_overview as po

    return po.get_parameter_overview({k: v for k, v in variables.items() if v}, include_stats=True)
