"""SimpleBaseline heatmap models and SBPN: pose_resnet's parameter counts, heatmap shapes, dtypes
and init, the binary head's structure (binary deconvolutions, PReLU, parameter-free shortcut,
shared estimator), and one training step with the trainer's optimizer partitions. Parity with an
independent PyTorch pose_resnet and SBPN is in tests/test_convert.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mlpbnn import layers as L
from mlpbnn import models
from mlpbnn.models.simple_baseline import upsample_shortcut
from mlpbnn.train import base_config, optim

SMALL = {"width": 8, "stage_sizes": (1, 1, 1, 1), "deconv_features": 16}
# One stage of one block at full resolution: the cheapest network with a (binary) backbone conv.
ONE_STAGE = {"width": 8, "stage_sizes": (1,), "small_inputs": True, "deconv_features": 16}


def key(seed: int) -> jax.Array:
    """An 'rbg' key: XLA:CPU compiles a model's init with threefry keys 5x slower (25 s against 4 s
    for the one-stage SBPN on this 2-core machine)."""
    return jax.random.key(seed, impl="rbg")


def _params(name: str, **kw) -> int:
    model = models.create(name, **kw)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 48, 3))))
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"]))


def test_parameter_counts_are_pose_resnets():
    """pose.md section 1.2 (conv weights and biases plus BN gamma and beta)."""
    assert _params("simple_baseline_resnet18") == 15_376_721
    assert _params("simple_baseline_resnet34") == 25_484_881
    assert _params("simple_baseline_resnet50") == 33_999_697
    # The binary head's extra parameters are its PReLU slopes only: the shortcut has none.
    backbone = _params("bireal_resnet18") - (512 * 1000 + 1000)
    head = 512 * 256 * 16 + 2 * 256 * 256 * 16 + 3 * (2 * 256 + 256) + 256 * 17 + 17
    assert _params("sbpn_resnet18") == _params("sbpn_resnet18", head_shortcut=False) == backbone + head
    assert _params("sbpn_resnet18", head="real") == backbone + head - 3 * 256


def _layer_dtypes(model, x) -> dict[str, list]:
    """Output dtypes of the BatchNorm, Conv and BinaryConvTranspose calls (traced, not computed)."""
    kinds: dict[str, list] = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and isinstance(context.module, L.BatchNorm | nn.Conv
                                                            | L.BinaryConvTranspose):
            kinds.setdefault(type(context.module).__name__, []).append(out.dtype)
        return out

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda xx: model.init_with_output(jax.random.key(0), xx), x)
    return kinds


@pytest.mark.parametrize("name", ["simple_baseline_resnet18", "sbpn_resnet18"])
def test_heatmaps_at_stride_4_float32_also_in_bfloat16(name):
    x = jax.ShapeDtypeStruct((2, 64, 32, 3), jnp.float32)
    for dtype in (jnp.float32, jnp.bfloat16):
        model = models.create(name, num_joints=5, dtype=dtype, **SMALL)
        heatmaps, variables = jax.eval_shape(lambda xx, m=model: m.init_with_output(jax.random.key(0), xx), x)
        assert heatmaps.shape == (2, 16, 8, 5) and heatmaps.dtype == jnp.float32
        assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))
        kinds = _layer_dtypes(model, x)
        assert kinds["BinaryConvTranspose"] == [jnp.dtype(dtype)] * 3  # the deconvolutions compute in dtype
        assert set(kinds["BatchNorm"]) == {jnp.dtype(jnp.float32)}  # the stream between them stays float32
        assert kinds["Conv"][-1] == jnp.float32  # final_layer


def test_pose_resnet_init():
    """pose_resnet.init_weights: deconvolutions and final_layer N(0, 0.001), bias 0, BN (1, 0)."""
    model = models.create("simple_baseline_resnet18", **{**ONE_STAGE, "width": 128, "deconv_features": 64})
    p = jax.jit(model.init)(key(0), jnp.zeros((1, 4, 4, 3)))["params"]
    for i in (0, 3, 6):
        k = np.asarray(p[f"deconv_layers_{i}"]["kernel"])
        assert abs(k.std() / 0.001 - 1) < 0.05 and abs(k.mean()) < 1e-4, i
        np.testing.assert_array_equal(p[f"deconv_layers_{i + 1}"]["scale"], 1.0)
        np.testing.assert_array_equal(p[f"deconv_layers_{i + 1}"]["bias"], 0.0)
    assert p["deconv_layers_0"]["kernel"].shape == (4, 4, 128, 64)
    assert abs(np.asarray(p["final_layer"]["kernel"]).std() / 0.001 - 1) < 0.1
    np.testing.assert_array_equal(p["final_layer"]["bias"], 0.0)
    assert p["final_layer"]["kernel"].shape == (1, 1, 64, 17)


def test_upsample_shortcut_is_group_mean_then_nearest():
    x = np.random.default_rng(0).normal(0, 1, (2, 3, 2, 4)).astype(np.float32)
    down, up = np.asarray(upsample_shortcut(jnp.asarray(x), 2)), np.asarray(upsample_shortcut(jnp.asarray(x), 8))
    same = np.asarray(upsample_shortcut(jnp.asarray(x), 4))
    assert down.shape == (2, 6, 4, 2) and up.shape == (2, 6, 4, 8)
    for y in range(6):
        for w in range(4):
            src = x[:, y // 2, w // 2]
            np.testing.assert_allclose(down[:, y, w], (src[:, 0::2] + src[:, 1::2]) / 2, rtol=1e-6)
            np.testing.assert_array_equal(up[:, y, w], np.repeat(src, 2, axis=-1))
            np.testing.assert_array_equal(same[:, y, w], src)
    with pytest.raises(ValueError, match="one divides the other"):
        upsample_shortcut(jnp.asarray(x), 3)


def test_sbpn_binary_head_structure():
    x = jnp.zeros((1, 64, 64, 3))
    model = models.create("sbpn_resnet18", **SMALL)
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    head = {k: sorted(v["params"][k]) for k in v["params"] if k.startswith(("deconv", "final"))}
    assert head == {"deconv_layers_0": ["kernel"], "deconv_layers_1": ["bias", "scale"],
                    "deconv_layers_2": ["slope"], "deconv_layers_3": ["kernel"], "deconv_layers_4": ["bias", "scale"],
                    "deconv_layers_5": ["slope"], "deconv_layers_6": ["kernel"], "deconv_layers_7": ["bias", "scale"],
                    "deconv_layers_8": ["slope"], "final_layer": ["bias", "kernel"]}
    assert list(v["estimator"]) == ["weight_estimator"]  # the backbone's one shared theta, no other
    binary = L.binary_layer_paths(model, x)
    assert {"deconv_layers_0", "deconv_layers_3", "deconv_layers_6"} <= binary and "final_layer" not in binary
    real = models.create("sbpn_resnet18", head="real", **SMALL)
    rv = jax.eval_shape(lambda: real.init(jax.random.key(0), x))
    assert "deconv_layers_2" not in rv["params"]
    assert not any(p.startswith("deconv") for p in L.binary_layer_paths(real, x))
    per_layer = models.create("sbpn_resnet18", share_estimator=False, **SMALL)
    pv = jax.eval_shape(lambda: per_layer.init(jax.random.key(0), x))
    assert {"deconv_layers_0", "deconv_layers_3", "deconv_layers_6", "layer1_0"} <= set(pv["estimator"])
    assert "weight_estimator" not in pv["estimator"]


def test_sbpn_shortcut_adds_a_real_path_without_parameters():
    x = jax.random.normal(jax.random.key(0), (1, 4, 4, 3))
    with_short = models.create("sbpn_resnet18", **ONE_STAGE)
    without = models.create("sbpn_resnet18", head_shortcut=False, **ONE_STAGE)
    v = jax.jit(with_short.init)(key(1), x)
    a, b = jax.jit(with_short.apply)(v, x), jax.jit(without.apply)(v, x)  # the same variables fit both
    assert float(jnp.abs(a - b).max()) > 1e-4


@pytest.mark.slow
def test_sbpn_trains_a_step_with_the_trainers_partitions():
    """The deconvolution kernels are in the binary partition; the shared estimator's gradient is
    the sum of the per-layer ones (equal thetas), the head's deconvolutions' among them; one
    optimizer step of the trainer's partitioned optimizer moves every partition."""
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    target = jax.random.uniform(jax.random.key(1), (2, 32, 32, 17))
    shared = models.create("sbpn_resnet18", **ONE_STAGE)
    per_layer = models.create("sbpn_resnet18", share_estimator=False, **ONE_STAGE)
    v = jax.jit(shared.init)(key(2), x)
    pv = jax.eval_shape(per_layer.init, key(2), x)
    theta = v["estimator"]["weight_estimator"]
    flat = traverse_util.flatten_dict(pv["estimator"])
    per_layer_est = traverse_util.unflatten_dict({k: theta[k[-1]] for k in flat})

    def loss(model, params, estimator):
        out, _ = model.apply({"params": params, "estimator": estimator, "batch_stats": v["batch_stats"]}, x,
                             train=True, mutable=["batch_stats"])
        return jnp.mean((out - target) ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(1, 2)), static_argnums=0)
    g_params, g_est = grad(shared, v["params"], v["estimator"])
    _, g_per_layer = grad(per_layer, v["params"], per_layer_est)
    per = traverse_util.flatten_dict(g_per_layer)
    for leaf in ("w0", "w1"):
        total = sum(np.asarray(g, np.float64) for k, g in per.items() if k[-1] == leaf)
        np.testing.assert_allclose(np.asarray(g_est["weight_estimator"][leaf]), total, rtol=1e-3,
                                   atol=1e-3 * np.abs(total).max())
        for i in (0, 3, 6):
            assert float(np.abs(np.asarray(per[(f"deconv_layers_{i}", "weight_estimator", leaf)])).max()) > 0

    binary = L.binary_layer_paths(shared, x)
    trainable = {"params": v["params"], "estimator": v["estimator"]}
    labels = optim.partition_labels(trainable, binary)
    for i in (0, 3, 6):
        assert labels["params"][f"deconv_layers_{i}"]["kernel"] == "binary_kernel"
    assert labels["params"]["final_layer"]["kernel"] == "real_kernel"
    assert labels["params"]["deconv_layers_2"]["slope"] == "other"
    tx, _ = optim.make(base_config(), trainable, binary, 10, 5.0)
    updates, _ = tx.update({"params": g_params, "estimator": g_est}, tx.init(trainable), trainable)
    moved = {}
    for lab, u in zip(jax.tree.leaves(labels), jax.tree.leaves(updates), strict=True):
        moved[lab] = moved.get(lab, False) or bool(jnp.any(u != 0))
    assert moved == {"binary_kernel": True, "real_kernel": True, "other": True, "estimator": True}
