"""HRNet (pose_hrnet) and BHRNet: heatmap and gradient parity with independent PyTorch references
(tests/torch_reference.py: PoseHRNet, written from pose.md section 6) at 256x192, exact
to_torch(from_torch(sd)) round trips of the full pose_hrnet state_dict, the binary structure
(which layers are binary, the shared estimator, PReLU), the converter's errors and one training
step with the trainer's optimizer partitions. Parameter counts and MACs: tests/test_complexity.py."""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

from mlpbnn import complexity, convert, models
from mlpbnn import layers as L
from mlpbnn.train import base_config, optim
from tests import torch_reference as ref

HW = (256, 192)  # the COCO crop, (height, width)
# A narrow HRNet with every code path of the full one: all 4 branches, upsampling x2/x4/x8, stride-2
# chains of 1-3 convs, a full fuse (stage4_0) and the branch-0-only last one (stage4_1), layer1's
# downsample and a plain Bottleneck.
NARROW = {"width": 4, "stage_modules": (1, 1, 2), "stage_blocks": 1, "layer1_blocks": 2, "stem_width": 8}
# Cheaper for the gradient tests: the same paths, all but a full fuse of 4 branches and layer1's
# plain Bottleneck (the full networks' forward tests have them).
GRAD = {**NARROW, "stage_modules": (1, 1, 1), "layer1_blocks": 1}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """PyTorch on one thread here: its float64 convolutions (the slow im2col path) took 56-61 s
    instead of 1.4 s for the BHRNet-W32 forward with 2 threads on the shared 2-core machine under
    load (OpenMP threads spinning for a core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")  # XLA:CPU compiles inits with threefry keys much slower


def reference(name: str, num_joints: int = 17, binary_fuse: bool = False, float64: bool = False,
              **kw) -> torch.nn.Module:
    """The PyTorch reference of ``name`` (``kw``: NARROW's sizes) in eval mode, with random BN
    affine parameters and running statistics, PReLU slopes and final_layer bias (the full
    networks' heatmaps stay O(10) with them)."""
    torch.manual_seed(0)
    width = kw.pop("width", 48 if name.endswith("48") else 32)
    net = ref.PoseHRNet(width, num_joints=num_joints, binary=name.startswith("bhrnet"), binary_fuse=binary_fuse,
                        **kw)
    ref.randomize_batch_norm(net)
    with torch.no_grad():
        net.final_layer.bias.uniform_(-0.1, 0.1)
    return (net.double() if float64 else net).eval()


def heatmaps(name: str, net: torch.nn.Module, float64: bool, **model_kw) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode heatmaps (NHWC) of the reference and of from_torch's variables, on one 256x192
    image; JAX runs op by op (compiling the whole W32 network takes longer than running it)."""
    dtype = np.float64 if float64 else np.float32
    x = np.random.default_rng(0).normal(0, 1, (1, *HW, 3)).astype(dtype)
    with torch.no_grad():
        heat_t = net(ref.nhwc_to_torch(x)).permute(0, 2, 3, 1).numpy()
    variables = convert.from_torch(name, net.state_dict(), dtype=dtype, **model_kw)
    model = models.create(name, dtype=jnp.dtype(dtype), **model_kw)
    return np.asarray(model.apply(variables, x)), heat_t


@pytest.mark.slow
def test_hrnet_w32_heatmaps_equal_pose_hrnet_at_256x192():
    """The full hrnet_w32 (28.5 M parameters) in float32: equal heatmaps (64x48x17) to the PyTorch
    pose_hrnet. Gradients are compared on the narrow network below (same code path, float64)."""
    heat_j, heat_t = heatmaps("hrnet_w32", reference("hrnet_w32"), float64=False)
    assert heat_j.shape == (1, 64, 48, 17) and heat_t.std() > 1
    np.testing.assert_allclose(heat_j, heat_t, rtol=1e-4, atol=1e-4 * np.abs(heat_t).max())


@pytest.mark.slow
def test_bhrnet_w32_heatmaps_equal_the_reference_at_256x192_float64():
    """The full bhrnet_w32 in float64 (in float32 the two frameworks' roundings flip the signs of
    pre-sign values near zero): equal heatmaps to the PyTorch BHRNet (BBC blocks, shared meta net,
    PReLUs). Gradients, the estimator's included, are compared on the narrow network below."""
    with jax.enable_x64(True):
        heat_j, heat_t = heatmaps("bhrnet_w32", reference("bhrnet_w32", float64=True), float64=True)
    assert heat_j.shape == (1, 64, 48, 17) and heat_t.std() > 1
    np.testing.assert_allclose(heat_j, heat_t, rtol=1e-9, atol=1e-9 * np.abs(heat_t).max())


def run_compiled(fn, *args):
    """``jax.jit(fn)(*args)`` compiled at XLA's backend optimisation level 0: the same operations,
    compiled 2-3x faster on the CPU (these tests compile far more than they run)."""
    return jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})(*args)


def gradient_parity(name: str, binary_fuse: bool = False, float64: bool = True) -> None:
    """GRAD network at 256x192: equal train-mode heatmaps (BN batch statistics) and equal MSE
    gradients of every parameter, the shared estimator's included."""
    kw = {**GRAD, **({"binary_fuse": True} if binary_fuse else {})}
    dtype = np.float64 if float64 else np.float32
    net = reference(name, binary_fuse=binary_fuse, float64=float64, **GRAD)
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (1, *HW, 3)).astype(dtype)
    target = rng.uniform(0, 1, (1, HW[0] // 4, HW[1] // 4, 17)).astype(dtype)
    variables = convert.from_torch(name, net.state_dict(), dtype=dtype, **kw)
    net.train()
    heat_t = net(ref.nhwc_to_torch(x)).permute(0, 2, 3, 1)
    ((heat_t - torch.tensor(target)) ** 2).mean().backward()
    heat_t = heat_t.detach().numpy()
    grad_sd = {k: p.grad for k, p in net.named_parameters()}
    grad_sd.update({k: torch.zeros_like(b) for k, b in net.named_buffers()})
    grads_t = traverse_util.flatten_dict(convert.from_torch(name, grad_sd, dtype=dtype, **kw))
    grads_t = {k: v for k, v in grads_t.items() if k[0] != "batch_stats"}
    with jax.enable_x64(float64):
        model = models.create(name, dtype=jnp.dtype(dtype), **kw)
        trainable = {k: v for k, v in variables.items() if k != "batch_stats"}

        def loss(tv):
            out, _ = model.apply({**tv, "batch_stats": variables["batch_stats"]}, x, train=True,
                                 mutable=["batch_stats"])
            return jnp.mean((out - target) ** 2), out

        (_, heat_j), grads_j = run_compiled(jax.value_and_grad(loss, has_aux=True), trainable)
    rtol = 1e-9 if float64 else 1e-4
    np.testing.assert_allclose(np.asarray(heat_j), heat_t, rtol=rtol, atol=rtol * np.abs(heat_t).max())
    grads_j = traverse_util.flatten_dict(grads_j)
    assert grads_j.keys() == grads_t.keys()
    if name.startswith("bhrnet"):
        assert ("estimator", "weight_estimator", "w1") in grads_t
    for path, gt in grads_t.items():
        assert np.abs(gt).max() > 0, "/".join(path)  # every parameter takes part
        np.testing.assert_allclose(np.asarray(grads_j[path]), gt, rtol=10 * rtol, atol=10 * rtol * np.abs(gt).max(),
                                   err_msg="/".join(path))


@pytest.mark.slow
@pytest.mark.parametrize("name,binary_fuse,float64", [("hrnet_w32", False, False), ("bhrnet_w32", False, True),
                                                     ("bhrnet_w32", True, True)])
def test_gradient_parity_at_256x192(name, binary_fuse, float64):
    """Narrow networks (GRAD: the code paths of the full one) at 256x192, the binary ones in
    float64: equal train-mode heatmaps and gradients of every parameter to the references'."""
    gradient_parity(name, binary_fuse, float64)


def test_round_trip_of_the_full_pose_hrnet_state_dict_is_exact():
    """pose.md section 6: 1,754 keys with num_batches_tracked; ``module.`` prefixes accepted; the
    keys, shapes and values come back exactly and load strictly into the reference."""
    net = reference("hrnet_w32")
    sd = net.state_dict()
    assert len(sd) == 1754
    assert tuple(sd["transition3.3.0.0.weight"].shape) == (256, 128, 3, 3)
    assert tuple(sd["stage4.0.fuse_layers.3.0.2.0.weight"].shape) == (256, 32, 3, 3)
    assert "stage4.2.fuse_layers.1.0.0.0.weight" not in sd and "stage4.2.fuse_layers.0.3.0.weight" in sd
    variables = convert.from_torch("hrnet_w32", {"module." + k: v for k, v in sd.items()})
    assert variables["params"]["stage4_0"]["fuse_layers_3_0_2_0"]["kernel"].shape == (3, 3, 32, 256)
    back = convert.to_torch("hrnet_w32", variables)
    assert sorted(back) == sorted(sd)
    for k, v in sd.items():
        assert back[k].shape == v.shape and torch.equal(back[k], v), k
    ref.PoseHRNet().load_state_dict(back, strict=True)


@pytest.mark.parametrize("binary_fuse", [False, True])
def test_bhrnet_round_trip_is_exact(binary_fuse):
    net = reference("bhrnet_w32", binary_fuse=binary_fuse, num_joints=5, **NARROW)
    sd = net.state_dict()
    kw = {**NARROW, "binary_fuse": binary_fuse}
    variables = convert.from_torch("bhrnet_w32", sd, **kw)
    assert variables["params"]["final_layer"]["kernel"].shape == (1, 1, 4, 5)  # num_joints from final_layer
    back = convert.to_torch("bhrnet_w32", variables)
    assert sorted(back) == sorted(sd)
    for k, v in sd.items():
        assert back[k].shape == v.shape and torch.equal(back[k], v), k
    assert "stage2.0.branches.1.1.binary_conv.weights" in sd and "meta_net.network.Linear1.weight" in sd
    assert ("stage3.0.fuse_layers.2.0.0.2.weight" in sd) and ("transition1.0.2.weight" in sd)  # PReLUs


def test_errors_name_key_and_shapes():
    sd = reference("hrnet_w32", **NARROW).state_dict()
    bad = {k: v for k, v in sd.items() if k != "stage3.0.fuse_layers.2.1.0.1.running_var"}
    bad["stage4.1.fuse_layers.1.0.0.0.weight"] = torch.zeros(8, 4, 3, 3)  # stage4's last module fuses into 0 only
    bad["transition2.2.0.0.weight"] = sd["transition2.2.0.0.weight"].transpose(0, 1)
    with pytest.raises(ValueError) as e:
        convert.from_torch("hrnet_w32", bad, **NARROW)
    msg = str(e.value)
    assert msg.startswith("state_dict does not match model 'hrnet_w32' (17 joints)")
    assert "missing: stage3.0.fuse_layers.2.1.0.1.running_var (expected shape (16,))" in msg
    assert "unexpected: stage4.1.fuse_layers.1.0.0.0.weight (8, 4, 3, 3)" in msg
    assert ("misshaped: transition2.2.0.0.weight: expected shape (16, 8, 3, 3) for "
            "params/transition2_2_0_0/kernel, got (8, 16, 3, 3)") in msg
    with pytest.raises(ValueError, match=r"^model 'hrnet_w32' has a heatmap head: num_classes"):
        convert.from_torch("hrnet_w32", sd, 10, **NARROW)
    bhr = reference("bhrnet_w32", **NARROW).state_dict()
    with pytest.raises(ValueError, match=r"unexpected: stage2\.0\.branches\.0\.0\.binary_conv\.weights"):
        convert.from_torch("hrnet_w32", bhr, **NARROW)  # a BHRNet checkpoint is not an HRNet one


def test_registry_entries():
    for name, binary, layout in [("hrnet_w32", False, "pose_hrnet"), ("hrnet_w48", False, "pose_hrnet"),
                                 ("bhrnet_w32", True, "bbc"), ("bhrnet_w48", True, "bbc")]:
        info = models.info(name)
        assert (info.head, info.binary, info.torch_layout) == ("heatmap", binary, layout), name
        assert {"width", "stage_modules", "stage_blocks", "layer1_blocks", "stem_width"} <= set(info.options)
        assert ("binary_fuse" in info.options) == binary
    assert models.info("bhrnet_w32").estimator_fields == ("weight_estimator", "activation_estimator")
    with pytest.raises(ValueError, match="has a heatmap head: num_classes"):
        models.create("hrnet_w32", num_classes=10)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['binary_fuse'\]"):
        models.create("hrnet_w32", binary_fuse=True)
    with pytest.raises(ValueError, match="stage_modules"):
        jax.eval_shape(models.create("hrnet_w32", stage_modules=(1, 0)).init, jax.random.key(0),
                       jnp.zeros((1, 64, 64, 3)))
    with pytest.raises(ValueError, match="an input of 64x48 gives a 16x12 stride-4 map.* multiples of 32"):
        jax.eval_shape(models.create("hrnet_w32", **NARROW).init, jax.random.key(0), jnp.zeros((1, 64, 48, 3)))
    backbone = models.create_backbone("hrnet_w48", **{**NARROW, "width": 6})
    out = jax.eval_shape(backbone.init_with_output, jax.random.key(0), jnp.zeros((1, 64, 32, 3)))[0]
    assert [o.shape for o in out] == [(1, 16, 8, 6)]  # the last module fuses into branch 0 only


def test_heatmaps_float32_also_in_bfloat16():
    x = jax.ShapeDtypeStruct((2, 64, 32, 3), jnp.float32)
    for name in ("hrnet_w32", "bhrnet_w32"):
        model = models.create(name, num_joints=5, dtype=jnp.bfloat16, **NARROW)
        out, variables = jax.eval_shape(lambda xx, m=model: m.init_with_output(jax.random.key(0), xx), x)
        assert out.shape == (2, 16, 8, 5) and out.dtype == jnp.float32
        assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))


def test_bhrnet_binary_layers_estimator_and_prelus():
    x = jnp.zeros((1, 64, 64, 3))
    model = models.create("bhrnet_w32", **NARROW)
    v = jax.eval_shape(model.init, jax.random.key(0), x)
    binary = L.binary_layer_paths(model, x)
    branch_convs = {f"stage{s}_{m}/branches_{b}_{k}/binary_conv"
                    for s, modules in ((2, 1), (3, 1), (4, 2)) for m in range(modules)
                    for b in range(s) for k in range(2)}  # two binary blocks per BasicBlock
    assert binary == branch_convs
    assert binary == {layer.path for layer in complexity.count(model, (64, 64, 3)).layers if layer.params_1bit}
    assert list(v["estimator"]) == ["weight_estimator"]  # one theta, shared by all
    p = v["params"]
    assert sorted(p["stage2_0"]["branches_0_1"]) == ["binary_conv", "bn1", "nonlinear"]
    assert "slope" in p["transition1_0_2"] and "slope" in p["transition3_3_0_2"]
    assert "slope" in p["stage3_0"]["nonlinear_2"] and "slope" in p["stage4_0"]["fuse_layers_3_0_1_2"]
    assert "nonlinear_1" not in p["stage4_1"]
    fuse = models.create("bhrnet_w32", binary_fuse=True, **NARROW)
    fuse_binary = L.binary_layer_paths(fuse, x)
    assert {"transition1_0_0", "transition3_3_0_0", "stage3_0/fuse_layers_0_2_0",
            "stage4_0/fuse_layers_3_0_2_0", "stage4_1/fuse_layers_0_3_0"} <= fuse_binary
    # transitions 2 + 1 + 1; fuse convs of stage2_0, stage3_0, stage4_0 (full), stage4_1 (into branch 0)
    assert len(fuse_binary - binary) == 4 + 2 + 7 + 16 + 3
    assert not any(p.startswith(("conv", "layer1", "final")) for p in fuse_binary)
    assert fuse_binary == {layer.path for layer in complexity.count(fuse, (64, 64, 3)).layers if layer.params_1bit}
    per_layer = models.create("bhrnet_w32", share_estimator=False, **NARROW)
    pv = jax.eval_shape(per_layer.init, jax.random.key(0), x)
    assert "weight_estimator" not in pv["estimator"] and "weight_estimator" in pv["estimator"]["stage2_0"][
        "branches_0_0"]["binary_conv"]


def test_hrnet_init():
    """pose_hrnet.init_weights: every conv N(0, 0.001), BN (1, 0), final_layer bias 0; BHRNet's
    binary convs keep the BBC code's Xavier init."""
    model = models.create("bhrnet_w32", **{**NARROW, "width": 32, "stem_width": 64, "stage_modules": (1,)})
    p = jax.jit(model.init)(key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    for path in (("conv2",), ("layer1_0", "conv2"), ("transition1_1_0_0",), ("stage2_0", "fuse_layers_0_1_0")):
        k = np.asarray(flax.traverse_util.flatten_dict(p)[(*path, "kernel")])
        assert abs(k.std() / 0.001 - 1) < 0.1 and abs(k.mean()) < 1e-4, path
    np.testing.assert_array_equal(p["stage2_0"]["fuse_layers_0_1_1"]["scale"], 1.0)
    np.testing.assert_array_equal(p["final_layer"]["bias"], 0.0)
    b = np.asarray(p["stage2_0"]["branches_1_0"]["binary_conv"]["kernel"])
    assert abs(b.std() / np.sqrt(2 / (9 * 64 + 9 * 64)) - 1) < 0.1  # xavier_uniform


@pytest.mark.slow
def test_bhrnet_trains_a_step_with_the_trainers_partitions():
    """The binary kernels are in the binary partition and nothing else is; the shared estimator's
    gradient is the sum of the per-layer ones (equal thetas), each binary conv's among them; one
    optimizer step of the trainer's partitioned optimizer moves every partition."""
    kw = {**GRAD, "stage_modules": (1,)}
    x = jax.random.normal(jax.random.key(0), (2, 64, 32, 3))
    target = jax.random.uniform(jax.random.key(1), (2, 16, 8, 17))
    shared = models.create("bhrnet_w32", **kw)
    per_layer = models.create("bhrnet_w32", share_estimator=False, **kw)
    v = run_compiled(shared.init, key(2), x)
    pv = jax.eval_shape(per_layer.init, key(2), x)
    theta = v["estimator"]["weight_estimator"]
    flat = traverse_util.flatten_dict(pv["estimator"])
    per_layer_est = traverse_util.unflatten_dict({k: theta[k[-1]] for k in flat})

    def loss(model, params, estimator):
        out, _ = model.apply({"params": params, "estimator": estimator, "batch_stats": v["batch_stats"]}, x,
                             train=True, mutable=["batch_stats"])
        return jnp.mean((out - target) ** 2)

    g_params, g_est = run_compiled(functools.partial(jax.grad(loss, argnums=(1, 2)), shared), v["params"],
                                   v["estimator"])
    _, g_per_layer = run_compiled(functools.partial(jax.grad(loss, argnums=(1, 2)), per_layer), v["params"],
                                  per_layer_est)
    per = traverse_util.flatten_dict(g_per_layer)
    binary = L.binary_layer_paths(shared, x)
    assert {"/".join(k[:-2]) for k in per} == binary
    for leaf in ("w0", "w1"):
        total = sum(np.asarray(g, np.float64) for k, g in per.items() if k[-1] == leaf)
        np.testing.assert_allclose(np.asarray(g_est["weight_estimator"][leaf]), total, rtol=1e-3,
                                   atol=1e-3 * np.abs(total).max())
        assert all(float(np.abs(np.asarray(g)).max()) > 0 for k, g in per.items() if k[-1] == leaf)

    trainable = {"params": v["params"], "estimator": v["estimator"]}
    labels = optim.partition_labels(trainable, binary)
    flat_labels = traverse_util.flatten_dict(labels["params"])
    assert {"/".join(k[:-1]) for k, lab in flat_labels.items() if lab == "binary_kernel"} == binary
    assert labels["params"]["stage2_0"]["fuse_layers_0_1_0"]["kernel"] == "real_kernel"
    assert labels["params"]["final_layer"]["kernel"] == "real_kernel"
    assert labels["params"]["stage2_0"]["nonlinear_0"]["slope"] == "other"
    tx, _ = optim.make(base_config(), trainable, binary, 10, 5.0)
    updates, _ = run_compiled(tx.update, {"params": g_params, "estimator": g_est}, tx.init(trainable), trainable)
    moved = {}
    for lab, u in zip(jax.tree.leaves(labels), jax.tree.leaves(updates), strict=True):
        moved[lab] = moved.get(lab, False) or bool(jnp.any(u != 0))
    assert moved == {"binary_kernel": True, "real_kernel": True, "other": True, "estimator": True}
