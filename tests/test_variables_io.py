"""Variables checkpoints: round trip, refusal to overwrite, and atomic writes."""

from __future__ import annotations

import numpy as np
import pytest

from mlpbnn import variables_io


def test_round_trip_and_no_overwrite(tmp_path):
    tree = {"params": {"a": np.arange(3, dtype=np.float32)}}
    variables_io.save_variables(tmp_path / "v", tree, "resnet18", {"num_classes": 3})
    loaded, meta = variables_io.load_variables(tmp_path / "v")
    np.testing.assert_array_equal(loaded["params"]["a"], tree["params"]["a"])
    assert meta == {"model": "resnet18", "model_kwargs": {"num_classes": 3}}
    with pytest.raises(FileExistsError):
        variables_io.save_variables(tmp_path / "v", tree, "resnet18", {})


def test_a_crash_before_the_description_leaves_nothing_half_written(tmp_path, monkeypatch):
    tree = {"params": {"a": np.ones(2, np.float32)}}

    def crash(*args, **kwargs):
        raise OSError("killed between the tree and model.json")

    monkeypatch.setattr(variables_io.json, "dumps", crash)
    with pytest.raises(OSError, match="killed"):
        variables_io.save_variables(tmp_path / "v", tree, "resnet18", {})
    monkeypatch.undo()
    assert not (tmp_path / "v").exists()  # a rerun is not refused by a broken tree
    variables_io.save_variables(tmp_path / "v", tree, "resnet18", {})
    assert variables_io.load_variables(tmp_path / "v")[1]["model"] == "resnet18"
    assert not (tmp_path / "v.partial").exists()
