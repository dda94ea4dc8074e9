"""Batches: padding with host-only fields, and which fields go to the devices."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from mlpbnn.data.base import HOST, pad_to, stream_indices, to_global


def test_pad_to_pads_host_fields_and_masks():
    batch = {"images": np.ones((3, 2, 2, 1), np.float32), "labels": np.arange(3),
             HOST: {"image_id": np.array([7, 8, 9]), "center": np.ones((3, 2), np.float32)}}
    out = pad_to(batch, 8)
    assert out["mask"].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert out[HOST]["image_id"].tolist() == [7, 8, 9, 0, 0, 0, 0, 0]
    assert out[HOST]["center"].shape == (8, 2) and out["images"].shape == (8, 2, 2, 1)


def test_host_fields_never_reach_the_devices():
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    n = 2 * jax.device_count()
    batch = pad_to({"images": np.zeros((n, 1, 1, 1), np.float32), HOST: {"image_id": np.arange(n)}}, n)
    out = to_global(batch, mesh)
    assert set(out) == {"images", "mask"}
    assert out["images"].sharding.spec == jax.sharding.PartitionSpec("data")


def test_stream_is_a_fresh_permutation_per_epoch():
    idx = stream_indices(0, 20, 10, seed=3)
    assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:]) == list(range(10))
    assert idx[:10].tolist() != idx[10:].tolist()
    np.testing.assert_array_equal(stream_indices(7, 6, 10, seed=3), idx[7:13])
