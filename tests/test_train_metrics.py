"""mlpbnn.train.metrics: the JSON-lines log and TensorBoard scalars (clu's SummaryWriter)."""

from __future__ import annotations

import json

import numpy as np
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from mlpbnn.train.metrics import MetricWriter, read_metrics


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return {tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"]}


def test_jsonl_and_tensorboard_scalars_and_truncate(tmp_path):
    w = MetricWriter(tmp_path)
    w.write(2, "train", {"loss": 1.5, "lr/binary_kernel": 0.25})
    w.write(4, "train", {"loss": np.float32(0.75), "lr/binary_kernel": 0.125})
    w.write(4, "eval", {"top1": 0.5})
    assert read_metrics(tmp_path, "eval") == [{"step": 4, "split": "eval", "top1": 0.5}]
    assert [r["loss"] for r in read_metrics(tmp_path, "train")] == [1.5, 0.75]
    # Each write is flushed: TensorBoard sees it while the run goes on.
    assert _scalars(tmp_path / "tensorboard") == {
        "train/loss": [(2, 1.5), (4, 0.75)], "train/lr/binary_kernel": [(2, 0.25), (4, 0.125)],
        "eval/top1": [(4, 0.5)]}
    w.truncate(2)
    w.write(4, "train", {"loss": 0.5})
    w.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln) for ln in lines] == [
        {"step": 2, "split": "train", "loss": 1.5, "lr/binary_kernel": 0.25},
        {"step": 4, "split": "train", "loss": 0.5}]


def test_inactive_writer_writes_nothing(tmp_path):
    w = MetricWriter(tmp_path, active=False)
    w.write(1, "train", {"loss": 1.0})
    w.truncate(0)
    w.close()
    assert list(tmp_path.iterdir()) == []
